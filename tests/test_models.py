"""Blocks, condition encoders and the conditional UNet: shapes, gradients, the forward contract.

Everything runs on tiny configs (8x8 or 16x16 latents, 16-32 channels) except the paper-build
test, which builds the full-size UNet and checks its parameter count against the seed's.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmldm.config import from_dict
from mmldm.errors import ConfigError
from mmldm.models import UNet, UNetConfig, param_count, param_table
from mmldm.models.blocks import (
    DownBlock,
    MidBlock,
    ResBlock,
    SelfAttention,
    UpBlock,
    timestep_embedding,
)
from mmldm.models.conditioning import ConditionPyramid, HintEncoder, NearestConcat, resize_condition
from mmldm.models.spade import SPADE

MODES = ("concat_nearest", "hint_encoder", "spade")


def tiny_unet_config(**over) -> UNetConfig:
    """Two levels (one downsampling), 8x8 latent for a 32x32 condition (factor 4)."""
    base = dict(
        latent_channels=3,
        down_channels=[16, 32],
        mid_channels=[32, 16],
        down_sample=[True],
        attn_down=[True],
        num_heads=2,
        norm_groups=8,
        time_emb_dim=32,
        conv_out_channels=16,
        dropout=0.1,
        cond_downsample=4,
        hint_channels=[8, 8, 16],
        spade_hidden=8,
    )
    base.update(over)
    return UNetConfig(**base)


def make_cond(b: int, size: int, seed: int = 0) -> torch.Tensor:
    """A plausible condition: binary edges + one-hot of a random label map, (B, 5, size, size)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (b, size, size), generator=g)
    edges = (torch.rand(b, 1, size, size, generator=g) < 0.1).float()
    return torch.cat([edges, F.one_hot(labels, 4).permute(0, 3, 1, 2).float()], dim=1)


# ---------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------


def test_param_count_and_table():
    m = nn.Sequential(nn.Linear(3, 4), nn.Conv2d(4, 2, 3))
    assert param_count(m) == (3 * 4 + 4) + (4 * 2 * 9 + 2)
    m[0].weight.requires_grad_(False)
    assert param_count(m, trainable_only=True) == 4 + (4 * 2 * 9 + 2)
    assert param_table(m) == {"0": 16, "1": 74, "total": 90}


def test_timestep_embedding_int_and_float():
    e = timestep_embedding(torch.tensor([0, 10, 999]), 16)
    assert e.shape == (3, 16)
    assert torch.allclose(e[0, :8], torch.zeros(8)) and torch.allclose(e[0, 8:], torch.ones(8))
    # Continuous steps interpolate smoothly and equal the integer case at integers.
    ef = timestep_embedding(torch.tensor([10.0, 10.5]), 16)
    assert torch.allclose(ef[0], e[1])
    assert not torch.allclose(ef[1], ef[0])
    with pytest.raises(ValueError):
        timestep_embedding(torch.tensor([1]), 15)


def test_resblock_shapes_time_dropout_and_grads():
    blk = ResBlock(8, 16, groups=4, time_dim=12, dropout=0.5)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    temb = torch.randn(2, 12)
    y = blk(x, temb)
    assert y.shape == (2, 16, 6, 6)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert blk.time_proj[1].weight.grad.abs().sum() > 0
    # Dropout is active in train mode and off in eval mode.
    blk.eval()
    assert torch.equal(blk(x, temb), blk(x, temb))
    with pytest.raises(ValueError, match="temb"):
        blk(x)


def test_selfattention_matches_reference_multihead_attention():
    """Our SDPA attention equals GroupNorm + nn.MultiheadAttention with the same weights."""
    torch.manual_seed(0)
    att = SelfAttention(16, num_heads=4, groups=4)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(att.qkv.weight)
        mha.in_proj_bias.copy_(att.qkv.bias)
        mha.out_proj.weight.copy_(att.proj.weight)
        mha.out_proj.bias.copy_(att.proj.bias)
    x = torch.randn(2, 16, 5, 3)
    tokens = att.norm(x).flatten(2).transpose(1, 2)
    ref = x + mha(tokens, tokens, tokens, need_weights=False)[0].transpose(1, 2).reshape(2, 16, 5, 3)
    assert torch.allclose(att(x), ref, atol=1e-5)
    assert param_count(att.qkv) + param_count(att.proj) == param_count(mha)
    with pytest.raises(ValueError, match="heads"):
        SelfAttention(10, num_heads=4, groups=2)


