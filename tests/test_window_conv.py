"""The fast decoder's own 3x3x3 convolution (``_window_conv.py``, Note [Window convolution]): where it
applies, and on the GPU its output against the convolution in float64, alone and through decodes."""

import pytest
import torch
import torch.nn.functional as F

from conftest import small_latents, small_vae
from framepipe import _decoder as decoder
from framepipe._equivalence import same_bits
from framepipe._source import decode_chunks
from framepipe._window_conv import WindowTile, exact_tiles, two_dot_tile, two_dots, window_convolved, window_tiles


def test_the_kernel_is_offered_only_where_it_applies():
    """Not on the CPU, not for a batch, a padded or strided convolution, or input channels off 32."""
    conv = torch.nn.Conv3d(64, 64, 3)
    assert window_tiles(conv, torch.empty(1, 64, 6, 10, 12)) == ()
    assert exact_tiles(conv, torch.empty(1, 64, 6, 10, 12, dtype=torch.bfloat16)) == ()
    if not torch.cuda.is_available():
        return
    on_gpu = torch.empty(1, 64, 6, 10, 12, device="cuda", dtype=torch.bfloat16)
    if torch.cuda.get_device_capability() < (9, 0):
        assert window_tiles(conv, on_gpu) == ()
        return
    assert window_tiles(conv, on_gpu)
    assert all(tile.channels_outer and tile.depth == 32 for tile in exact_tiles(conv, on_gpu))
    assert exact_tiles(conv, on_gpu.float()) == ()  # float32: cuDNN rounds the operands to TF32 first
    assert window_tiles(conv, torch.empty(2, 64, 6, 10, 12, device="cuda", dtype=torch.bfloat16)) == ()
    assert window_tiles(torch.nn.Conv3d(64, 64, 3, padding=1), on_gpu) == ()
    assert window_tiles(torch.nn.Conv3d(64, 64, 3, stride=2), on_gpu) == ()
    assert window_tiles(torch.nn.Conv3d(48, 64, 3), on_gpu[:, :48]) == ()
    assert window_tiles(torch.nn.Conv3d(64, 64, (1, 3, 3)), on_gpu) == ()


