"""framepipe's decoder step gives diffusers' decoder's bits: every chunk, both Wan versions, CPU and GPU."""

import copy

import pytest
import torch

from conftest import small_latents, small_vae
from framepipe import SettingsError
from framepipe import _decoder as decoder
from framepipe import _equivalence as equivalence
from framepipe import _fused as fused
from framepipe import _layouts as layouts
from framepipe import _resampling as resampling
from framepipe._equivalence import chosen_ways, same_bits, verified_equivalences
from framepipe._fused import norm_silu, norm_silu_is_exact
from framepipe._graphs import StepGraphs
from framepipe._source import causal_conv_count, decode_chunks


def _chunks(vae, z, decoder, **options):
    with torch.no_grad():
        return [c.clone() for c in decode_chunks(vae, z, decoder=decoder, **options)]


def _same_chunks(vae, z, **options):
    ours, theirs = _chunks(vae, z, "framepipe", **options), _chunks(vae, z, "diffusers", **options)
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert same_bits(a, b), f"chunk {i}: max difference {(a.float() - b.float()).abs().max().item()}"
    return ours


@pytest.mark.parametrize("frames, per_chunk, batch", [(1, 1, 1), (5, 1, 1), (4, 2, 2)])
def test_same_bits_as_diffusers_on_cpu(version, frames, per_chunk, batch):
    vae = small_vae(version)
    z = small_latents(version, batch=batch, frames=frames, height=6, width=10)
    chunks = _same_chunks(vae, z, latent_frames_per_chunk=per_chunk)
    with torch.no_grad():  # and diffusers' whole-video decode, chunk by chunk
        assert same_bits(torch.cat(chunks, 2), vae.decode(z).sample)


def test_diffusers_attention_hands_on_a_batch_channels_last(version):
    """Why a batch of videos runs PyTorch's ops (``fused_fits``): diffusers' attention block leaves one
    video's frame channel-first but a batch channels-last, and the norms after it reduce in another
    order on each."""
    attention = small_vae(version).decoder.mid_block.attentions[0]
    for batch in (1, 2):
        x = torch.randn(batch, attention.to_qkv.in_channels, 1, 4, 6)
        with torch.no_grad():
            out = attention(x)
        assert out.is_contiguous() is (batch == 1)
        assert out.is_contiguous(memory_format=torch.channels_last_3d) is (batch == 2)
    assert decoder.fused_fits(small_latents(version, height=8, width=16))
    assert not decoder.fused_fits(small_latents(version, batch=2, height=8, width=16))


def test_a_step_runs_framepipes_decoders_only():
    """The step is framepipe's decoders' (exact, fast, FP8): diffusers' forward, or a misspelt name, is refused."""
    vae = small_vae("wan2.1")
    steps = [decoder.WanDecoderStep(vae, name) for name in decoder.STEP_DECODERS]
    assert [(step.exact, step.fp8) for step in steps] == [(True, False), (False, False), (False, True)]
    for name in ("diffusers", "fp8"):
        with pytest.raises(ValueError, match="WanDecoderStep runs framepipe, fast, fast-fp8"):
            decoder.WanDecoderStep(vae, name)


