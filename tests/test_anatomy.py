"""Dice per class by hand, the empty-empty rule, and anatomy_dice's plumbing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mmldm.evaluate.anatomy import anatomy_dice, dice_per_class


def test_dice_by_hand():
    # 1 x 4 x 4 maps. LV: pred 4 px, target 2 px, overlap 2 -> 2*2/(4+2) = 2/3.
    # MYO: pred 1 px, target 1 px elsewhere -> 0. RV: identical 3 px -> 1.
    pred = torch.tensor([[1, 1, 0, 3], [1, 1, 0, 3], [0, 0, 2, 3], [0, 0, 0, 0]]).view(1, 4, 4)
    target = torch.tensor([[1, 0, 0, 3], [1, 0, 0, 3], [0, 0, 0, 3], [0, 2, 0, 0]]).view(1, 4, 4)
    assert dice_per_class(pred, target)[0].tolist() == pytest.approx([2 / 3, 0.0, 1.0])


def test_class_absent_from_both_is_nan_and_from_one_is_zero():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1  # LV only
    pred = target.clone()
    pred[1, 0, 0] = 3  # image 1: an RV pixel the mask does not have
    dice = dice_per_class(pred, target)
    assert dice[0, 0] == 1.0 and math.isnan(dice[0, 1]) and math.isnan(dice[0, 2])  # MYO, RV in neither
    assert dice[1, 2] == 0.0  # RV in the prediction only


class Oracle(nn.Module):
    """A fake segmenter that 'sees' the label hidden in the image: class = round((v + 1) * 1.5)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def predict(self, x):
        return ((x[:, 0] + 1) * 1.5).round().long()


def test_anatomy_dice_segments_and_scores_each_image():
    labels = torch.zeros(3, 16, 16, dtype=torch.long)
    labels[:, 4:10, 4:10] = 2
    labels[:, 6:8, 6:8] = 1
    labels[1, 12:15, 2:14] = 3
    images = labels[:, None].float() / 1.5 - 1  # the Oracle's inverse
    out = anatomy_dice(Oracle(), images, labels, batch_size=2)
    assert out["dice_LV"].tolist() == [1.0, 1.0, 1.0] and out["dice_MYO"].tolist() == [1.0, 1.0, 1.0]
    assert np.isnan(out["dice_RV"][0]) and out["dice_RV"][1] == 1.0
    assert out["dice_fg"].tolist() == [1.0, 1.0, 1.0]  # mean over the classes present
    # against a mask that lost its LV: LV 0, and the one-hot form of a mask is accepted too
    wrong = labels.clone()
    wrong[wrong == 1] = 2
    onehot = torch.nn.functional.one_hot(wrong, 4).permute(0, 3, 1, 2)
    out = anatomy_dice(Oracle(), images, onehot)
    assert out["dice_LV"].tolist() == [0.0, 0.0, 0.0]
    assert out["dice_MYO"][0] == pytest.approx(2 * 32 / (32 + 36))  # pred MYO 32 px, mask MYO 36 px
