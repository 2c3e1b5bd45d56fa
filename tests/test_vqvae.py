"""The VQ-VAE, its quantiser, discriminator and losses: tiny configs (32x32 and 64x64 images)
except the paper-build test (parameter counts against the seed's, one 256x256 encode)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmldm.config import from_dict
from mmldm.errors import ConfigError
from mmldm.models import VQVAE, VQVAEConfig, param_count, param_table
from mmldm.models.discriminator import (
    PatchDiscriminator,
    hinge_discriminator_loss,
    hinge_generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)
from mmldm.models.frequency_loss import focal_frequency_loss
from mmldm.models.perceptual import PerceptualLoss, VGG16Features
from mmldm.models.quantizer import VectorQuantizer
from mmldm.models.vqvae import (
    build_discriminator,
    build_perceptual_loss,
    vqvae_discriminator_loss,
    vqvae_generator_loss,
)


def tiny_vqvae_config(**over) -> VQVAEConfig:
    """32x32 image -> 8x8 latent (two downsamplings), 32-entry codebook."""
    base = dict(
        down_channels=[8, 16, 16],
        mid_channels=[16, 16],
        down_sample=[True, True],
        attn_down=[False, True],
        num_down_layers=1,
        num_mid_layers=1,
        num_up_layers=1,
        num_heads=2,
        norm_groups=4,
        codebook_size=32,
        disc_channels=[8, 16],
        adversarial_start=10,
    )
    base.update(over)
    return VQVAEConfig(**base)


# ---------------------------------------------------------------------------------------------
# quantiser
# ---------------------------------------------------------------------------------------------


def test_quantizer_picks_nearest_code_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3)
    z = torch.randn(2, 3, 4, 5, requires_grad=True)
    z_q, info = vq(z)
    assert z_q.shape == z.shape and info["indices"].shape == (2, 4, 5)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    brute = ((flat[:, None] - vq.codebook.detach()[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(info["indices"].flatten(), brute)
    assert torch.allclose(z_q, vq.codebook.detach()[info["indices"]].permute(0, 3, 1, 2), atol=1e-6)
    # Straight-through: d(sum z_q)/dz = 1 everywhere; the codebook loss reaches the codebook.
    (z_q.sum() + info["codebook_loss"] + info["commitment_loss"]).backward()
    # Commitment = mean (z - sg[z_q])^2 adds 2 (z - z_q) / numel; the codebook loss adds nothing.
    assert torch.allclose(z.grad, 1 + 2 * (z - z_q).detach() / z.numel(), atol=1e-6)
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0
    assert torch.allclose(info["codebook_loss"], info["commitment_loss"])


def test_quantizer_straight_through_gradient_is_identity():
    vq = VectorQuantizer(8, 3)
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    z_q, _ = vq(z)
    g = torch.randn_like(z)
    (z_q * g).sum().backward()
    assert torch.allclose(z.grad, g)


def test_quantize_exact_maps_codes_to_themselves():
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 3)
    idx = torch.randint(0, 64, (2, 4, 4))
    z = vq.lookup(idx).detach()
    z_q, found = vq.quantize_exact(z)
    assert torch.equal(found, idx) and torch.equal(z_q, z)


def test_usage_and_perplexity():
    vq = VectorQuantizer(8, 2).eval()
    codes = vq.codebook.detach()
    # Every code exactly once: usage 1, perplexity K.
    z = codes.T.reshape(1, 2, 2, 4)
    info = vq(z)[1]
    assert info["usage"] == 1.0 and torch.isclose(info["perplexity"], torch.tensor(8.0))
    # One code everywhere: usage 1/K, perplexity 1.
    z = codes[3].view(1, 2, 1, 1).expand(1, 2, 4, 4).contiguous()
    info = vq(z)[1]
    assert info["usage"] == 1 / 8 and torch.isclose(info["perplexity"], torch.tensor(1.0))
    # Half the codes, equally often: perplexity 4.
    z = codes[:4].T.reshape(1, 2, 2, 2)
    assert torch.isclose(vq(z)[1]["perplexity"], torch.tensor(4.0))


def test_ema_codebook_moves_to_cluster_means_and_is_not_a_parameter():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=True, decay=0.9)
    assert param_count(vq) == 0 and "codebook" in vq.state_dict()
    before = vq.codebook.clone()
    target = vq.codebook[1].clone() + 0.5  # every vector near code 1 -> code 1 should move there
    z = target.view(1, 2, 1, 1) + 0.01 * torch.randn(1, 2, 4, 4)
    vq.train()
    for _ in range(100):
        z_q, info = vq(z)
    assert info["codebook_loss"] == 0
    moved = (vq.codebook - before).norm(dim=1)
    k = info["indices"].flatten()[0].item()
    assert torch.allclose(vq.codebook[k], z.mean((0, 2, 3)), atol=1e-2)
    assert (moved > 0).sum() == 1  # unused codes stay where they are (Laplace smoothing, N_k = 1 init)
    # Eval mode never touches the codebook.
    vq.eval()
    frozen = vq.codebook.clone()
    vq(torch.randn(1, 2, 4, 4))
    assert torch.equal(vq.codebook, frozen)


def test_dead_codes_are_restarted_from_batch_encoder_outputs():
    torch.manual_seed(0)
    for ema in (False, True):
        vq = VectorQuantizer(16, 3, ema=ema, restart_after=3).train()
        z = torch.randn(2, 3, 4, 4) * 0.01 + vq.codebook.detach()[0].view(1, 3, 1, 1)  # all -> code 0
        restarted = [vq(z)[1]["restarted"] for _ in range(3)]
        assert restarted == [0, 0, 15]  # 15 codes unused for 3 steps
        batch = z.permute(0, 2, 3, 1).reshape(-1, 3)
        for k in range(1, 16):  # each restarted code now sits on one of this batch's vectors
            assert (batch - vq.codebook.detach()[k]).norm(dim=1).min() < 1e-6
        assert vq.steps_unused.max() <= 1
        # The next batch now uses more than one code.
        assert vq(z)[1]["usage"] > 1 / 16


# ---------------------------------------------------------------------------------------------
# VQ-VAE
# ---------------------------------------------------------------------------------------------


def test_vqvae_shapes_and_gradients():
    torch.manual_seed(0)
    model = VQVAE(tiny_vqvae_config())
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert model.encode(x).shape == (2, 3, 8, 8)
    recon, info = model(x)
    assert recon.shape == x.shape
    assert {"indices", "codebook_loss", "commitment_loss", "usage", "perplexity"} <= set(info)
    loss = F.mse_loss(recon, x) + info["codebook_loss"] + 0.2 * info["commitment_loss"]
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # reached through straight-through
    assert model.quantizer.codebook.grad.abs().sum() > 0


@pytest.mark.parametrize("latent_channels", [3, 4])
def test_vqvae_small_profile_64_to_16(latent_channels):
    """laptop/smoke-style: 64x64 image -> 16x16 latent with two downsamplings."""
    cfg = tiny_vqvae_config(latent_channels=latent_channels)
    assert cfg.downsample_factor == 4
    model = VQVAE(cfg).eval()
    x = torch.randn(1, 1, 64, 64)
    z = model.encode_to_latent(x)
    assert z.shape == (1, latent_channels, 16, 16)
    assert model.decode_latent(z).shape == x.shape


def test_vqvae_partial_downsampling():
    cfg = tiny_vqvae_config(down_sample=[True, False])
    assert cfg.downsample_factor == 2
    model = VQVAE(cfg)
    recon, info = model(torch.randn(1, 1, 32, 32))
    assert recon.shape == (1, 1, 32, 32) and info["indices"].shape == (1, 16, 16)


def test_encode_to_latent_is_exact_codes_and_has_no_side_effects():
    torch.manual_seed(0)
    model = VQVAE(tiny_vqvae_config(ema=True, restart_after=1)).train()
    before = model.quantizer.codebook.clone()
    z = model.encode_to_latent(torch.randn(2, 1, 32, 32))
    assert not z.requires_grad
    assert torch.equal(model.quantizer.codebook, before)  # no EMA update, no restart
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    assert (flat[:, None] == before[None]).all(-1).any(1).all()  # every vector is a codebook entry


def test_requantize_round_trip():
    torch.manual_seed(0)
    model = VQVAE(tiny_vqvae_config()).eval()
    z_q = model.encode_to_latent(torch.randn(2, 1, 32, 32))
    with torch.no_grad():
        ref = model.decode(z_q)
    assert torch.equal(model.decode_latent(z_q, requantize=True), ref)
    assert torch.equal(model.decode_latent(z_q, requantize=False), ref)
    # A slightly off-codebook (sampled) latent: re-quantising snaps it back, decoding raw does not.
    noisy = z_q + 1e-3 * torch.randn_like(z_q)
    assert torch.equal(model.decode_latent(noisy, requantize=True), ref)
    assert not torch.equal(model.decode_latent(noisy, requantize=False), ref)
    # The default comes from the config.
    model.config = dataclasses.replace(model.config, requantize=True)
    assert torch.equal(model.decode_latent(noisy), ref)


def test_ema_vqvae_codebook_not_in_optimiser_but_in_checkpoint():
    model = VQVAE(tiny_vqvae_config(ema=True))
    names = {n for n, _ in model.named_parameters()}
    assert "quantizer.codebook" not in names
    assert {"quantizer.codebook", "quantizer.cluster_size", "quantizer.cluster_sum"} <= set(model.state_dict())
    before = model.quantizer.codebook.clone()
    model.train()
    model(torch.randn(2, 1, 32, 32))
    assert not torch.equal(model.quantizer.codebook, before)


def test_vqvae_config_validation_and_yaml_loading():
    with pytest.raises(ValueError, match="mid_channels"):
        tiny_vqvae_config(mid_channels=[16, 8])
    with pytest.raises(ValueError, match="attn_down"):
        tiny_vqvae_config(attn_down=[False])
    data = dataclasses.asdict(tiny_vqvae_config())
    assert from_dict(VQVAEConfig, data) == tiny_vqvae_config()
    with pytest.raises(ConfigError):
        from_dict(VQVAEConfig, {**data, "recon_loss": "huber"})


# ---------------------------------------------------------------------------------------------
# discriminator and losses
# ---------------------------------------------------------------------------------------------


def test_patch_discriminator_shape():
    d = PatchDiscriminator(1, [8, 16, 32])
    assert d(torch.randn(2, 1, 32, 32)).shape == (2, 1, 3, 3)  # 32 -> 16 -> 8 -> 4 -> 3
    assert d(torch.randn(1, 1, 64, 64)).shape == (1, 1, 7, 7)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 2  # not on first/last layer


def test_lsgan_losses():
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert lsgan_discriminator_loss(ones, zeros) == 0
    assert lsgan_discriminator_loss(zeros, ones) == 1
    assert lsgan_generator_loss(ones) == 0 and lsgan_generator_loss(zeros) == 1


def test_generator_and_discriminator_losses_follow_the_schedule():
    torch.manual_seed(0)
    cfg = tiny_vqvae_config()
    model, disc = VQVAE(cfg), build_discriminator(cfg)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    recon, info = model(x)

    early = vqvae_generator_loss(cfg, x, recon, info, step=9, discriminator=disc)
    assert set(early) == {"recon", "codebook", "commitment", "total"}
    assert torch.allclose(early["commitment"], 0.2 * info["commitment_loss"])
    assert vqvae_discriminator_loss(cfg, x, recon, step=9, discriminator=disc) == {}

    late = vqvae_generator_loss(cfg, x, recon, info, step=10, discriminator=disc)
    assert set(late) == {"recon", "codebook", "commitment", "adversarial", "total"}
    assert torch.allclose(late["total"], sum(v for k, v in late.items() if k != "total"))
    late["total"].backward()
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0

    disc.zero_grad()
    model.zero_grad()
    d = vqvae_discriminator_loss(cfg, x, recon, step=10, discriminator=disc)
    assert set(d) == {"real", "fake", "total"}
    d["total"].backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert model.decoder.conv_out.weight.grad is None  # recon was detached for D

    l1 = vqvae_generator_loss(dataclasses.replace(cfg, recon_loss="l1"), x, recon.detach(), info, step=0)
    assert torch.allclose(l1["recon"], (recon.detach() - x).abs().mean())


def test_hinge_loss_and_spectral_norm_discriminator():
    """The hinge choice: no discriminator loss once both sides are beyond the margin, the
    generator's loss falls as its scores rise; spectral norm replaces the BatchNorms."""
    ones = torch.ones(2, 1, 3, 3)
    assert hinge_discriminator_loss(ones, -ones) == 0 and hinge_discriminator_loss(3 * ones, -5 * ones) == 0
    assert hinge_discriminator_loss(-ones, ones) == 2  # 1/2 (2 + 2)
    assert hinge_generator_loss(2 * ones) < hinge_generator_loss(ones)
    d = PatchDiscriminator(1, [8, 16, 32], spectral_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert sum(nn.utils.parametrize.is_parametrized(m) for m in d.modules() if isinstance(m, nn.Conv2d)) == 4
    assert d(torch.randn(2, 1, 32, 32)).shape == (2, 1, 3, 3)
    cfg = dataclasses.replace(tiny_vqvae_config(), adversarial_loss="hinge", disc_spectral_norm=True)
    disc = build_discriminator(cfg).eval()  # eval: no power iteration between the calls below
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    recon = x.flip(-1)
    terms = vqvae_discriminator_loss(cfg, x, recon, step=10, discriminator=disc)
    real, fake = disc(x), disc(recon)
    assert torch.allclose(terms["total"], cfg.adversarial_loss_weight * hinge_discriminator_loss(real, fake))
    assert torch.allclose(terms["real"], F.relu(1 - real).mean())
    with pytest.raises(ConfigError, match="adversarial_loss"):
        from_dict(VQVAEConfig, {"adversarial_loss": "wgan"}, where="vqvae")


def test_focal_frequency_loss():
    """0 for a perfect reconstruction; equal to the plain spectral MSE times the focus weights;
    larger for a blurred image than for one with the same pixel error spread as fine grain."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16)
    assert focal_frequency_loss(x, x) == 0
    y = x + 0.1 * torch.randn_like(x)
    diff = torch.fft.fft2(y, norm="ortho") - torch.fft.fft2(x, norm="ortho")
    d = diff.abs() ** 2
    w = diff.abs() / diff.abs().amax(dim=(-2, -1), keepdim=True)
    assert torch.allclose(focal_frequency_loss(y, x), (w * d).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        focal_frequency_loss(x, x[..., :8])
    cfg = dataclasses.replace(tiny_vqvae_config(), frequency_loss_weight=2.0)
    model = VQVAE(cfg)
    recon, info = model(x * 2 - 1)
    terms = vqvae_generator_loss(cfg, x * 2 - 1, recon, info, step=0)
    assert torch.allclose(terms["frequency"], 2.0 * focal_frequency_loss(recon, x * 2 - 1))
    with pytest.raises(ValueError, match="frequency_loss_weight"):
        dataclasses.replace(cfg, frequency_loss_weight=-1.0)


def test_decoder_noise_starts_silent_and_learns_a_scale():
    """With decoder_noise the decoder adds fresh per-pixel noise after each up block, scaled per
    channel from 0: at the start it decodes exactly as without, and the scales get gradients."""
    torch.manual_seed(0)
    plain = VQVAE(tiny_vqvae_config())
    noisy = VQVAE(dataclasses.replace(tiny_vqvae_config(), decoder_noise=True))
    missing, unexpected = noisy.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("decoder.noise.") for k in missing)
    z = torch.randn(2, plain.config.latent_channels, 8, 8)
    assert torch.allclose(noisy.decode(z), plain.decode(z))  # scales 0: no noise yet
    noisy.decode(z).pow(2).mean().backward()
    assert all(m.weight.grad is not None for m in noisy.decoder.noise)
    with torch.no_grad():
        for m in noisy.decoder.noise:
            m.weight.fill_(0.5)
    assert not torch.allclose(noisy.decode(z), noisy.decode(z))  # drawn anew at every call
    assert plain.decoder.noise is None


# ---------------------------------------------------------------------------------------------
# perceptual loss (local files only)
# ---------------------------------------------------------------------------------------------


class _TinyFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 8, 3, stride=2, padding=1)

    def forward(self, x):
        h1 = torch.relu(self.a(x))
        return [h1, torch.relu(self.b(h1))]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_perceptual_loss_from_torchscript_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(_TinyFeatures()), str(path))
    cfg = tiny_vqvae_config(perceptual_weights=str(path), perceptual_loss_weight=0.5)
    loss_fn = build_perceptual_loss(cfg)
    x = torch.rand(2, 1, 16, 16)
    y = torch.rand(2, 1, 16, 16, requires_grad=True)
    assert loss_fn(x, x) == 0
    d = loss_fn(y, x)
    assert d > 0
    d.backward()
    assert y.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss_fn.parameters())
    loss_fn.train()
    assert not loss_fn.net.training  # stays frozen in eval mode
    # Wired into the generator loss, weighted.
    model = VQVAE(cfg)
    recon, info = model(x)
    terms = vqvae_generator_loss(cfg, x, recon, info, step=0, perceptual=loss_fn)
    assert torch.allclose(terms["perceptual"], 0.5 * loss_fn(recon, x))


def test_perceptual_loss_from_torch_export_program(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "features.pt2"
    dims = {0: torch.export.Dim("b"), 2: torch.export.Dim("h", min=4), 3: torch.export.Dim("w", min=4)}
    program = torch.export.export(_TinyFeatures().eval(), (torch.randn(2, 1, 16, 16),), dynamic_shapes=(dims,))
    torch.export.save(program, str(path))
    loss_fn = PerceptualLoss(path).train()
    x = torch.rand(3, 1, 24, 24)
    y = torch.rand(3, 1, 24, 24, requires_grad=True)
    assert loss_fn(x, x) == 0
    loss_fn(y, x).backward()
    assert y.grad.abs().sum() > 0
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a program")
    with pytest.raises(ConfigError, match="not a torch.export program"):
        PerceptualLoss(bad)


def test_perceptual_loss_from_vgg16_state_dict(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in VGG16Features().features.state_dict().items()}, path)
    loss_fn = PerceptualLoss(path)
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    assert loss_fn(x, x) == 0 and loss_fn(x, -x) > 0


def test_perceptual_loss_missing_or_bad_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match="does not exist.*never downloaded"):
        PerceptualLoss(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="neither TorchScript nor a state dict"):
        PerceptualLoss(garbage)
    other = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, other)
    with pytest.raises(ConfigError, match="not VGG16"):
        PerceptualLoss(other)
    assert build_perceptual_loss(tiny_vqvae_config()) is None  # off by default


# ---------------------------------------------------------------------------------------------
# paper build
# ---------------------------------------------------------------------------------------------


def test_paper_vqvae_matches_seed_parameter_count_and_latent_shape():
    """Paper VQVAE = the seed's VQVAE for 1-channel images with z=3, K=16,384: 22,003,932
    parameters (by hand from the seed's layer list), of which 49,152 are the codebook; the seed's
    discriminator for 1 channel has 661,312. A 256x256 slice encodes to 3x32x32."""
    cfg = VQVAEConfig()
    model = VQVAE(cfg).eval()
    print("paper VQVAE parameters:", param_table(model))
    assert param_count(model) == 22_003_932
    assert param_count(model.quantizer) == 16384 * 3
    assert param_count(build_discriminator(cfg)) == 661_312
    assert cfg.downsample_factor == 8
    z = model.encode_to_latent(torch.randn(1, 1, 256, 256))
    assert z.shape == (1, 3, 32, 32)
