"""The interactive notebook's logic: watch diffusion forward and backward, steer it, edit the mask.

    from mmldm.inference import LatentDiffusion
    from mmldm.viz.widgets import Explorer, build_ui
    ldm = LatentDiffusion.from_checkpoint("runs/phantom_laptop/ldm/last.pt")
    explorer = Explorer(ldm, "data/processed/phantom_laptop.h5")
    x_t, x0_hat = explorer.forward_noising(t=500)        # the real slice noised to step t, decoded
    traj = explorer.regenerate(scale_mask=2, scale_edge=2, steps=50, mode="both")
    x_t, x0_hat, t = explorer.reverse_frame(10)          # step 10 of the stored reverse trajectory
    explorer.edit("LV", +2)                               # grow the LV cavity by 2 pixels
    build_ui(explorer)                                    # the ipywidgets layout (notebook 06)

:class:`Explorer` holds the model and one validation slice at a time; its methods take plain
values and return numpy images, so the tests call them without a browser. :func:`build_ui`
wires ipywidgets to those methods and does nothing else.

**What is cached, and why slider moves are cheap.** Selecting a slice encodes it once with the
VQ-VAE (the latent z0, kept per slice) and draws one fixed noise eps for it, so the forward
slider always noises with the same eps. ``forward_noising(t)`` costs one guided UNet pass and two
decodes the first time a (t, condition, guidance) combination is asked for, and a dictionary
lookup afterwards. ``regenerate`` (a button in the UI, never a slider) runs the sampler once,
keeps the latents of every step through the sampler's callback and decodes them all in one
batch, so the step slider only picks a stored frame.

**Editing the mask.** :func:`edit_mask` grows or shrinks one structure by a few pixels with a
disk-shaped morphological dilation or erosion, under rules that keep the label map anatomically
ordered (the LV blood pool inside the myocardium, the RV never eating the LV's wall):

    LV (endocardium)   grow: take myocardium only, never its outermost pixel ring (the wall stays
                       >= 1 px where it was);  shrink: the freed pixels become myocardium
    myocardium         grow: the epicardium moves out into background only (never into RV);
    (epicardium)       shrink: freed pixels become background, keeping >= 1 px of wall around the LV
    RV                 grow: take background only;  shrink: freed pixels become background

**Recomputing the edge channel after an edit** (:func:`edit_edges`). Edges are Canny of the image
(``mmldm.data.edges``), and an edited mask has no image yet. So the slice's image is repainted
where the labels changed: each changed pixel gets the mean intensity of its *new* structure in a
small window around it (that structure's mean over the slice where none is near), and Canny runs
again on the repainted image with the store's own parameters. The new edges replace the stored
ones only in a band around the changed pixels (as wide as the Gaussian blur reaches, plus 2
px); elsewhere the edge map is the stored one, bit for bit. In ``mask_only`` mode the edges are
dropped anyway; in the other modes this gives edges that follow the edited anatomy.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from mmldm.data.condition import build_condition
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.data.edges import canny_edges, to_uint8
from mmldm.data.schema import EDGE_CHANNEL, LABELS, MASK_CHANNELS, NUM_CLASSES
from mmldm.data.store import open_store, read_config
from mmldm.errors import DataError, MMLDMError
from mmldm.inference import LatentDiffusion
from mmldm.viz.plots import condition_rgb

STRUCTURES = {"LV": 1, "myocardium": 2, "RV": 3}
CONDITION_MODES = {"mask + edges": "both", "mask only": "mask_only", "edges only": "edges_only"}
CANNY_KEYS = ("canny_sigma", "canny_kernel", "canny_low", "canny_high", "canny_blur")
FORWARD_CACHE = 256  # (t, condition, guidance) entries kept per slice, least recently used dropped


# ---------------------------------------------------------------------------------------------
# Mask editing and the edge channel
# ---------------------------------------------------------------------------------------------


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), _disk(radius)).astype(bool)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), _disk(radius)).astype(bool)


def structure_id(structure: str | int) -> int:
    """``"LV"``, ``"myocardium"``, ``"RV"`` (or 1, 2, 3) -> the canonical label."""
    if isinstance(structure, str) and structure in STRUCTURES:
        return STRUCTURES[structure]
    if not isinstance(structure, str) and int(structure) in STRUCTURES.values():
        return int(structure)
    raise ValueError(f"structure must be one of {list(STRUCTURES)} (or 1, 2, 3), got {structure!r}")


def edit_mask(label: np.ndarray, structure: str | int, pixels: int) -> np.ndarray:
    """The label map with one structure grown (``pixels`` > 0) or shrunk (< 0) by ``|pixels|``.

    ``label`` is (H, W) with 0 BG, 1 LV, 2 myocardium, 3 RV; returns a new uint8 map (the input
    is untouched). The rules are in the module docstring. A structure absent from the slice is a
    ValueError; ``pixels = 0`` returns a copy.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"edit_mask expects one (H, W) label map, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}, got {label.min()}..{label.max()}")
    k = structure_id(structure)
    out = label.astype(np.uint8).copy()
    if pixels == 0:
        return out
    if not (out == k).any():
        raise ValueError(f"this slice has no {LABELS[k]} to {'grow' if pixels > 0 else 'shrink'}")
    r = abs(int(pixels))
    lv, bg = out == 1, out == 0
    heart = (out == 1) | (out == 2)  # everything inside the epicardium
    if k == 1:  # move the endocardium; the epicardium stays
        lv_new = lv | (_dilate(lv, r) & _erode(heart, 1)) if pixels > 0 else _erode(lv, r)
        out[heart] = 2
        out[lv_new] = 1
    elif k == 2:  # move the epicardium; the endocardium stays
        if pixels > 0:
            heart_new = heart | (_dilate(heart, r) & bg)
        else:
            heart_new = (_erode(heart, r) | _dilate(lv, 1)) & heart
            out[heart & ~heart_new] = 0
        out[heart_new & ~lv] = 2
    else:  # RV
        if pixels > 0:
            out[_dilate(out == 3, r) & bg] = 3
        else:
            rv = out == 3
            out[rv & ~_erode(rv, r)] = 0
    return out


