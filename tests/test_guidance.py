"""Condition dropout and two-condition classifier-free guidance."""

from __future__ import annotations

import pytest
import torch

from mmldm.data.schema import EDGE_CHANNEL, MASK_CHANNELS
from mmldm.diffusion import DDIMSampler, NoiseSchedule, sample
from mmldm.diffusion.guidance import GuidanceConfig, drop_conditions, guidance_terms, guided_model_fn


def make_cond(b=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (b, h, w), generator=g)
    mask = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    edges = (torch.rand(b, 1, h, w, generator=g) > 0.7).float()
    return torch.cat([edges, mask], dim=1)


class RecordingModel:
    """A fake conditional denoiser, non-linear in cond, that records every call it gets."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t, cond=None, view=None):
        self.calls.append({"batch": x_t.shape[0], "cond": cond.clone(), "view": None if view is None else view.clone()})
        edge = cond[:, EDGE_CHANNEL : EDGE_CHANNEL + 1].mean((2, 3), keepdim=True)
        mask = cond[:, MASK_CHANNELS]
        mask_feat = (mask * torch.arange(1.0, 5.0).view(1, 4, 1, 1)).mean((1, 2, 3), keepdim=True)
        out = torch.tanh(x_t * (1 + edge) + mask_feat * (1 + 2 * edge) + t.view(-1, 1, 1, 1) / 1000)
        if view is not None:
            out = out + 0.1 * view.view(-1, 1, 1, 1)
        return out


def zero_edge(cond):
    out = cond.clone()
    out[:, EDGE_CHANNEL] = 0
    return out


def zero_mask(cond):
    out = cond.clone()
    out[:, MASK_CHANNELS] = 0
    return out


# -- training: condition dropout ----------------------------------------------------------------


def test_drop_probabilities_zero_and_one():
    cond = make_cond()
    assert torch.equal(drop_conditions(cond, 0.0, 0.0), cond)
    assert torch.equal(drop_conditions(cond, 1.0, 0.0), zero_edge(cond))
    assert torch.equal(drop_conditions(cond, 0.0, 1.0), zero_mask(cond))
    assert torch.count_nonzero(drop_conditions(cond, 1.0, 1.0)) == 0


def test_drop_is_independent_per_sample_at_the_right_rates():
    b = 20_000
    cond = torch.ones(b, 5, 1, 1)
    original = cond.clone()
    out = drop_conditions(cond, 0.1, 0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cond, original)  # the input is not modified
    edge_dropped = out[:, EDGE_CHANNEL, 0, 0] == 0
    mask_dropped = out[:, MASK_CHANNELS, 0, 0] == 0
    # all four mask channels go together
    assert torch.all(mask_dropped.all(1) | (~mask_dropped).all(1))
    mask_dropped = mask_dropped[:, 0]
    assert edge_dropped.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert mask_dropped.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (edge_dropped & mask_dropped).float().mean().item() == pytest.approx(0.01, abs=0.003)  # independent


def test_drop_is_reproducible_with_a_generator():
    cond = make_cond(b=64)
    a = drop_conditions(cond, 0.5, 0.5, generator=torch.Generator().manual_seed(3))
    b = drop_conditions(cond, 0.5, 0.5, generator=torch.Generator().manual_seed(3))
    c = drop_conditions(cond, 0.5, 0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- sampling: the guided model function --------------------------------------------------------


@pytest.mark.parametrize("mode", ["both", "mask_only", "edges_only", "none"])
def test_scales_of_one_cost_a_single_conditional_pass(mode):
    cond, view = make_cond(), torch.tensor([0.0, 1.0, 0.0])
    model = RecordingModel()
    x, t = torch.randn(3, 2, 4, 4), torch.full((3,), 500)
    out = guided_model_fn(model, cond, view, 1.0, 1.0, mode)(x, t)
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 3
    used = {"both": cond, "mask_only": zero_edge(cond), "edges_only": zero_mask(cond), "none": cond * 0}[mode]
    assert torch.equal(model.calls[0]["cond"], used)
    torch.testing.assert_close(out, RecordingModel()(x, t, cond=used, view=view))


def test_the_condition_is_prepared_once_per_sampling_run():
    """A UNet's condition encoder runs at the first step only; the guided output is unchanged."""
    from mmldm.models.unet import UNet, UNetConfig

    torch.manual_seed(0)
    cfg = UNetConfig(
        latent_channels=2, down_channels=[8, 16], mid_channels=[16, 8], down_sample=[True],
        attn_down=[False], num_heads=2, norm_groups=4, time_emb_dim=16, conditioning="hint_encoder",
        cond_downsample=4, hint_channels=[4, 8, 8], view_embedding=True,
    )  # fmt: skip
    net = UNet(cfg).eval()
    encoder_calls = []
    net.cond_encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    cond, view = make_cond(3, 16, 16), torch.tensor([0, 1, 0])
    fn = guided_model_fn(net, cond, view, 2.0, 3.0, "both")
    with torch.no_grad():
        for t in (900, 500, 100):
            x, tt = torch.randn(3, 2, 4, 4), torch.full((3,), t)
            got = fn(x, tt)
            assert len(encoder_calls) == 1  # at the first step only
            unprepared = guided_model_fn(lambda *a, **k: net(*a, **k), cond, view, 2.0, 3.0, "both")
            torch.testing.assert_close(got, unprepared(x, tt))
            assert len(encoder_calls) == 2  # a model without prepare_condition runs it every time
            del encoder_calls[1:]