def test_down_mid_up_blocks_shapes():
    x = torch.randn(2, 8, 8, 8)
    temb = torch.randn(2, 16)
    d = DownBlock(8, 16, num_layers=2, downsample=True, attention=True, num_heads=2, groups=4, time_dim=16)
    y = d(x, temb)
    assert y.shape == (2, 16, 4, 4)
    assert len(d.resnets) == 2 and len(d.attentions) == 2
    m = MidBlock(16, 8, num_layers=2, num_heads=2, groups=4, time_dim=16)
    assert len(m.resnets) == 3 and len(m.attentions) == 2
    z = m(y, temb)
    assert z.shape == (2, 8, 4, 4)
    u = UpBlock(8, 4, skip_channels=8, num_layers=2, upsample=True, attention=False, num_heads=2, groups=4, time_dim=16)
    assert u(z, x, temb).shape == (2, 4, 8, 8)
    # VQVAE-style: no time embedding, no skip.
    u2 = UpBlock(8, 4, num_layers=1, upsample=False, attention=True, num_heads=2, groups=4)
    assert u2(z).shape == (2, 4, 4, 4)


# ---------------------------------------------------------------------------------------------
# condition encoders and SPADE
# ---------------------------------------------------------------------------------------------


def test_resize_condition_area_keeps_thin_edges_and_class_fractions():
    cond = make_cond(1, 32)
    cond[:, 0] = 0
    cond[:, 0, :, 5] = 1  # a 1-pixel-wide vertical edge
    small = resize_condition(cond, (8, 8))
    assert small.shape == (1, 5, 8, 8)
    assert small[:, 0].sum() > 0  # area averaging keeps the edge as a fraction ...
    assert torch.allclose(small[:, 1:].sum(1), torch.ones(1, 8, 8))  # ... and class fractions sum to 1
    nearest = F.interpolate(cond, size=(8, 8), mode="nearest")
    assert nearest[:, 0].sum() == 0  # ... where nearest sampling loses it entirely
    assert resize_condition(cond, (32, 32)) is cond


def test_condition_pyramid_caches_per_resolution():
    pyr = ConditionPyramid(make_cond(2, 16))
    a = pyr.at((8, 8))
    assert pyr.at(torch.Size([8, 8])) is a
    assert pyr.at((4, 4)).shape == (2, 5, 4, 4)


def test_nearest_concat_and_hint_encoder_shapes_and_zero_cond():
    cond = make_cond(2, 32)
    nc = NearestConcat(5, 3)
    assert nc(cond, (8, 8)).shape == (2, 3, 8, 8)
    assert torch.equal(nc(torch.zeros(2, 5, 32, 32), (8, 8)), torch.zeros(2, 3, 8, 8))  # no bias
    he = HintEncoder(5, [8, 8, 16], 3, downsample=4)
    out = he(cond, (8, 8))
    assert out.shape == (2, 3, 8, 8)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in he.parameters())
    with pytest.raises(ValueError, match="needs"):
        he(make_cond(2, 16), (8, 8))
    with pytest.raises(ValueError, match="entries"):
        HintEncoder(5, [8, 16], 3, downsample=8)
    with pytest.raises(ValueError, match="power of 2"):
        HintEncoder(5, [8, 16], 3, downsample=3)


def test_spade_modulates_per_pixel_and_reduces_to_norm_for_constant_cond():
    torch.manual_seed(0)
    sp = SPADE(8, 5, groups=4, hidden=6)
    x = torch.randn(2, 8, 8, 8)
    cond = make_cond(2, 32)
    y = sp(x, cond)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert sp.shared.weight.grad.abs().sum() > 0 and sp.gamma_beta.weight.grad.abs().sum() > 0
    # Different conditions give different outputs.
    assert not torch.allclose(sp(x, cond), sp(x, make_cond(2, 32, seed=1)))
    # A zero (dropped) condition is a spatially constant affine of GroupNorm away from borders
    # (zero padding makes the border pixels differ).
    y0 = sp(x, torch.zeros(2, 5, 32, 32))
    normed = F.group_norm(x, 4)
    ratio_ok = []
    for c in range(8):
        a = y0[0, c, 2:-2, 2:-2].flatten()
        n = normed[0, c, 2:-2, 2:-2].flatten()
        fit = torch.linalg.lstsq(torch.stack([n, torch.ones_like(n)], 1), a[:, None]).solution
        ratio_ok.append(torch.allclose(fit[0] * n + fit[1], a, atol=1e-4))
    assert all(ratio_ok)


# ---------------------------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES + ("none",))
def test_unet_shapes_every_mode(mode):
    torch.manual_seed(0)
    net = UNet(tiny_unet_config(conditioning=mode))
    x = torch.randn(2, 3, 8, 8)
    out = net(x, torch.tensor([1, 500]), make_cond(2, 32))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("view_embedding", [False, True])
