"""Edge maps: Canny after Gaussian noise reduction, the second condition of the diffusion model.

The label map says *where* the ventricles are; the edge map adds the fine structure the labels do
not carry (papillary muscles, trabeculae, the outline of the chest). Edges are computed on the
final image (after normalisation, cropping and resizing) so that they line up pixel for pixel
with what the model sees:

    u8    = round((image + 1) * 127.5)                  # [-1, 1] -> uint8 [0, 255]
    u8    = GaussianBlur(u8, kernel x kernel, sigma)     # noise reduction (optional)
    edges = Canny(u8, low, high) / 255                   # uint8 {0, 1}

Canny itself (OpenCV) takes Sobel gradients, thins them by non-maximum suppression and keeps
pixels whose gradient is above ``high``, plus those above ``low`` that connect to them
(hysteresis). Thresholds are in uint8 gradient units (Sobel 3x3, L1 norm). MRI noise gives many
spurious short edges; the blur before Canny removes most of them, which is the reason it is on by
default. ``blur=False`` keeps it off, for the notebook's with/without comparison.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A normalised image in [-1, 1] as uint8 in [0, 255] (values outside are clipped)."""
    return np.clip(np.rint((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def canny_edges(
    image: np.ndarray,
    sigma: float = 1.4,
    kernel: int = 5,
    low: float = 50.0,
    high: float = 100.0,
    blur: bool = True,
) -> np.ndarray:
    """Canny edges of a normalised 2-D image in [-1, 1]; returns uint8 {0, 1} of the same shape.

    ``kernel`` is the Gaussian kernel width (odd, >= 1) and ``sigma`` its standard deviation in
    pixels; ``blur=False`` skips the Gaussian step.
    """
    if image.ndim != 2:
        raise ValueError(f"canny_edges expects one 2-D image, got shape {image.shape}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the Gaussian kernel must be odd and >= 1, got {kernel}")
    if not 0 <= low <= high:
        raise ValueError(f"Canny thresholds must satisfy 0 <= low <= high, got low={low} high={high}")
    u8 = to_uint8(image)
    if blur:
        u8 = cv2.GaussianBlur(u8, (kernel, kernel), sigmaX=sigma, sigmaY=sigma)
    return (cv2.Canny(u8, low, high) > 0).astype(np.uint8)