def test_channels_last_steps_give_diffusers_bits_where_every_check_falls_back(version, monkeypatch):
    """The channels-last path's own steps (windows, resampling, the time convolution's cache rules)
    on the CPU, where no fused kernel runs and each convolution's check is made to fail."""
    monkeypatch.setattr(decoder, "fastest_way", lambda key, reference, run, ways, **_: None)
    vae = small_vae(version)
    z = small_latents(version, frames=5, height=6, width=10)
    step = decoder.WanDecoderStep(vae)
    step.fused = True  # the fused kernels' path, channels-last
    with torch.no_grad():
        ours = [c.clone() for c in decode_chunks(vae, z, step=step)]
    theirs = _chunks(vae, z, "diffusers")
    assert len(ours) == len(theirs) == 5 and all(same_bits(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_cache_serves_the_next_video_written_in_place(version, channels_last, monkeypatch):
    """One cache list through two videos: its buffers, once made, are written in place, and the second
    video's first chunk reads none of the first video's (the CUDA graphs rely on both)."""
    if channels_last:
        monkeypatch.setattr(decoder, "fastest_way", lambda key, reference, run, ways, **_: None)
    vae = small_vae(version)
    step = decoder.WanDecoderStep(vae)
    step.fused = channels_last or None
    cache = [None] * causal_conv_count(vae)
    made: list = []

    def shared(x, _cache, *, first_chunk):  # each video's decode through the one cache list
        out = step(x, cache, first_chunk=first_chunk)
        made.append(list(cache))
        return out

    for seed in (1, 2):
        z = small_latents(version, frames=3, height=6, width=10, seed=seed)
        ours, theirs = _chunks(vae, z, "framepipe", step=shared), _chunks(vae, z, "diffusers")
        assert len(ours) == len(theirs) == 3 and all(same_bits(a, b) for a, b in zip(ours, theirs, strict=True))
    assert all(a is b for later in made[2:] for a, b in zip(later, made[1], strict=True))  # written in place


def test_padded_convolution_outputs_flow_through_the_decoder(version, monkeypatch):
    """Every convolution computed with 4 zero output channels more (as cuDNN's tile asks for 96 and
    192 channels) and sliced: the norms, residual adds, resamplers and caches read the slices."""
    ways = []

    def padded_way(key, reference, run, offered, **_):
        ways.append(True in offered)
        return True

    made = []
    copies = decoder.conv_copies
    monkeypatch.setattr(
        decoder, "conv_copies", lambda conv, n: made.append(n == conv.out_channels + 4) or copies(conv, n)
    )
    monkeypatch.setattr(decoder, "padded_channels", lambda n: n + 4)
    monkeypatch.setattr(decoder, "fastest_way", padded_way)
    vae = small_vae(version)
    z = small_latents(version, frames=5, height=6, width=10)
    step = decoder.WanDecoderStep(vae)
    step.fused = True
    with torch.no_grad():
        ours = [c.clone() for c in decode_chunks(vae, z, step=step)]
    theirs = _chunks(vae, z, "diffusers")
    assert ways and all(ways)
    assert made and all(made)  # padded weights were made and used
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # the CPU's convolution may round otherwise


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("layout", ["channels-last", "padded slice", "channel-first"])
def test_subpixel_resampling_is_the_upsampled_convolution(pairs, layout):
    """The sub-pixel way (a 2x2 convolution of 4x the channels over the frames, weights summed) computes
    the nearest 2x upsampling + 3x3 convolution: equal in float64 up to rounding, for a resampler's
    frames and a time convolution's frame pairs, whatever x's layout."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
    c = 12 if pairs else 6
    x = torch.randn(2, c + 4, 3, 5, 7, generator=g, dtype=torch.float64)
    if layout != "channel-first":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x = x[:, :c] if layout == "padded slice" else x[:, 4:]
    with torch.no_grad():
        want = conv(resampling.upsampled(x, pairs, channels_last=False))
        got = resampling.subpixel_conv(conv, x, pairs)
    assert got.shape == want.shape == (2 * 3 * (2 if pairs else 1), 5, 10, 14)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("layout", ["channels-last", "padded slice", "channel-first"])
@pytest.mark.parametrize("out_layout", ["channels-last", "channel-first"])
def test_frames_upsampled_on_the_gpu_equal_torchs_strided_copy(pairs, layout, out_layout):
    """The frames upsampled on CUDA (a Triton kernel) hold exactly the values torch's strided copy puts
    there (on the CPU), in the layout asked for."""
    c = 12 if pairs else 6
    x = torch.randn(2, c + 4, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    if layout != "channel-first":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x = x[:, :c] if layout == "padded slice" else x[:, 4:]
    channels_last = out_layout == "channels-last"
    got = resampling.upsampled(x.cuda(), pairs, channels_last)
    want = resampling.upsampled(x, pairs, channels_last)
    assert same_bits(got.cpu(), want) and got.stride() == want.stride()


@pytest.mark.parametrize(
    "channels, factors",
    [((8, 8), (2, 2)), ((8, 4), (2, 2)), ((8, 4), (1, 2)), ((4, 8), (2, 2)), ((6, 3), (2, 2)), ((4, 3), (1, 2))],
)
@pytest.mark.parametrize("layout", ["channels-last", "channel-first"])
@pytest.mark.parametrize("first_chunk", [False, True])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
def test_avg_shortcut_added_through_a_view_is_diffusers_sum(channels, factors, layout, first_chunk, device):
    """Wan 2.2's ``DupUp3D`` shortcut read as a strided view and added in one step (on CUDA, in a Triton
    kernel): diffusers' bits, in x's layout; a mapping that is no view (4 -> 3 channels: repeats of 3
    over blocks of 4; 4 -> 8: one input channel for two output channels' blocks) is refused."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import DupUp3D

    module = DupUp3D(*channels, factor_t=factors[0], factor_s=factors[1])
    g = torch.Generator().manual_seed(1)
    t = 1 if first_chunk else 3
    shortcut = torch.randn(2, channels[0], t, 5, 7, generator=g, dtype=torch.bfloat16).to(device)
    want_shape = module(shortcut, first_chunk=first_chunk).shape
    x = torch.randn(want_shape, generator=g, dtype=torch.bfloat16).to(device)
    if layout == "channels-last":
        shortcut, x = (y.contiguous(memory_format=torch.channels_last_3d) for y in (shortcut, x))
    got = resampling.shortcut_added(module, x, shortcut, first_chunk)
    if channels in ((4, 3), (4, 8)):
        assert resampling.shortcut_steps(module) is None and got is None
        return
    assert same_bits(got, x + module(shortcut.contiguous(), first_chunk=first_chunk))
    assert got.stride() == x.stride()


def test_fast_decoder_with_subpixel_resamplers_stays_close(version, monkeypatch):
    """The fast decoder's resamplers computed sub-pixel, through the whole decoder (its caches, the time
    convolutions' pairs): within float32 rounding of diffusers' decode."""
    chosen = []

    def choose(key, reference, run, ways, **_):
        chosen.append(key[0])
        return "subpixel" if key[0] == "resample" else ways[0]

    monkeypatch.setattr(decoder, "fastest_way", choose)
    vae = small_vae(version)
    z = small_latents(version, frames=5, height=6, width=10)
    step = decoder.WanDecoderStep(vae, "fast")
    step.fused = True
    with torch.no_grad():
        ours = [c.clone() for c in decode_chunks(vae, z, step=step)]
    theirs = _chunks(vae, z, "diffusers")
    assert "resample" in chosen
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explicit_attention_is_diffusers_attention_block(monkeypatch, device, dtype):
    """The fast decoder's explicit attention (queries in blocks, float32 scores and softmax) against
    diffusers' ``WanAttentionBlock`` computed in float64: no further from it than diffusers' own block in
    the same dtype plus one rounding step (on CUDA both share the TF32 convolutions around it)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock

    from framepipe import _attention

    monkeypatch.setattr(_attention, "ROWS", 7)  # several blocks of queries, the last one short
    torch.manual_seed(0)
    block = WanAttentionBlock(32).eval().to(device, dtype)
    x = torch.randn(1, 32, 2, 6, 10, device=device).to(dtype)
    with torch.no_grad():
        theirs, ours = block(x), _attention.explicit_attention(block, x)
        want = copy.deepcopy(block).double()(x.double())
    ours_error, theirs_error = ((y.double() - want).abs().max().item() for y in (ours, theirs))
    step = torch.finfo(dtype).eps * want.abs().max().item()
    assert ours_error <= theirs_error + step, (ours_error, theirs_error, step)


def test_weight_copies_are_kept_until_the_parameters_change():
    """Channels-last weight copies serve every video of a stream, and are made again after an in-place
    write, a load_state_dict or a move to another dtype."""
    conv = torch.nn.Conv3d(4, 6, 3)
    first = layouts.conv_copies(conv, 6)
    assert layouts.conv_copies(conv, 6) is first
    assert first[0].is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(first[0], conv.weight)
    with torch.no_grad():
        conv.weight.mul_(2)
    second = layouts.conv_copies(conv, 6)
    assert second is not first and torch.equal(second[0], conv.weight)
    conv.load_state_dict({"weight": torch.ones_like(conv.weight), "bias": torch.zeros(6)})
    third = layouts.conv_copies(conv, 6)
    assert torch.equal(third[0], torch.ones_like(conv.weight)) and torch.equal(third[1], torch.zeros(6))
    conv.to(torch.float64)
    assert layouts.conv_copies(conv, 6)[0].dtype == torch.float64
    wide = torch.nn.Conv3d(2, 96, 1)
    weight, bias = layouts.conv_copies(wide, 128)  # zero output channels up to cuDNN's tile
    assert weight.shape[0] == bias.shape[0] == 128 and torch.equal(weight[:96], wide.weight)
    assert not weight[96:].any() and not bias[96:].any() and torch.equal(bias[:96], wide.bias)


def test_pixel_stride_tells_padded_channels_last_slices():
    whole = torch.empty(1, 128, 2, 3, 5, memory_format=torch.channels_last_3d)
    assert layouts.pixel_stride(whole) == 128
    assert layouts.pixel_stride(whole[:, :96]) == 128
    assert layouts.pixel_stride(whole[:, :, 1:]) == 128  # whole frames dropped: still uniform
    assert layouts.pixel_stride(whole[:, :, :, 1:]) is None  # rows dropped: pixels not evenly spaced
    assert layouts.pixel_stride(torch.empty(1, 96, 2, 3, 5)) is None  # channel-first
    assert layouts.padded_channels(96) == 128 and layouts.padded_channels(384) == 384
    assert layouts.padded_channels(3) == 3 and layouts.padded_channels(192) == 256


def test_fastest_way_keeps_the_bits_unless_told_not_to(monkeypatch):
    monkeypatch.setattr(equivalence, "_WAYS", {})
    monkeypatch.setattr(equivalence, "_VERIFIED", {})
    want = torch.tensor([1.0, 2.0])
    results = {"slow": want.clone(), "fast": want.clone(), "wrong": want + 1e-3}
    timing = {"slow": 2.0, "fast": 1.0, "wrong": 0.5}
    monkeypatch.setattr(equivalence, "seconds", lambda run, device: timing[run.args[0]])
    cpu = torch.device("cpu")

    def way(key, ways, **options):
        return equivalence.fastest_way(key, lambda: want, results.get, ways, device=cpu, **options)

    ways = list(results)
    assert way(("t", 1), ways) == "fast"
    assert equivalence.verified_equivalences()[("t", 1)]
    assert way(("t", 2), ways, exact=False) == "wrong"
    assert way(("t", 3), ["wrong"]) is None
    assert not equivalence.verified_equivalences()[("t", 3)]
    assert way(("t", 1), []) == "fast"  # chosen once
    timing["fast"] = 1.9  # not clearly faster than the first way: the first is kept
    assert way(("t", 4), ways) == "slow"


H200 = (132, 2048)  # multiprocessors, threads a multiprocessor


@pytest.mark.parametrize(
    "shape, split",
    [
        ((1, 96, 4, 480, 832), (4, 1)),  # 4 outputs a thread, 32 x 4 threads: 4 split each pixel's channels
        ((1, 384, 1, 241, 417), (16, 1)),  # an odd pixel count: 1 output a thread, 32 x 16 threads
        ((2, 384, 1, 8, 12), (4, 1)),  # block.x spans all 2 x 96 outputs, not one video's
        ((1, 12, 1, 30, 52), (1, 1)),  # too few channels to split: each thread adds them all
        ((1, 384, 1, 4, 6), (32, 1)),  # 24 pixels: 32 threads share each pixel's channels
        # 256 channels a thread: PyTorch shares them over thread blocks too, enough to fill the card
        # (2112 blocks of 128 threads) but 16 channels a thread at least
        ((1, 1024, 1, 30, 52), (4, 16)),  # 13 blocks of outputs
        ((1, 1024, 2, 90, 160), (4, 10)),  # 225
        ((1, 1024, 4, 120, 208), (4, 3)),  # 780
        ((1, 1024, 8, 240, 416), (4, 1)),  # 6240 blocks of outputs fill the card: no global reduction
    ],
)
def test_reduction_split_follows_pytorchs_launch_rule(shape, split):
    assert fused.reduction_split(shape, torch.empty(shape, device="meta").stride(), H200) == split


@pytest.mark.parametrize(
    "split, combines",
    [((4, 1), True), ((16, 1), True), ((32, 1), False), ((4, 16), True), ((4, 10), True), ((2, 16), False),
     ((8, 17), False)],
)  # fmt: skip
def test_the_kernel_combines_up_to_16_blocks_of_its_thread_splits(split, combines):
    assert fused.kernel_combines(fused.Split(*split)) == combines


def test_a_split_wider_than_the_kernels_tree_runs_pytorchs_ops(monkeypatch):
    """``norm_split`` turns down a split its kernel cannot combine (32 threads a pixel) before building it
    (which it could not on the CPU)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    monkeypatch.setattr(fused, "device_limits", lambda device: H200)

    assert 32 not in fused.KERNEL_SPLITS
    assert fused.norm_split(torch.randn(1, 384, 1, 4, 6), WanRMS_norm(384, images=False)) is None


def test_unknown_decoder_is_a_settings_error():
    with pytest.raises(SettingsError, match=r"Invalid decoder \('fastest'\)"):
        next(decode_chunks(small_vae("wan2.1"), small_latents("wan2.1"), decoder="fastest"))


def test_no_fused_kernel_on_the_cpu():
    assert not norm_silu_is_exact(torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_pytorch_norms_are_those_diffusers_norm_divides_by(device, dtype, with_bias):
    """``pytorch_norms``: the float32 norms of x (+ bias, rounded first) that ``WanRMS_norm`` computes,
    from channels-last x (on CUDA its float32 copy made by a Triton kernel)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 300, 2, 3, 5, generator=g).to(device, dtype)
    bias = torch.randn(300, generator=g).to(device, dtype) if with_bias else None
    want = (x if bias is None else x + bias[:, None, None, None]).float().norm(2.0, 1, keepdim=True)
    got = fused.pytorch_norms(x.contiguous(memory_format=torch.channels_last_3d), bias)
    assert got.dtype == torch.float32 and got.shape == (2, 1, 2, 3, 5) and got.is_contiguous()
    assert same_bits(got, want)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape, padded", [((2, 300, 3, 5, 7), 300), ((2, 96, 3, 5, 7), 128), ((4, 200, 9, 11), 200)])
def test_a_bias_added_on_the_gpu_is_pytorchs_add(dtype, shape, padded):
    """``added`` on a channels-last CUDA tensor (a Triton kernel; a padded convolution's first channels
    too) gives ``add_``'s bits and leaves the padding alone."""
    g = torch.Generator().manual_seed(0)
    whole = torch.randn(shape[0], padded, *shape[2:], generator=g).to("cuda", dtype)
    whole = whole.contiguous(memory_format=torch.channels_last_3d if len(shape) == 5 else torch.channels_last)
    bias = torch.randn(padded, generator=g).to("cuda", dtype)
    want = whole.clone()
    want[:, : shape[1]].add_(bias[: shape[1]].reshape(-1, *(1,) * (len(shape) - 2)))
    got = layouts.added(whole[:, : shape[1]], bias[: shape[1]])
    assert got.data_ptr() == whole.data_ptr() and same_bits(whole, want)


def test_both_norm_paths_run_pytorchs_ops_where_no_kernel_can():
    """On the CPU the exact and the fast norm + SiLU both give PyTorch's bits (bias added first)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    norm, x, bias = WanRMS_norm(8, images=False), torch.randn(1, 8, 2, 3, 4), torch.randn(8)
    want = torch.nn.functional.silu(norm(x + bias[:, None, None, None]))
    for kernel in (fused.norm_silu, fused.norm_silu_fast):
        out = torch.empty_like(x)
        kernel(x, norm, out, bias)
        assert same_bits(out, want), kernel.__name__


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_bits_as_diffusers_on_cuda(version, dtype):
    assert norm_silu_is_exact(torch.device("cuda"), dtype), "the fused norm + SiLU differs from PyTorch's"
    vae = small_vae(version).to("cuda", dtype)
    z = small_latents(version, frames=6, height=12, width=20).to("cuda", dtype)
    _same_chunks(vae, z)  # the first run verifies each norm's and convolution's shape, the second uses what held
    _same_chunks(vae, z)
    checked = verified_equivalences()
    for kind in ("norm", "bias_residual"):  # the fused kernels ran somewhere
        assert any(v for k, v in checked.items() if k[0] == kind and dtype in k), kind
    assert any(k[0] == "conv" and len(k[1]) == 4 and k[3] == dtype for k in checked)  # a resampler's, here


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, height, width", [(1, 4, 6), (2, 12, 20)])
def test_small_frames_and_batches_take_pytorchs_ops_on_cuda(version, dtype, batch, height, width):
    """Frames under 128 latent pixels, or a batch of two videos, run PyTorch's ops (``fused_fits``)
    with diffusers' bits."""
    vae = small_vae(version).to("cuda", dtype)
    z = small_latents(version, batch=batch, frames=4, height=height, width=width).to("cuda", dtype)
    step = decoder.WanDecoderStep(vae)
    with torch.no_grad():
        ours = [c.clone() for c in decode_chunks(vae, z, step=step)]
    assert step.fused is False
    theirs = _chunks(vae, z, "diffusers")
    assert all(same_bits(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name", ["framepipe", "fast"])
def test_first_use_checks_are_made_before_the_first_chunk(version, name, monkeypatch):
    """A decode at a new frame size makes every first-use check and way choice before its first chunk
    (``WanDecoderStep.run_checks``), where they hold no video's cache on top: none during the chunks."""
    vae = small_vae(version).to("cuda", torch.bfloat16)
    z = small_latents(version, frames=3, height=8, width=18).to("cuda", torch.bfloat16)  # a size no other test uses
    made = lambda: (len(verified_equivalences()), len(chosen_ways()))  # noqa: E731
    before, after_checks = made(), []
    run_checks = decoder.WanDecoderStep.run_checks

    def spied(self, x):
        run_checks(self, x)
        after_checks.append(made())

    monkeypatch.setattr(decoder.WanDecoderStep, "run_checks", spied)
    with torch.no_grad():
        for _ in decode_chunks(vae, z, decoder=name):
            assert made() == after_checks[0]
    assert after_checks[0][1] > before[1]  # the ways were chosen there


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["frame-major", "channels-last"])
def test_fused_norm_silu_on_large_strided_inputs(dtype, layout):
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    g = torch.Generator(device="cuda").manual_seed(1)
    norm = WanRMS_norm(192, images=False).to("cuda", dtype)
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(norm.gamma.shape, generator=g, device="cuda"))
        x = (torch.randn(1, 4, 192, 60, 104, generator=g, device="cuda") * 3).to(dtype).permute(0, 2, 1, 3, 4)
        want = torch.nn.functional.silu(norm(x))
        window = torch.zeros(1, 192, 6, 62, 106, device="cuda", dtype=dtype)
        if layout == "channels-last":
            x = x.contiguous(memory_format=torch.channels_last_3d)
            window = window.contiguous(memory_format=torch.channels_last_3d)
        norm_silu(x, norm, window[:, :, 2:, 1:61, 1:105])
    assert same_bits(window[:, :, 2:, 1:61, 1:105], want)
    assert verified_equivalences()[("norm", tuple(x.shape), dtype, x.device, False)]  # the kernel ran, no fallback
    assert window[:, :, :2].abs().sum() == 0 and window[:, :, :, 0].abs().sum() == 0  # the border untouched


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norm_silu_keeps_pytorchs_bits_for_subnormal_values_and_huge_norms(dtype):
    """Tiny and subnormal values (their norms clamped to eps) and a norm far above 2^32 get diffusers'
    bits too: the kernel divides as IEEE division does and flushes nothing to zero."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    g = torch.Generator(device="cuda").manual_seed(3)
    norm = WanRMS_norm(96, images=False).to("cuda", dtype)
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(norm.gamma.shape, generator=g, device="cuda"))
        x = torch.randn(1, 96, 2, 20, 36, generator=g, device="cuda")
        x[0, :, 0, 3, :5] *= 1e-30  # whole pixels of tiny values
        x[0, :, 1, 16:20] *= 1e-39  # subnormal ones: norms clamped to 1e-12
        x[0, 7, 1, 10, 2] = 3e-41  # a subnormal float32 (in bf16: 0 or subnormal)
        x[0, 9, 1, 11, 30] = -(2.0**-70)
        x[0, :, 1, 15, 7] *= 1e10  # a norm far above 2^32
        x = x.to(dtype)
        want = torch.nn.functional.silu(norm(x))
        got = torch.empty_like(x, memory_format=torch.channels_last_3d)
        norm_silu(x.contiguous(memory_format=torch.channels_last_3d), norm, got)
    assert fused.norm_split(x, norm, None) is not None  # the kernel's own norm
    assert same_bits(got, want)


def wide_norm_case(dtype: torch.dtype, with_bias: bool, frames: int, height: int, width: int):
    """A norm of 1024 channels (Wan 2.2's widest) on CUDA, its input (channel-first), a bias or None and
    diffusers' ``silu(norm(x + bias))``."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    g = torch.Generator(device="cuda").manual_seed(2)
    norm = WanRMS_norm(1024, images=False).to("cuda", dtype)
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(norm.gamma.shape, generator=g, device="cuda"))
        x = (torch.randn(1, 1024, frames, height, width, generator=g, device="cuda") * 3).to(dtype)
        bias = torch.randn(1024, generator=g, device="cuda").to(dtype) if with_bias else None
        want = torch.nn.functional.silu(norm(x if bias is None else x + bias[:, None, None, None]))
    return norm, x, bias, want


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("frames, height, width", [(1, 30, 52), (4, 120, 208)])
def test_fused_norm_silu_over_channels_shared_among_thread_blocks(dtype, with_bias, frames, height, width):
    """Over 1024 channels (Wan 2.2), where PyTorch's reduction shares each pixel's channels out among
    several thread blocks (16 and 3 on an H200 at these sizes), the kernel repeats that order:
    diffusers' bits, bias added first."""
    norm, x, bias, want = wide_norm_case(dtype, with_bias, frames, height, width)
    got = torch.empty_like(x, memory_format=torch.channels_last_3d)
    with torch.no_grad():
        norm_silu(x.contiguous(memory_format=torch.channels_last_3d), norm, got, bias)
    split = fused.norm_split(x, norm, bias)
    assert split is not None and split.blocks > 1  # the kernel's own norm, not PyTorch's handed to it
    assert same_bits(got, want)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_norm_silu_handed_pytorchs_norms_where_it_cannot_repeat_the_split(dtype, with_bias, monkeypatch):
    """Where the kernel does not combine PyTorch's split (here: made to combine one block only), it is
    handed PyTorch's own norms and still gives diffusers' bits, bias added first."""
    monkeypatch.setattr(fused, "KERNEL_BLOCKS", 1)
    monkeypatch.setattr(fused, "_SPLITS", {})
    norm, x, bias, want = wide_norm_case(dtype, with_bias, 2, 60, 104)
    got = torch.empty_like(x, memory_format=torch.channels_last_3d)
    with torch.no_grad():
        norm_silu(x.contiguous(memory_format=torch.channels_last_3d), norm, got, bias)
    assert fused.norm_split(x, norm, bias) is None
    assert verified_equivalences()[("norm given", tuple(x.shape), dtype, x.device, with_bias)]
    assert same_bits(got, want)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels, layout", [(96, "channels-last"), (384, "frame-major"), (1024, "channels-last")])
def test_fast_norm_silu_is_within_a_rounding_of_float64(dtype, channels, layout):
    """The fast decoder's norm kernel (its own summation order, float32, bias added first) against the
    same norm in float64: within one rounding of the dtype (bfloat16), a few (float32), any strides."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    g = torch.Generator(device="cuda").manual_seed(2)
    norm = WanRMS_norm(channels, images=False).to("cuda", dtype)
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(norm.gamma.shape, generator=g, device="cuda"))
        x = (torch.randn(1, 3, channels, 20, 36, generator=g, device="cuda") * 3).to(dtype).permute(0, 2, 1, 3, 4)
        bias = torch.randn(channels, generator=g, device="cuda").to(dtype)
        y = x.double() + bias.double()[:, None, None, None]
        want = torch.nn.functional.silu(torch.nn.functional.normalize(y, dim=1) * norm.scale * norm.gamma.double())
        window = torch.zeros(1, channels, 5, 22, 38, device="cuda", dtype=dtype)
        if layout == "channels-last":
            x = x.contiguous(memory_format=torch.channels_last_3d)
            window = window.contiguous(memory_format=torch.channels_last_3d)
        fused.norm_silu_fast(x, norm, window[:, :, 2:, 1:21, 1:37], bias)
    got = window[:, :, 2:, 1:21, 1:37].double()
    steps = (got - want).abs() / (want.abs().clamp_min(1.0) * torch.finfo(dtype).eps)
    assert steps.max() <= (1.0 if dtype == torch.bfloat16 else 16.0)
    assert window[:, :, :2].abs().sum() == 0 and window[:, :, :, 0].abs().sum() == 0  # the border untouched


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fast_decoder_stays_close_to_diffusers_on_cuda(version, dtype):
    """The fast decoder (its norm kernel, padded convolutions, sub-pixel resamplers) through whole
    decodes on the GPU: within a few roundings of diffusers' decoder in the same dtype."""
    vae = small_vae(version).to("cuda", dtype)
    z = small_latents(version, frames=5, height=12, width=20).to("cuda", dtype)
    ours, theirs = _chunks(vae, z, "fast"), _chunks(vae, z, "diffusers")
    worst = max((a.float() - b.float()).abs().max().item() for a, b in zip(ours, theirs, strict=True))
    assert worst <= (0.25 if dtype == torch.bfloat16 else 0.02)  # measured on an H200: 0.094, 0.005 at most


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_96_channel_convolution_and_residual_keep_their_bits_padded_or_not(dtype):
    conv = torch.nn.Conv3d(96, 96, 3).to("cuda", dtype)
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(1, 96, 6, 34, 66, generator=g, device="cuda").to(dtype)
    h = torch.randn(1, 96, 4, 32, 64, generator=g, device="cuda").to(dtype)
    exact, fast = decoder.WanDecoderStep(small_vae("wan2.1")), decoder.WanDecoderStep(small_vae("wan2.1"), "fast")
    exact.fused = fast.fused = True
    with torch.no_grad():
        want = conv(x).add_(h)  # diffusers: the convolution (bias added by PyTorch), then the shortcut
        out, bias = exact._conv(conv, x.contiguous(memory_format=torch.channels_last_3d), defer_bias=True)
        got = fused.add_bias_residual(out, bias, h.contiguous(memory_format=torch.channels_last_3d))
        quick = layouts.added(*fast._conv(conv, x.contiguous(memory_format=torch.channels_last_3d))).add_(h)
    assert same_bits(got, want)
    torch.testing.assert_close(quick, want, rtol=2e-2, atol=2e-2)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pairs", [False, True])
def test_subpixel_resampling_on_cuda(dtype, pairs):
    """On CUDA the sub-pixel output is put in place by a Triton kernel: the bits of the CPU's strided
    add, and close to the upsampled convolution."""
    g = torch.Generator(device="cuda").manual_seed(3)
    conv = torch.nn.Conv2d(96, 48, 3, padding=1).to("cuda", dtype)
    c = 192 if pairs else 96
    x = torch.randn(1, c, 3, 20, 36, generator=g, device="cuda").to(dtype)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        got = resampling.subpixel_conv(conv, x, pairs)
        weight, bias = resampling.subpixel_weights(conv)
        y = torch.nn.functional.conv2d(resampling.resampler_frames(x, pairs), weight, None, padding=1)
        on_cpu = torch.empty_like(got, device="cpu")
        resampling.place(y.cpu(), bias.cpu(), on_cpu)
        want = conv(resampling.upsampled(x, pairs, channels_last=True))
    assert same_bits(got.cpu(), on_cpu)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=5e-2 if dtype == torch.bfloat16 else 1e-2)  # TF32


@pytest.mark.needs_cuda
def test_weight_copies_made_on_one_stream_are_ready_on_another():
    """Kept weight copies serve decodes on every stream: made on one stream while it is busy, they
    are finished when another stream reads them at once."""
    conv = torch.nn.Conv3d(96, 96, 3).cuda()
    busy, other = torch.cuda.Stream(), torch.cuda.Stream()
    big = torch.randn(4096, 4096, device="cuda")
    with torch.cuda.stream(busy):
        for _ in range(20):  # keeps this stream busy for a while
            big = big @ big / 64
        weight, bias = layouts.conv_copies(conv, 128)
    with torch.cuda.stream(other):
        got = weight[:96].clone(), bias[:96].clone()
    torch.cuda.synchronize()
    assert torch.equal(got[0], conv.weight) and torch.equal(got[1], conv.bias)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["framepipe", "fast"])
def test_cuda_graphs_give_the_eager_bits_video_after_video(version, dtype, name):
    """A device worker's kept graphs: three videos of one size (the first runs eagerly and captures,
    the next replay), then another size (captured again), then changed weights (captured again),
    two latent frames a chunk; every chunk the eager decoder's bits."""
    vae = small_vae(version).to("cuda", dtype)
    graphs = StepGraphs()

    def check(z, **options):
        want = _chunks(vae, z, name, **options)
        got = _chunks(vae, z, name, graphs=graphs, **options)
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert same_bits(a, b), f"chunk {i}: max difference {(a.float() - b.float()).abs().max().item()}"

    for seed in (1, 2, 3):
        check(small_latents(version, frames=5, height=12, width=20, seed=seed).to("cuda", dtype))
    (kept,) = graphs.kept.values()
    assert set(kept.graphs) == {True, False} and not kept.failed  # both kinds captured, replayed
    check(small_latents(version, frames=4, height=16, width=24, seed=4).to("cuda", dtype), latent_frames_per_chunk=2)
    (again,) = graphs.kept.values()
    assert again is not kept and again.shape[-2:] == (16, 24)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.5)
    check(small_latents(version, frames=4, height=16, width=24, seed=5).to("cuda", dtype))
    assert next(iter(graphs.kept.values())) is not again
    graphs.close()
    assert not graphs.kept