def test_unet_training_step(mode, view_embedding):
    """Forward + backward: finite grads everywhere, nonzero on the condition path, and a few
    Adam steps on a fixed batch lower the loss."""
    torch.manual_seed(0)
    net = UNet(tiny_unet_config(conditioning=mode, view_embedding=view_embedding, dropout=0.0))
    x, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t, cond, view = torch.tensor([3, 50, 200, 900]), make_cond(4, 32), torch.tensor([0, 1, 0, 1])

    loss = F.mse_loss(net(x, t, cond, view), noise)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if mode == "spade":
        cond_params = [p for n, p in net.named_parameters() if ".shared." in n or ".gamma_beta." in n]
        # (weight, bias) x (shared, gamma_beta) x 2 norms x 7 ResBlocks (2 down, 3 mid, 2 up)
        assert len(cond_params) == 2 * 2 * 2 * 7
    else:
        cond_params = list(net.cond_encoder.parameters())
    assert all(p.grad.abs().sum() > 0 for p in cond_params)
    if view_embedding:
        assert net.view_emb.weight.grad.abs().sum(1).gt(0).all()  # both views got gradient

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    first = loss.item()
    for _ in range(8):
        opt.zero_grad()
        loss = F.mse_loss(net(x, t, cond, view), noise)
        loss.backward()
        opt.step()
    assert loss.item() < first


@pytest.mark.parametrize("mode", MODES)
def test_unet_dropped_condition_is_zeros_and_condition_matters(mode):
    torch.manual_seed(0)
    net = UNet(tiny_unet_config(conditioning=mode)).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 20])
    zeros = torch.zeros(2, 5, 32, 32)
    assert torch.equal(net(x, t, None), net(x, t, zeros))
    cond = make_cond(2, 32)
    assert not torch.allclose(net(x, t, cond), net(x, t, zeros))
    # Dropping one condition (edges) is a third, different input.
    edges_dropped = cond.clone()
    edges_dropped[:, 0] = 0
    assert not torch.allclose(net(x, t, cond), net(x, t, edges_dropped))


@pytest.mark.parametrize("mode", MODES + ("none",))
def test_a_prepared_condition_gives_the_same_output_at_every_step(mode):
    """What samplers reuse across steps (UNet.prepare_condition) changes nothing in the output;
    a condition prepared for other latents is refused."""
    torch.manual_seed(0)
    net = UNet(tiny_unet_config(conditioning=mode)).eval()
    x, cond, view = torch.randn(2, 3, 8, 8), make_cond(2, 32), torch.tensor([0, 1])
    with torch.no_grad():
        prepared = net.prepare_condition(cond, x)
        for t in (torch.tensor([10, 20]), torch.tensor([700, 900])):
            x_t = torch.randn_like(x)
            assert torch.equal(net(x_t, t, prepared, view), net(x_t, t, cond, view))
        assert torch.equal(net(x, t, net.prepare_condition(None, x)), net(x, t, None))
        with pytest.raises(ValueError, match="prepared for batch 2"):
            net(torch.randn(3, 3, 8, 8), torch.tensor([1, 2, 3]), prepared)


def test_unet_view_embedding():
    torch.manual_seed(0)
    net = UNet(tiny_unet_config(view_embedding=True)).eval()
    x, t, cond = torch.randn(2, 3, 8, 8), torch.tensor([10, 10]), make_cond(2, 32)
    sa = net(x, t, cond, torch.tensor([0, 0]))
    la = net(x, t, cond, torch.tensor([1, 1]))
    assert not torch.allclose(sa, la)
    assert net(x, t, cond, None).shape == x.shape
    # A model without a view embedding ignores the view.
    plain = UNet(tiny_unet_config(view_embedding=False)).eval()
    assert torch.equal(plain(x, t, cond, torch.tensor([0, 1])), plain(x, t, cond))
    assert param_count(net) - param_count(plain) == 2 * 32


def test_unet_timestep_forms():
    torch.manual_seed(0)
    net = UNet(tiny_unet_config()).eval()
    x, cond = torch.randn(2, 3, 8, 8), make_cond(2, 32)
    a = net(x, torch.tensor([7, 7]), cond)
    assert torch.allclose(net(x, torch.tensor([7.0, 7.0]), cond), a)
    assert torch.allclose(net(x, 7, cond), a)
    assert torch.allclose(net(x, torch.tensor(7), cond), a)
    assert not torch.allclose(net(x, torch.tensor([7.5, 7.5]), cond), a)