def _within(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """``got`` against the convolution in float64: one rounding of the output (bfloat16), or TF32's
    rounding of each product (float32, bounded by the sum of the products' magnitudes)."""
    want = F.conv3d(x.double(), w.double(), None if b is None else b.double())
    magnitude = F.conv3d(x.double().abs(), w.double().abs(), None if b is None else b.double().abs())
    if x.dtype == torch.bfloat16:
        bound = want.abs() * 2.0**-8 + magnitude * 2.0**-20
    else:
        bound = magnitude * 2.0**-10 + want.abs() * 2.0**-23
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    assert ((got.double() - want).abs() <= bound).all()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "channels, out_channels, with_bias",
    [(96, 96, False), (96, 3, True), (64, 192, True), (32, 40, False), (128, 12, False)],
)
def test_window_convolution_against_float64(dtype, channels, out_channels, with_bias):
    """Each tile, output channels under, at and over one tile of 128, sizes off the tiles' multiples."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the window convolution runs on Hopper or newer GPUs")
    g = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn(1, channels, 5, 23, 37, generator=g, device="cuda").to(dtype)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    w = (torch.randn(out_channels, channels, 3, 3, 3, generator=g, device="cuda") / 16).to(dtype)
    b = torch.randn(out_channels, generator=g, device="cuda").to(dtype) if with_bias else None
    conv = torch.nn.Conv3d(channels, out_channels, 3)
    tiles = window_tiles(conv, x)
    assert len(tiles) == 2
    two = two_dot_tile(conv, x)  # 96 = 64 + 32 and 192 = 128 + 64 in bf16: one tile of two dots
    assert (two is not None) == (dtype == torch.bfloat16 and out_channels in (96, 192))
    exact = exact_tiles(conv, x)  # cuDNN's order: each 32 input channels, then the taps
    assert (len(exact) > 0) == (dtype == torch.bfloat16)
    for tile in tiles + ((two,) if two else ()) + exact:
        got = window_convolved(x, w.contiguous(memory_format=torch.channels_last_3d), b, out_channels, tile)
        _within(got, x, w, b)
        # as the decoder hands it its weights: zero output channels up to its column tile, the same sums
        extra = w.new_zeros(tile.weight_rows(out_channels) - out_channels, *w.shape[1:])
        padded = torch.cat([w, extra]).contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(window_convolved(x, padded, b, out_channels, tile), got)


@pytest.mark.needs_cuda
def test_the_exact_decoders_tile_gives_cudnns_bits_for_wan21s_96_channels():
    """In bfloat16, a 96 -> 96 convolution (cuDNN 9 runs its 256x32x32 kernel there) summed in cuDNN's
    order (``exact_tiles``) gives the bits of ``F.conv3d`` channel-first, as diffusers calls it: the
    gain the exact decoder takes at first use, where its check finds those bits."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the window convolution runs on Hopper or newer GPUs")
    g = torch.Generator(device="cuda").manual_seed(6)
    x = torch.randn(1, 96, 6, 34, 58, generator=g, device="cuda").to(torch.bfloat16)
    w = (torch.randn(96, 96, 3, 3, 3, generator=g, device="cuda") / 16).to(torch.bfloat16)
    conv = torch.nn.Conv3d(96, 96, 3)
    (tile,) = exact_tiles(conv, x)  # the tile of two dots, 64 + 32 channels
    got = window_convolved(x.contiguous(memory_format=torch.channels_last_3d),
                           w.contiguous(memory_format=torch.channels_last_3d), None, 96, tile)  # fmt: skip
    assert same_bits(got.contiguous(), F.conv3d(x, w))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("channels, out_channels", [(96, 96), (192, 192), (64, 48)])