@pytest.mark.parametrize("scale_mask,scale_edge", [(2.0, 3.0), (1.0, 4.0), (5.0, 1.0), (2.5, 2.5), (0.0, 1.5)])
def test_both_follows_the_compositional_formula(scale_mask, scale_edge):
    cond, view = make_cond(), torch.tensor([1.0, 0.0, 1.0])
    x, t = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1)), torch.full((3,), 250)
    m = RecordingModel()
    uncond, mask_only, full = m(x, t, cond * 0, view), m(x, t, zero_edge(cond), view), m(x, t, cond, view)
    assert not torch.allclose(uncond, mask_only) and not torch.allclose(mask_only, full)  # the test can fail
    expected = uncond + scale_mask * (mask_only - uncond) + scale_edge * (full - mask_only)

    model = RecordingModel()
    out = guided_model_fn(model, cond, view, scale_mask, scale_edge, "both")(x, t)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # one batched call, holding only the passes with a non-zero weight
    needed = len(guidance_terms("both", scale_mask, scale_edge))
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 3 * needed
    assert torch.equal(model.calls[0]["view"], torch.cat([view] * needed))


def test_single_condition_modes_follow_their_formulas():
    cond = make_cond()
    x, t = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2)), torch.full((3,), 700)
    m = RecordingModel()
    uncond = m(x, t, cond * 0)
    s_mask, s_edge = 3.0, 2.0
    out = guided_model_fn(RecordingModel(), cond, None, s_mask, s_edge, "mask_only")(x, t)
    torch.testing.assert_close(out, uncond + s_mask * (m(x, t, zero_edge(cond)) - uncond), rtol=1e-5, atol=1e-6)
    out = guided_model_fn(RecordingModel(), cond, None, s_mask, s_edge, "edges_only")(x, t)
    torch.testing.assert_close(out, uncond + s_edge * (m(x, t, zero_mask(cond)) - uncond), rtol=1e-5, atol=1e-6)


def test_guidance_terms_are_affine():
    for mode in ("both", "mask_only", "edges_only", "none"):
        for s_mask, s_edge in [(1.0, 1.0), (2.0, 7.5), (0.0, 0.0)]:
            terms = guidance_terms(mode, s_mask, s_edge)
            assert sum(w for *_, w in terms) == pytest.approx(1.0)
            assert all(w != 0 for *_, w in terms)
    assert guidance_terms("both", 2.0, 2.0) == [(False, False, -1.0), (True, True, 2.0)]  # plain joint CFG
    with pytest.raises(ValueError):
        guidance_terms("mask")


def test_guided_sampling_runs_and_is_reproducible():
    cond = make_cond(b=2)
    fn = guided_model_fn(RecordingModel(), cond, None, 2.0, 1.5, "both")
    sampler = DDIMSampler(NoiseSchedule(), 5, prediction_type="v")
    a = sample(fn, sampler, (2, 2, 4, 4), torch.Generator().manual_seed(0))
    b = sample(fn, sampler, (2, 2, 4, 4), torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_batch_mismatch_and_bad_config_are_errors():
    fn = guided_model_fn(RecordingModel(), make_cond(b=3), None, 2.0, 2.0)
    with pytest.raises(ValueError, match="batch"):
        fn(torch.randn(2, 2, 4, 4), torch.full((2,), 10))
    with pytest.raises(ValueError):
        GuidanceConfig(p_drop_edge=1.5)
    assert GuidanceConfig() == GuidanceConfig(0.1, 0.1, 1.0, 1.0, "both")


def test_mask_first_drop_puts_the_masks_own_edges_in_the_given_share():
    b = 4000
    cond = make_cond(b=b, h=2, w=2)
    cond[:, EDGE_CHANNEL] = 1.0  # "real" edges everywhere
    drawn = torch.full((b, 1, 2, 2), 0.5)  # "mask-drawn" edges: a value real edges never take
    out = drop_conditions(cond, 0.5, 0.0, torch.Generator().manual_seed(0), mask_edge=drawn, p_mask_edge=0.3)
    edge = out[:, EDGE_CHANNEL, 0, 0]
    shares = [(edge == v).float().mean().item() for v in (0.0, 0.5, 1.0)]
    assert abs(shares[0] - 0.5) < 0.03 and abs(shares[1] - 0.3) < 0.03 and abs(shares[2] - 0.2) < 0.03
    assert torch.equal(out[:, MASK_CHANNELS], cond[:, MASK_CHANNELS])  # the mask is never touched
    # The same coin flips as without mask-drawn edges: a sample dropped there is dropped here.
    plain = drop_conditions(cond, 0.5, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(plain[:, EDGE_CHANNEL] == 0, out[:, EDGE_CHANNEL] == 0)
    assert torch.equal(drop_conditions(cond, 0.5, 0.0, torch.Generator().manual_seed(0), drawn, 0.0), plain)


def test_mask_first_settings_are_checked():
    cond = make_cond(b=2)
    with pytest.raises(ValueError, match="mask_edge"):
        drop_conditions(cond, 0.5, 0.1, p_mask_edge=0.3)  # no drawn edges given
    with pytest.raises(ValueError, match="p_mask_edge"):
        drop_conditions(cond, 0.5, 0.1, mask_edge=cond[:, :1], p_mask_edge=0.6)
    with pytest.raises(ValueError, match="does not fit"):
        drop_conditions(cond, 0.5, 0.1, mask_edge=cond[:1, :1], p_mask_edge=0.3)
    with pytest.raises(ValueError, match="p_mask_edge"):
        GuidanceConfig(p_drop_edge=0.8, p_mask_edge=0.3)
    assert GuidanceConfig(p_drop_edge=0.5, p_mask_edge=0.5).p_mask_edge == 0.5
