"""The FP8 decoder (``decoder="fast-fp8"``): its scales and weights on the CPU, its kernels and decode on
a Hopper GPU (Note [FP8 convolutions])."""

import pytest
import torch

from conftest import small_latents, small_vae
from framepipe import SettingsError
from framepipe._equivalence import chosen_ways
from framepipe._fp8 import E4M3, E4M3_MAX, fp8_weights, norm_factors
from framepipe._quality import psnr
from framepipe._source import decode_chunks


def _norm(channels: int, gamma: torch.Tensor):
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    norm = WanRMS_norm(channels, images=False)
    with torch.no_grad():
        norm.gamma.copy_(gamma.view_as(norm.gamma))
    return norm


def test_norm_factors_bring_the_largest_possible_value_to_e4m3s_largest():
    gamma = torch.tensor([2.0, -0.5, 0.0, 1e-3])
    factors = norm_factors(_norm(4, gamma))
    bound = gamma.abs() * 4**0.5  # a channel's share of a pixel's norm is at most 1
    assert torch.allclose(factors[[0, 1, 3]] * bound[[0, 1, 3]], torch.full((3,), E4M3_MAX))
    assert factors[2] == 0  # a channel that is always 0


def test_fp8_weights_undo_the_windows_scales():
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(64, 96, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    factors = torch.rand(64, generator=g) * 100 + 1
    weight, scales = fp8_weights(conv, factors, 128)
    assert weight.dtype == E4M3 and weight.shape == (128, 64, 3, 3, 3) and scales.shape == (128,)
    assert weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not weight[96:].float().any() and not scales[96:].any()  # the added output channels
    assert weight[:96].float().abs().amax(dim=(1, 2, 3, 4)).eq(E4M3_MAX).all()  # each channel's range used
    # dequantized and applied to windows scaled by the factors: the convolution, within e4m3's rounding
    restored = weight[:96].float() * scales[:96].view(-1, 1, 1, 1, 1) * factors.view(1, -1, 1, 1, 1)
    relative = (restored - conv.weight).abs() / conv.weight.abs().amax(dim=(1, 2, 3, 4), keepdim=True)
    assert relative.max() <= 2**-4


def test_fp8_decoder_needs_a_hopper_gpu():
    vae = _vae("wan2.2")
    with pytest.raises(SettingsError, match="fast-fp8 needs an NVIDIA Hopper"):
        next(decode_chunks(vae, small_latents("wan2.2"), decoder="fast-fp8"))  # latents on the CPU


def _vae(version: str):
    """A Wan VAE with channels of multiples of 64 (64-256), where the FP8 convolutions apply."""
    return small_vae(version, base_dim=64, **({"decoder_base_dim": 64} if version == "wan2.2" else {}))


@pytest.mark.needs_cuda
def test_fp8_norm_writes_silu_norm_scaled_into_e4m3():
    from framepipe._fast_kernels import norm_silu_free

    g = torch.Generator(device="cuda").manual_seed(0)
    norm = _norm(256, torch.randn(256, generator=g, device="cuda").cpu()).cuda()
    x = torch.randn(1, 256, 2, 30, 52, generator=g, device="cuda").to(torch.bfloat16)
    factors = norm_factors(norm)
    out = torch.empty(x.shape, dtype=E4M3, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    norm_silu_free(x.contiguous(memory_format=torch.channels_last_3d), None, norm.gamma.reshape(-1), float(norm.scale),
                   out, factors)  # fmt: skip
    want = torch.nn.functional.silu(norm(x.float())) * factors.view(1, -1, 1, 1, 1)
    assert want.abs().max() <= E4M3_MAX
    # the same value where the float32 orders agree; elsewhere one step of e4m3 (3 bits) apart
    assert (out.float() == want.to(E4M3).float()).float().mean() > 0.99
    assert ((out.float() - want).abs() <= want.abs() * 2**-3 + 2**-9).all()


@pytest.mark.needs_cuda
def test_fp8_window_convolution_is_the_convolution_of_its_e4m3_operands():
    from framepipe._fast_kernels import window_conv

    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(1, 128, 4, 20, 34, generator=g, device="cuda") * 20).to(E4M3)
    conv = torch.nn.Conv3d(128, 256, 3).cuda()
    factors = torch.rand(128, generator=g, device="cuda") + 0.5
    weight, scales = fp8_weights(conv, factors, 256)
    bias = torch.randn(256, generator=g, device="cuda")
    got = window_conv(x.contiguous(memory_format=torch.channels_last_3d), weight, bias, 256, 128, 128, 128, 4, 4,
                      weight_scales=scales, out_dtype=torch.float32)  # fmt: skip
    with torch.backends.cudnn.flags(allow_tf32=False):
        want = torch.nn.functional.conv3d(x.float(), weight.float() * scales.view(-1, 1, 1, 1, 1), bias)
    assert got.dtype == torch.float32 and got.shape == want.shape
    # Hopper's FP8 tensor cores add the products with fewer bits than float32: 0.25 % of the largest
    # value here (H200, 2026-12-02); a wrong scale, tap or channel is off by the value itself
    assert (got - want).abs().max() <= 1e-2 * want.abs().max()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("version", ["wan2.1", "wan2.2"])
def test_fp8_decoder_stays_near_diffusers(version):
    """The FP8 decoder's frames against diffusers' decoder on the same bfloat16 weights: close (a bug
    in the scales puts them tens of dB apart), and not the plain fast decoder's (FP8 ran)."""
    vae = _vae(version).to("cuda", torch.bfloat16)
    z = small_latents(version, frames=4, height=12, width=20).to("cuda", torch.bfloat16)

    def frames(decoder):
        with torch.no_grad():
            return torch.cat([c.float().clone() for c in decode_chunks(vae, z, decoder=decoder)], 2)

    theirs, fp8, fast = frames("diffusers"), frames("fast-fp8"), frames("fast")
    assert any(k[0] == "fp8 conv" for k in chosen_ways())
    to255 = lambda v: (v.clamp(-1, 1) + 1) * 127.5  # noqa: E731
    assert psnr(to255(fp8), to255(theirs)) > 30
    assert psnr(to255(fast), to255(theirs)) > psnr(to255(fp8), to255(theirs))