def test_a_tile_of_two_dots_applies_the_next_norm_into_a_window(channels, out_channels):
    """With ``norm``, the tile's output is silu(RMS norm * scale * gamma) of the convolution + bias,
    rounded once (bf16), stored into a window's interior with its border left as it was."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the window convolution runs on Hopper or newer GPUs")
    g = torch.Generator(device="cuda").manual_seed(5)
    dtype = torch.bfloat16
    x = torch.randn(1, channels, 6, 19, 29, generator=g, device="cuda").to(dtype)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    w = (torch.randn(out_channels, channels, 3, 3, 3, generator=g, device="cuda") / 16).to(dtype)
    b = torch.randn(out_channels, generator=g, device="cuda").to(dtype)
    gamma = (torch.rand(out_channels, generator=g, device="cuda") + 0.5).to(dtype)
    tile = two_dot_tile(torch.nn.Conv3d(channels, out_channels, 3), x)
    assert tile is not None and tile.columns == out_channels
    window = torch.full((1, out_channels, 2 + 4, 17 + 2, 27 + 2), 3.0, device="cuda", dtype=dtype)
    window = window.contiguous(memory_format=torch.channels_last_3d)
    inside = window[:, :, 2:, 1:-1, 1:-1]
    weight = w.contiguous(memory_format=torch.channels_last_3d)
    scale = out_channels**0.5
    window_convolved(x, weight, b, out_channels, tile, out=inside, norm=(gamma, scale))
    y = F.conv3d(x.double(), w.double(), b.double())
    want = F.silu(F.normalize(y, dim=1) * scale * gamma.double().view(1, -1, 1, 1, 1))
    assert ((inside.double() - want).abs() <= want.abs() * 2.0**-8 + 2.0**-12).all()
    border = window.clone()
    border[:, :, 2:, 1:-1, 1:-1] = 3.0
    assert (border == 3.0).all()


def test_the_fast_decoder_norms_a_residual_blocks_first_convolution_in_its_kernel(version, monkeypatch):
    """Where conv1 of a residual block takes a tile of two dots, the fast decoder has it apply norm2 +
    SiLU and fill conv2's window itself (the kernel emulated on the CPU): the same decode as norming
    its output apart, within float32's roundings, and diffusers' decode."""
    normed: list[int] = []

    def convolved(x, weight, bias, channels, way, *, out=None, norm=None):
        y = F.conv3d(x, weight[:channels], None if bias is None else bias[:channels])
        if norm is not None:
            normed.append(channels)
            gamma, scale = norm
            y = F.silu(F.normalize(y, dim=1) * scale * gamma.view(1, -1, 1, 1, 1))
        return y if out is None else out.copy_(y)

    def two_dots(conv, x):
        return WindowTile(256, conv.out_channels, 32, 8, 4) if conv.kernel_size == (3, 3, 3) else None

    monkeypatch.setattr(decoder, "two_dot_tile", two_dots)
    monkeypatch.setattr(decoder, "window_convolved", convolved)
    monkeypatch.setattr(decoder, "norm_fusable", lambda x, norm: True)  # the CUDA kernels' test, on the CPU
    monkeypatch.setattr(decoder, "fastest_way", lambda key, reference, run, ways, **_: ways[0])
    vae = small_vae(version)
    z = small_latents(version)
    decoded = {}
    for in_kernel in (True, False):
        step = decoder.WanDecoderStep(vae, "fast")
        step.fused = True  # channels-last, as on a GPU
        if not in_kernel:
            monkeypatch.setattr(step, "_norm_tile", lambda conv, norm, x: None)
        with torch.no_grad():
            decoded[in_kernel] = torch.cat(list(decode_chunks(vae, z, step=step)), 2)
    blocks = [m for m in vae.decoder.modules() if type(m).__name__ == "WanResidualBlock"]
    assert len(normed) == len(blocks) * z.shape[2]  # every block's conv1, every chunk
    torch.testing.assert_close(decoded[True], decoded[False], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        theirs = torch.cat(list(decode_chunks(vae, z, decoder="diffusers")), 2)
    torch.testing.assert_close(decoded[True], theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_fast_decoder_with_window_convolutions_stays_close(dtype, monkeypatch):
    """Every convolution the kernel applies to computed with it, through whole decodes (caches, first
    and later chunks, both tiles): within a few roundings of diffusers' decoder in the same dtype."""
    from diffusers import AutoencoderKLWan

    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the window convolution runs on Hopper or newer GPUs")
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=32, z_dim=16).eval().requires_grad_(False).to("cuda", dtype)
    z = small_latents("wan2.1", frames=4, height=10, width=14).to("cuda", dtype)
    chosen: list[WindowTile] = []

    def choose(key, reference, run, ways, **_):
        tiles = [way for way in ways if isinstance(way, WindowTile)]
        if key[0] == "conv" and tiles:
            chosen.append(tiles[len(chosen) % len(tiles)])
            return chosen[-1]
        return ways[0] if ways else None

    monkeypatch.setattr(decoder, "fastest_way", choose)
    step = decoder.WanDecoderStep(vae, "fast")
    with torch.no_grad():
        ours = [c.clone() for c in decode_chunks(vae, z, step=step)]
        theirs = [c.clone() for c in decode_chunks(vae, z, decoder="diffusers")]
    assert step.fused and len({tile.rows for tile in chosen}) == 2  # both tiles
    worst = max((a.float() - b.float()).abs().max().item() for a, b in zip(ours, theirs, strict=True))
    assert worst <= (0.25 if dtype == torch.bfloat16 else 0.02)


def test_only_the_fast_decoder_is_offered_the_kernel(monkeypatch):
    """The exact decoder's ways are cuDNN's alone (its pixels are diffusers'); the fast decoder's
    include the kernel's tiles wherever they apply."""
    tile = WindowTile(256, 128, 32, 8, 4)
    monkeypatch.setattr(decoder, "window_tiles", lambda conv, x: (tile,))
    offered = _ways_offered(monkeypatch, torch.nn.Conv3d(96, 96, 3), pick=lambda ways: False)
    assert tile not in offered[True] and tile in offered[False]