@pytest.mark.parametrize("mode", MODES)
def test_unet_smoke_profile_shape_on_16_and_8_latents(mode):
    """The smoke profile (down [32, 64], mid [64, 32], groups 8) on 16x16 and 8x8 latents."""
    cfg = tiny_unet_config(
        conditioning=mode,
        down_channels=[32, 64],
        mid_channels=[64, 32],
        conv_out_channels=32,
        num_heads=4,
        hint_channels=[16, 32, 64],
    )
    net = UNet(cfg)
    for size in (16, 8):
        out = net(torch.randn(1, 3, size, size), torch.tensor([5]), make_cond(1, 4 * size))
        assert out.shape == (1, 3, size, size)


def test_unet_three_levels_partial_downsampling_and_4_channel_latent():
    cfg = tiny_unet_config(
        latent_channels=4,
        down_channels=[16, 32, 32],
        mid_channels=[32, 16],
        down_sample=[True, False],
        attn_down=[False, True],
        conditioning="hint_encoder",
    )
    net = UNet(cfg)
    assert len(net.ups[0].attentions) == 2 and len(net.ups[1].attentions) == 0  # mirrors attn_down
    assert net(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), make_cond(2, 32)).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 4, 7, 7), torch.tensor([1]))


@pytest.mark.parametrize("mode", MODES)
def test_unet_channels_last_matches_contiguous(mode):
    torch.manual_seed(0)
    net = UNet(tiny_unet_config(conditioning=mode)).eval()
    x, t, cond = torch.randn(2, 3, 8, 8), torch.tensor([3, 4]), make_cond(2, 32)
    ref = net(x, t, cond)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.to(memory_format=torch.channels_last), t, cond.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)


def test_unet_config_validation_and_yaml_loading():
    with pytest.raises(ValueError, match="down_sample"):
        tiny_unet_config(down_sample=[True, True])
    with pytest.raises(ValueError, match="heads"):
        tiny_unet_config(num_heads=3)
    with pytest.raises(ValueError, match="groups"):
        tiny_unet_config(norm_groups=12)
    with pytest.raises(ValueError, match="mid_channels"):
        tiny_unet_config(mid_channels=[16, 16])
    with pytest.raises(ValueError, match="entries"):
        tiny_unet_config(conditioning="hint_encoder", hint_channels=[8, 16])
    # The strict YAML loader builds it from plain data and turns bad values into ConfigError.
    data = dataclasses.asdict(tiny_unet_config())
    assert from_dict(UNetConfig, data) == tiny_unet_config()
    with pytest.raises(ConfigError):
        from_dict(UNetConfig, {**data, "conditioning": "crossattn"})
    with pytest.raises(ConfigError, match="heads"):
        from_dict(UNetConfig, {**data, "num_heads": 3})


def test_paper_unet_matches_seed_parameter_count():
    """The paper UNet (concat_nearest, 5 -> 3 condition channels) has exactly the parameter
    count of the seed's ``Unet`` with the same numbers (computed by hand from the seed's
    layer list: 103,526,546), and runs on a 32x32 latent with a 256x256 condition."""
    torch.manual_seed(0)
    cfg = UNetConfig()
    net = UNet(cfg).eval()
    n = param_count(net)
    print("paper UNet parameters:", param_table(net))
    assert n == 103_526_546
    for mode in ("hint_encoder", "spade"):
        other = param_count(UNet(UNetConfig(conditioning=mode)))
        print(f"paper UNet ({mode}) parameters: {other:,}")
        assert 100e6 < other < 150e6
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32), torch.tensor([500]), make_cond(1, 256), None)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("profile", ["smoke", "laptop"])
def test_profile_models_build_and_chain(profile):
    """The models of the small profiles build from configs/*.yaml and chain end to end:
    image -> VQVAE latent -> UNet (with a condition and a view) -> decoded image."""
    from mmldm.config import load_config
    from mmldm.models import VQVAE

    torch.manual_seed(0)
    cfg = load_config(profile)
    vqvae, unet = VQVAE(cfg.vqvae).eval(), UNet(cfg.unet).eval()
    size = cfg.data.size
    z = vqvae.encode_to_latent(torch.randn(1, 1, size, size))
    f = cfg.vqvae.downsample_factor
    assert z.shape == (1, cfg.vqvae.latent_channels, size // f, size // f)
    with torch.no_grad():
        eps = unet(z, torch.tensor([10]), make_cond(1, size), torch.tensor([1]))
    assert eps.shape == z.shape
    assert vqvae.decode_latent(z - eps).shape == (1, 1, size, size)
    print(f"{profile}: VQVAE {param_count(vqvae):,} UNet {param_count(unet):,} parameters")