def repaint(image: np.ndarray, old: np.ndarray, new: np.ndarray, window: int = 9) -> np.ndarray:
    """``image`` with each pixel whose label changed from ``old`` to ``new`` set to the mean
    intensity of its new structure around it (``window`` x ``window``; the structure's mean over
    the slice where it has no pixel that near)."""
    image = np.asarray(image, np.float32)
    out = image.copy()
    changed = old != new
    for k in np.unique(new[changed]):
        where = changed & (new == k)
        source = (old == k) & ~changed  # pixels that were, and are, structure k
        if not source.any():
            continue  # no intensity to copy (cannot happen for edit_mask's edits)
        weight = cv2.blur(source.astype(np.float32), (window, window))
        total = cv2.blur(image * source, (window, window))
        local = np.divide(total, weight, out=np.zeros_like(total), where=weight > 1e-6)
        fill = np.where(weight > 1e-6, local, image[source].mean())
        out[where] = fill[where]
    return out


def edit_edges(image: np.ndarray, old: np.ndarray, new: np.ndarray, edges: np.ndarray, canny: dict) -> np.ndarray:
    """The edge map for the edited label map ``new``: Canny of the repainted image near the
    changed pixels, the stored ``edges`` elsewhere (see the module docstring). ``canny`` holds
    the store's ``canny_*`` parameters."""
    changed = np.asarray(old) != np.asarray(new)
    edges = np.asarray(edges, np.uint8)
    if not changed.any():
        return edges.copy()
    painted = repaint(image, old, new)
    fresh = canny_edges(
        painted,
        canny["canny_sigma"],
        canny["canny_kernel"],
        canny["canny_low"],
        canny["canny_high"],
        canny["canny_blur"],
    )
    band = _dilate(changed, int(canny["canny_kernel"]) // 2 + 2)
    return np.where(band, fresh, edges).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Pictures for the widgets
# ---------------------------------------------------------------------------------------------


def to_png(image: np.ndarray, scale: int = 1) -> bytes:
    """A grey (H, W) image in [-1, 1] or an RGB (H, W, 3) one in [0, 1] as PNG bytes, each pixel
    repeated ``scale`` times along both axes (crisp at display size: browsers smooth upscaling)."""
    image = np.asarray(image)
    u8 = to_uint8(image) if image.ndim == 2 else np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    if scale > 1:
        u8 = np.repeat(np.repeat(u8, scale, axis=0), scale, axis=1)
    if u8.ndim == 3:
        u8 = cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", u8)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------
# The explorer: model, one slice, caches
# ---------------------------------------------------------------------------------------------


@dataclass
class Frames:
    """A reverse run decoded for the step slider (from :meth:`LatentDiffusion.trajectory`): frame
    k < N is step k (its input x_t and x0_hat), frame N the sample."""

    timesteps: list[int]  # the timestep each of the N steps starts from
    x_t: np.ndarray  # (N + 1, H, W) decoded x_t entering step k; the last is the final sample
    x0: np.ndarray  # (N + 1, H, W) decoded x0_hat of step k; the last is the final sample
    settings: dict  # slice, mode, scales, steps, seed, condition version
    seconds: float  # sampling + decoding time

    def __len__(self) -> int:
        return len(self.x_t)

    def t(self, k: int) -> int:
        """The timestep of frame k (-1 for the final, clean sample)."""
        return self.timesteps[k] if k < len(self.timesteps) else -1


class Explorer:
    """A trained LDM and one validation slice, with the callbacks notebook 06's widgets call.

    ``ldm`` is the loaded model (:class:`~mmldm.inference.LatentDiffusion`); ``store`` the preprocessed HDF5
    file whose ``split`` slices are offered. ``sampler``/``guidance`` replace the checkpoint's
    (e.g. the profile's, as notebook 04 does); the reverse process always runs DDIM with eta 0
    and the sampler's spacing and clipping.
    """

    def __init__(
        self,
        ldm: LatentDiffusion,
        store: str | Path,
        split: str = "val",
        device: str | torch.device = "cpu",
        seed: int = 0,
        sampler=None,
        guidance=None,
    ):
        self.ldm = ldm
        self.cfg = cfg = ldm.config
        self.vqvae = ldm.vqvae
        self.sampler_cfg = sampler if sampler is not None else cfg.sampler
        self.guidance = guidance if guidance is not None else cfg.guidance
        self.device, self.seed = torch.device(device), seed
        self.store = Path(store)
        self.slices = CardiacSliceDataset(self.store, split=split)
        with open_store(self.store) as f:
            size = f["image"].shape[1:]
            stored = read_config(f) or {}
        factor = self.vqvae.config.downsample_factor
        if size[0] % factor or size[1] % factor:
            raise DataError(
                self.store,
                f"slices are {size[0]}x{size[1]}, not a multiple of the VQ-VAE's downsampling factor {factor}",
            )
        if tuple(size) != (cfg.data.size, cfg.data.size):
            raise DataError(
                self.store,
                f"slices are {size[0]}x{size[1]} but the model was trained on "
                f"{cfg.data.size}x{cfg.data.size} ({cfg.profile} profile)",
            )
        self.canny = {k: stored.get(k, getattr(cfg.data, k)) for k in CANNY_KEYS}
        self.schedule = ldm.schedule
        self.num_timesteps = len(self.schedule)
        self._x0_sampler = ldm.make_sampler(self.sampler_cfg)
        self._latents: dict[int, torch.Tensor] = {}
        self.trajectory: Frames | None = None
        self.select(0)

    # -- the slice ------------------------------------------------------------------------------

    def choices(self) -> list[tuple[str, int]]:
        """(label, position) for every slice of the split, e.g. ("patient091 SA ED z3", 0)."""
        m = self.slices.meta
        return [
            (f"{m['subject'][i]} {m['view'][i]} {m['phase'][i]} z{int(m['slice_index'][i])}", i)
            for i in range(len(self.slices))
        ]

    @torch.no_grad()
    def typical_slice(self, min_pixels: int = 20) -> int:
        """The first slice showing LV, myocardium and RV (each at least ``min_pixels`` pixels): a
        mid-ventricular slice, where every mask edit has something to act on. 0 when none does."""
        for i in range(len(self.slices)):
            counts = np.bincount(np.asarray(self.slices[i]["label"]).ravel(), minlength=NUM_CLASSES)
            if (counts[1:] >= min_pixels).all():
                return i
        return 0

    def select(self, i: int) -> None:
        """Make slice ``i`` of the split the current one: its image, condition, latent and noise."""
        if not 0 <= i < len(self.slices):
            raise IndexError(f"slice {i} is not in the {self.slices.split} split (0..{len(self.slices) - 1})")
        item = self.slices[i]
        self.index = i
        self.image = item["image"][0].numpy()
        self.label0 = item["label"].numpy().astype(np.uint8)  # as stored
        self.edge0 = item["edge"][0].numpy().astype(np.uint8)
        self.view = item["view"].reshape(1)
        if i not in self._latents:  # the VQ-VAE encoding of the slice, once per slice
            self._latents[i] = self.ldm.encode(item["image"][None])
        self.z0 = self._latents[i]
        gen = torch.Generator().manual_seed(self.seed + 7919 * i)  # a fixed eps per slice
        self.eps = torch.randn(self.z0.shape, generator=gen).to(self.device)
        self.set_mask(self.label0)

    def set_mask(self, label: np.ndarray) -> None:
        """Use ``label`` (H, W) as the current mask; the edge channel follows (see edit_edges)."""
        label = np.asarray(label, np.uint8)
        if label.shape != self.label0.shape:
            raise ValueError(f"mask has shape {label.shape}, the slice is {self.label0.shape}")
        self.label = label
        self.edge = edit_edges(self.image, self.label0, label, self.edge0, self.canny)
        self.cond = build_condition(self.label, self.edge)
        self._forward: OrderedDict = OrderedDict()  # keyed by t and guidance, for this condition only

    def edit(self, structure: str | int, pixels: int) -> np.ndarray:
        """Grow (> 0) or shrink (< 0) one structure of the current mask; returns the new mask."""
        self.set_mask(edit_mask(self.label, structure, pixels))
        return self.label

    def reset_mask(self) -> None:
        self.set_mask(self.label0)

    @property
    def edited(self) -> bool:
        return bool((self.label != self.label0).any())

    def condition_rgb(self, mode: str = "both") -> np.ndarray:
        """The current condition as a picture (label colours, edges white), showing only what
        guidance ``mode`` uses: ``mask_only`` leaves the edges out, ``edges_only`` the mask."""
        cond = self.cond.clone()
        if mode in ("mask_only", "none"):
            cond[EDGE_CHANNEL] = 0
        if mode in ("edges_only", "none"):
            cond[MASK_CHANNELS] = 0
        return condition_rgb(cond)

    # -- decoding -------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch: int = 32) -> np.ndarray:
        """Normalised latents (B, C, h, w) -> images (B, H, W) in [-1, 1], float32 numpy."""
        return self.ldm.decode(z, batch)[:, 0].float().numpy()

    def _guidance(self, mode, scale_mask, scale_edge):
        """The explorer's guidance with the given fields replaced (a GuidanceConfig)."""
        g = self.guidance
        return dataclasses.replace(
            g,
            mode=g.mode if mode is None else mode,
            scale_mask=float(g.scale_mask if scale_mask is None else scale_mask),
            scale_edge=float(g.scale_edge if scale_edge is None else scale_edge),
        )

    # -- forward process ------------------------------------------------------------------------

    @torch.no_grad()
    def forward_noising(
        self, t: int, mode: str | None = None, scale_mask: float | None = None, scale_edge: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(x_t, x0_hat) decoded, each (H, W) in [-1, 1], for the current slice at step ``t``.

        x_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps with the slice's fixed eps (Ho et al. 2020, eq. 4);
        x0_hat is the model's estimate of z0 from x_t, guided by the current condition with
        ``mode`` and the scales (default: the explorer's guidance), clipped like the sampler's.
        """
        t = int(t)
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"t must be in 0..{self.num_timesteps - 1}, got {t}")
        g = self._guidance(mode, scale_mask, scale_edge)
        key = (t, g.mode, g.scale_mask, g.scale_edge)
        if key in self._forward:
            self._forward.move_to_end(key)
            return self._forward[key]
        x_t = self.schedule.add_noise(self.z0, self.eps, t)
        model_fn = self.ldm.model_fn(self.cond[None], self.view, g)
        out = model_fn(x_t, torch.full((1,), t, dtype=torch.long, device=self.device))
        x0_hat, _ = self._x0_sampler.predict_x0_eps(out, x_t, t)
        x_t_img, x0_img = self.decode(torch.cat([x_t, x0_hat]))
        self._forward[key] = (x_t_img, x0_img)
        if len(self._forward) > FORWARD_CACHE:
            self._forward.popitem(last=False)
        return x_t_img, x0_img

    # -- reverse process ------------------------------------------------------------------------

    def regenerate(
        self,
        scale_mask: float | None = None,
        scale_edge: float | None = None,
        steps: int | None = None,
        mode: str | None = None,
        mask: np.ndarray | None = None,
        seed: int | None = None,
    ) -> Frames:
        """Sample the current slice's condition (or ``mask``, which becomes the current mask) with
        DDIM in ``steps`` steps, store every step's x_t and x0_hat decoded; returns the
        :class:`Frames` (also kept as ``self.trajectory``)."""
        if mask is not None:
            self.set_mask(mask)
        g = self._guidance(mode, scale_mask, scale_edge)
        steps = int(self.sampler_cfg.num_inference_steps if steps is None else steps)
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_timesteps}, got {steps}")
        seed = self.seed if seed is None else int(seed)
        sampler_cfg = dataclasses.replace(self.sampler_cfg, name="ddim", eta=0.0, num_inference_steps=steps)
        t0 = time.perf_counter()
        run = self.ldm.trajectory(self.cond[None], self.view, sampler_cfg, g, seed=seed)  # every step kept
        final = run.images[:, 0].numpy()
        decoded = self.decode(torch.cat(run.x_t + run.x0_hat))
        n = len(run.timesteps)
        x_t = np.concatenate([decoded[:n], final])
        x0 = np.concatenate([decoded[n:], final])
        self.trajectory = Frames(
            run.timesteps,
            x_t,
            x0,
            {
                "slice": self.index,
                "mode": g.mode,
                "scale_mask": g.scale_mask,
                "scale_edge": g.scale_edge,
                "steps": steps,
                "seed": seed,
                "edited": self.edited,
            },
            time.perf_counter() - t0,
        )
        return self.trajectory

    def reverse_frame(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(x_t, x0_hat, t) of frame ``k`` of the stored trajectory (t = -1: the final sample)."""
        traj = self.trajectory
        if traj is None:
            raise MMLDMError("no reverse trajectory yet: call regenerate() first")
        if not 0 <= k < len(traj):
            raise IndexError(f"frame {k} is not in the trajectory (0..{len(traj) - 1})")
        return traj.x_t[k], traj.x0[k], traj.t(k)


# ---------------------------------------------------------------------------------------------
# A static picture of one trajectory (what the headless run saves)
# ---------------------------------------------------------------------------------------------


def trajectory_figure(explorer: Explorer, traj: Frames | None = None, columns: int = 8, size: float = 1.5):
    """Columns from noise to sample: the forward-noised real slice at each column's t, the
    reverse x_t, and the model's x0_hat; the first column shows the real slice and the condition."""
    import matplotlib.pyplot as plt

    traj = traj or explorer.trajectory
    if traj is None:
        raise MMLDMError("no reverse trajectory yet: call regenerate() first")
    frames = sorted(set(np.linspace(0, len(traj) - 1, min(columns, len(traj))).round().astype(int).tolist()))
    s = traj.settings
    rows = ("forward:\nreal slice noised", "reverse:\nx_t", "reverse: model's\nx0 estimate")
    fig, axes = plt.subplots(3, len(frames) + 1, figsize=((len(frames) + 1) * size, 3 * size * 1.15), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
        ax.spines[:].set_visible(False)
    axes[0, 0].imshow(explorer.image, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    axes[0, 0].set_title("real slice", fontsize=8)
    axes[1, 0].imshow(explorer.condition_rgb(), interpolation="nearest")
    axes[1, 0].set_title("condition" + (" (edited)" if s["edited"] else ""), fontsize=8)
    for c, k in enumerate(frames, start=1):
        x_t, x0, t = traj.x_t[k], traj.x0[k], traj.t(k)
        fwd = explorer.forward_noising(t, s["mode"], s["scale_mask"], s["scale_edge"])[0] if t >= 0 else explorer.image
        for r, img in enumerate((fwd, x_t, x0)):
            axes[r, c].imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        axes[0, c].set_title(f"t = {t}" if t >= 0 else "t = 0 (clean)", fontsize=8)
    for r, name in enumerate(rows):
        axes[r, 1].set_ylabel(name, fontsize=8)
    fig.suptitle(
        f"DDIM {s['steps']} steps, {s['mode']}, scales mask {s['scale_mask']:g} / edge {s['scale_edge']:g}, "
        f"seed {s['seed']}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# The widgets
# ---------------------------------------------------------------------------------------------


class ExplorerUI:
    """ipywidgets around an :class:`Explorer`. ``root`` is the layout; the ``on_*`` methods are
    the callbacks (observers and button handlers), callable directly; ``latency`` holds the
    seconds the last call of each took."""

    def __init__(self, explorer: Explorer, display_px: int = 192):
        import ipywidgets as w

        self.ex = ex = explorer
        size = ex.image.shape[0]
        self.scale = max(1, round(display_px / size))
        px = f"{size * self.scale}px"
        self.latency: dict[str, float] = {}
        g, T = ex.guidance, ex.num_timesteps

        def image(css: str):
            return w.Image(format="png", layout=w.Layout(width=px, height=px)).add_class(css)

        def panel(img, caption):
            return w.VBox([caption, img], layout=w.Layout(margin="0 6px 0 0"))

        # Slice picker
        self.slice = w.Dropdown(
            options=ex.choices(), value=ex.index, description="slice", layout=w.Layout(width="420px")
        ).add_class("mmldm-slice")
        # Forward process
        self.t = w.IntSlider(
            value=T // 2,
            min=0,
            max=T - 1,
            step=1,
            description="noise step t",
            continuous_update=True,
            layout=w.Layout(width="560px"),
            style={"description_width": "110px"},
        ).add_class("mmldm-t")
        self.real_img, self.fwd_cond_img = image("mmldm-real"), image("mmldm-fwd-cond")
        self.fwd_xt, self.fwd_x0 = image("mmldm-fwd-xt"), image("mmldm-fwd-x0")
        self.fwd_xt_caption, self.fwd_x0_caption = w.HTML(), w.HTML()
        # Reverse process: settings, mask editing, the step slider
        self.mode = w.Dropdown(
            options=list(CONDITION_MODES.items()),
            value=g.mode if g.mode in CONDITION_MODES.values() else "both",
            description="conditions",
        ).add_class("mmldm-mode")
        slider = dict(min=0.0, max=6.0, step=0.25, continuous_update=False, readout_format=".2f")
        self.scale_mask = w.FloatSlider(value=g.scale_mask, description="mask scale", **slider).add_class("mmldm-smask")
        self.scale_edge = w.FloatSlider(value=g.scale_edge, description="edge scale", **slider).add_class("mmldm-sedge")
        max_steps = min(T, 200)
        self.steps = w.IntSlider(
            value=min(ex.sampler_cfg.num_inference_steps, max_steps),
            min=1,
            max=max_steps,
            description="DDIM steps",
            continuous_update=False,
        ).add_class("mmldm-steps")
        self.seed = w.BoundedIntText(
            value=ex.seed, min=0, max=2**31 - 1, description="seed", layout=w.Layout(width="180px")
        )
        self.regen = w.Button(description="Regenerate", button_style="primary", icon="refresh").add_class("mmldm-regen")
        self.structure = w.ToggleButtons(
            options=list(STRUCTURES), value="LV", style={"button_width": "110px"}, layout=w.Layout(width="auto")
        ).add_class("mmldm-structure")
        self.pixels = w.IntSlider(
            value=2,
            min=-5,
            max=5,
            description="pixels (+ grow)",
            continuous_update=False,
            style={"description_width": "100px"},
            layout=w.Layout(width="300px"),
        )
        self.apply = w.Button(description="Apply edit", icon="pencil").add_class("mmldm-apply")
        self.reset = w.Button(description="Reset mask", icon="undo").add_class("mmldm-reset")
        self.k = w.IntSlider(
            value=0,
            min=0,
            max=1,
            description="sampler step",
            continuous_update=True,
            layout=w.Layout(width="560px"),
            style={"description_width": "110px"},
        ).add_class("mmldm-k")
        self.cond_img = image("mmldm-cond")
        self.rev_xt, self.rev_x0, self.final_img = image("mmldm-rev-xt"), image("mmldm-rev-x0"), image("mmldm-final")
        self.rev_xt_caption, self.rev_x0_caption = w.HTML(), w.HTML()
        self.cond_caption, self.final_caption = w.HTML(), w.HTML()
        self.status = w.HTML().add_class("mmldm-status")

        self.root = w.VBox(
            [
                self.slice,
                w.HTML(
                    "<b>Forward process</b>: the real slice's latent, noised to step t and decoded; "
                    "beside it the model's estimate of the clean slice from that noisy latent"
                ),
                self.t,
                w.HBox(
                    [
                        panel(self.real_img, w.HTML("real slice")),
                        panel(self.fwd_cond_img, w.HTML("condition")),
                        panel(self.fwd_xt, self.fwd_xt_caption),
                        panel(self.fwd_x0, self.fwd_x0_caption),
                    ]
                ),
                w.HTML(
                    "<b>Reverse process</b>: DDIM from noise; set the conditions, scales and steps, "
                    "then press Regenerate"
                ),
                w.HBox([self.mode, self.seed]),
                w.HBox([self.scale_mask, self.scale_edge, self.steps]),
                w.HBox([w.Label("edit the mask", layout=w.Layout(width="100px")), self.structure, self.pixels]),
                w.HBox([self.apply, self.reset, self.regen]),
                self.k,
                w.HBox(
                    [
                        panel(self.cond_img, self.cond_caption),
                        panel(self.rev_xt, self.rev_xt_caption),
                        panel(self.rev_x0, self.rev_x0_caption),
                        panel(self.final_img, self.final_caption),
                    ]
                ),
                self.status,
            ]
        ).add_class("mmldm-explorer")

        self.slice.observe(self.on_slice, names="value")
        self.t.observe(self.on_t, names="value")
        for control in (self.mode, self.scale_mask, self.scale_edge):
            control.observe(self.on_guidance, names="value")
        for control in (self.steps, self.seed):
            control.observe(self.on_settings, names="value")
        self.k.observe(self.on_k, names="value")
        self.apply.on_click(self.on_apply)
        self.reset.on_click(self.on_reset)
        self.regen.on_click(self.on_regenerate)

        self._show_slice()
        if ex.trajectory is not None and ex.trajectory.settings["slice"] == ex.index:
            self._show_trajectory()
        else:
            self.on_regenerate()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.root)

    # -- helpers --------------------------------------------------------------------------------

    def _png(self, image: np.ndarray) -> bytes:
        return to_png(image, self.scale)

    def _timed(self, name: str, t0: float, note: str = "") -> None:
        self.latency[name] = dt = time.perf_counter() - t0
        self.status.value = f"<small>{name}: {dt * 1000:.0f} ms{note}</small>"

    def _error(self, e: Exception) -> None:
        self.status.value = f"<span style='color:#b00'>{e}</span>"

    def _guidance(self) -> tuple[str, float, float]:
        return self.mode.value, self.scale_mask.value, self.scale_edge.value

    def _show_slice(self) -> None:
        self.real_img.value = self._png(self.ex.image)
        self._show_condition()
        self._show_forward()

    def _show_condition(self) -> None:
        png = self._png(self.ex.condition_rgb(self.mode.value))
        self.fwd_cond_img.value = self.cond_img.value = png
        self.cond_caption.value = "condition" + (" (<b>edited</b>)" if self.ex.edited else "")

    def _show_forward(self) -> None:
        t = self.t.value
        x_t, x0 = self.ex.forward_noising(t, *self._guidance())
        self.fwd_xt.value, self.fwd_x0.value = self._png(x_t), self._png(x0)
        a = self.ex.schedule.alpha_bar(t)
        self.fwd_xt_caption.value = f"x<sub>t</sub>, t = {t} (signal {a**0.5:.2f})"
        self.fwd_x0_caption.value = f"model's x&#770;<sub>0</sub> at t = {t}"

    def _stale(self, why: str) -> None:
        self.final_caption.value = f"sample <span style='color:#b00'>({why}: press Regenerate)</span>"

    def _show_trajectory(self) -> None:
        traj = self.ex.trajectory
        with self.k.hold_trait_notifications():
            self.k.max = len(traj) - 1
            self.k.value = len(traj) - 1
        self.final_img.value = self._png(traj.x_t[-1])
        s = traj.settings
        self.final_caption.value = f"sample: {s['mode']}, {s['steps']} steps"
        self._show_frame()

    def _show_frame(self) -> None:
        x_t, x0, t = self.ex.reverse_frame(self.k.value)
        self.rev_xt.value, self.rev_x0.value = self._png(x_t), self._png(x0)
        self.rev_xt_caption.value = f"x<sub>t</sub>, t = {t}" if t >= 0 else "x<sub>0</sub> (done)"
        self.rev_x0_caption.value = f"model's x&#770;<sub>0</sub> at t = {t}" if t >= 0 else "sample"

    # -- callbacks ------------------------------------------------------------------------------

    def on_slice(self, change=None) -> None:
        t0 = time.perf_counter()
        self.ex.select(self.slice.value)
        self._show_slice()
        self._stale("new slice")
        self._timed("slice", t0)

    def on_t(self, change=None) -> None:
        t0 = time.perf_counter()
        self._show_forward()
        self._timed("forward t", t0)

    def on_guidance(self, change=None) -> None:
        t0 = time.perf_counter()
        self._show_condition()
        self._show_forward()
        self._stale("settings changed")
        self._timed("guidance", t0)

    def on_settings(self, change=None) -> None:
        self._stale("settings changed")

    def on_k(self, change=None) -> None:
        t0 = time.perf_counter()
        self._show_frame()
        self._timed("sampler step", t0)

    def on_apply(self, button=None) -> None:
        t0 = time.perf_counter()
        try:
            self.ex.edit(self.structure.value, self.pixels.value)
        except ValueError as e:
            return self._error(e)
        self._show_condition()
        self._show_forward()
        self._stale("mask edited")
        self._timed("edit mask", t0)

    def on_reset(self, button=None) -> None:
        t0 = time.perf_counter()
        self.ex.reset_mask()
        self._show_condition()
        self._show_forward()
        self._stale("mask reset")
        self._timed("reset mask", t0)

    def on_regenerate(self, button=None) -> None:
        t0 = time.perf_counter()
        self.regen.disabled = True
        try:
            mode, sm, se = self._guidance()
            self.ex.regenerate(sm, se, self.steps.value, mode, seed=self.seed.value)
        except (MMLDMError, ValueError) as e:
            return self._error(e)
        finally:
            self.regen.disabled = False
        self._show_trajectory()
        self._timed("regenerate", t0)


def build_ui(explorer: Explorer, display_px: int = 192) -> ExplorerUI:
    """The notebook's widgets around ``explorer`` (displaying the result shows ``.root``)."""
    return ExplorerUI(explorer, display_px)