def _ways_offered(monkeypatch, conv: torch.nn.Module, pick) -> dict[bool, tuple]:
    """The ways the exact (True) and the fast (False) decoder offer ``fastest_way`` for ``conv`` over a
    small channels-last window, taking ``pick(ways)``; each result checked against ``conv`` itself."""
    offered: dict[bool, tuple] = {}

    def choose(key, reference, run, ways, *, device, exact=True):
        offered[exact] = tuple(ways)
        return pick(ways)

    monkeypatch.setattr(decoder, "fastest_way", choose)
    x = torch.randn(1, conv.in_channels, 3, 6, 8).contiguous(memory_format=torch.channels_last_3d)
    for exact in (True, False):
        step = decoder.WanDecoderStep(small_vae("wan2.1"), "framepipe" if exact else "fast")
        step.fused = True  # channels-last, as on a GPU
        with torch.no_grad():
            out, _ = step._conv(conv, x)
        torch.testing.assert_close(out, conv(x))
    return offered


def test_the_kernel_reads_weights_padded_to_its_column_tile(monkeypatch):
    """The decoder hands the kernel its weights with zero output channels up to the tile (96 -> 128),
    and asks for the true channel count back."""
    tile = WindowTile(256, 128, 32, 8, 4)
    assert [tile.weight_rows(n) for n in (3, 96, 128, 192, 384)] == [128, 128, 128, 256, 384]
    assert WindowTile(256, 96, 32, 8, 4).weight_rows(96) == 96  # two dots, 64 + 32: none padded
    handed = []

    def convolved(x, weight, bias, channels, way):
        handed.append((weight.shape[0], channels, way))
        return F.conv3d(x, weight[:channels], None if bias is None else bias[:channels])

    monkeypatch.setattr(decoder, "window_tiles", lambda conv, x: (tile,))
    monkeypatch.setattr(decoder, "window_convolved", convolved)
    monkeypatch.setattr(decoder, "fastest_way", lambda key, reference, run, ways, **_: ways[-1])
    conv = torch.nn.Conv3d(32, 96, 3)
    x = torch.randn(1, 32, 3, 6, 8).contiguous(memory_format=torch.channels_last_3d)
    step = decoder.WanDecoderStep(small_vae("wan2.1"), "fast")
    step.fused = True  # channels-last, as on a GPU
    with torch.no_grad():
        out, _ = step._conv(conv, x)
        torch.testing.assert_close(out, conv(x))
    assert handed == [(128, 96, tile)]


def test_two_dots_are_two_powers_of_two_from_16_to_128():
    assert [c for c in range(1, 400) if two_dots(c)] == [48, 80, 96, 144, 160, 192]


def test_the_fast_decoder_takes_a_tile_of_two_dots_outright(monkeypatch):
    """Where a tile of two dots applies, it is the fast decoder's one way (not timed against cuDNN's or
    the padded tiles: timed alone it loses, in a whole decode it wins); the exact decoder's ways stay
    cuDNN's."""
    two = WindowTile(256, 96, 32, 8, 4)
    monkeypatch.setattr(decoder, "two_dot_tile", lambda conv, x: two)
    monkeypatch.setattr(decoder, "window_tiles", lambda conv, x: (WindowTile(256, 128, 32, 8, 4),))
    monkeypatch.setattr(
        decoder, "window_convolved", lambda x, weight, bias, channels, way: F.conv3d(x, weight[:channels])
    )
    offered = _ways_offered(monkeypatch, torch.nn.Conv3d(32, 96, 3, bias=False), pick=lambda ways: ways[0])
    assert offered[False] == (two,) and two not in offered[True]
