"""The fused kernels' Python side: when the Triton kernels of ``_exact_kernels.py`` give PyTorch's bits
(each shape checked once on random values), and their calls with PyTorch's ops in their place where
not (Note [Exact fusion])."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._equivalence import checked, probe, record, same_bits, verified
from ._layouts import CHANNELS_LAST, added, channel_first, kernels_take, pixel_stride, silu_into
from ._optional import exact_kernel, require

# Note [Exact fusion]
# ~~~~~~~~~~~~~~~~~~~
# diffusers computes ``silu(F.normalize(x, dim=1) * scale * gamma + 0.0)`` as several kernels, each
# rounding its result to the tensor's dtype (bfloat16: the norm in float32, then rounded). The fused
# kernel (``_exact_kernels.py``) adds each pixel's squares in the order of PyTorch's reduction
# kernel for a reduction over a channel dimension that is not the innermost one: ``threads`` threads
# of a thread block, thread y taking channels y, y + threads, ... into four accumulators in turn with
# fused multiply-adds, then combined in a fixed tree. Where PyTorch also shares each pixel's channels
# out over several thread blocks (Wan 2.2's 1024 channels), block k's threads start at channel
# k * threads and step over all blocks' threads, and the last block to finish adds up the blocks' sums
# in a fixed order: the kernel repeats that too. PyTorch picks the split from the channel count, the
# number of pixels and the card's multiprocessors (``reduction_split`` repeats that choice), and each
# shape's split is checked once on random values against PyTorch on channel-first inputs: the
# contiguous layout and the frame-major one a resampler leaves (a shape where the two would differ
# runs PyTorch's ops).
# Every other step is repeated in the same order with the same roundings: IEEE division (div_rn),
# no multiply-add contraction (enable_fp_fusion=False), libdevice's expf as PyTorch's CUDA build calls
# it, bfloat16 rounding after each op where PyTorch stores a bfloat16 tensor. The kernel reads any
# strides, so the activations can live channels-last (NDHWC) and still give channel-first bits.
# PyTorch adds a convolution's bias after cuDNN's convolution, in an ``add_`` of its own (float32
# arithmetic, then rounded); a kernel that reads the convolution's output can add it first with the
# same rounding: the norm kernel (``HAS_BIAS``) and the bias + residual kernel. Whether the bias-less
# channels-last convolution plus that ``add_`` gives the convolution's bits is checked with it.
# Where the kernel cannot repeat PyTorch's split, PyTorch computes the norms itself, on a float32
# channel-first copy as diffusers' norm makes one, and the kernel does the rest (``HAS_NORM``): two
# passes more than the whole kernel, five fewer than PyTorch's ops.


class Split(NamedTuple):
    """How PyTorch's CUDA reduction kernel shares out each output's channels: among ``threads`` of a
    thread block and ``blocks`` thread blocks (a global reduction where more than one)."""

    threads: int
    blocks: int = 1


KERNEL_SPLITS = (1, 2, 4, 8, 16)  # the thread splits whose partial sums the fused kernel's tree combines
KERNEL_BLOCKS = 16  # the most thread blocks a pixel whose partial sums it combines
_SPLITS: dict[tuple, Split | None] = {}  # a norm's shape -> the split that gives PyTorch's bits, or None
_EXACT: dict[tuple, bool] = {}  # (device, dtype) -> whether the fused kernel runs there with PyTorch's bits


def reduction_split(shape: tuple[int, ...], strides: tuple[int, ...], limits: tuple[int, int]) -> Split:
    """The split of PyTorch's CUDA reduction kernel when it reduces dim 1 of a tensor of ``shape`` and
    ``strides`` (w innermost, freshly allocated) on a card of ``limits`` = (multiprocessors, threads a
    multiprocessor, ``device_limits``): ``setReduceConfig`` for a reduction over a dimension that is not
    the innermost one."""
    c = shape[1]
    outputs = math.prod(shape) // c
    # TensorIterator drops size-1 dimensions and merges the output dimensions that follow each other
    dims = sorted((strides[i], shape[i]) for i in (0, 2, 3, 4) if shape[i] > 1)
    inner, others = 1, []
    for stride, n in dims:
        if stride == inner:
            inner *= n
        else:
            others.append(stride)
    vec = 4  # outputs per thread: the largest of 4, 2, 1 that divides the inner size and every stride
    for n in (inner, *others, strides[1]):
        while n % vec:
            vec //= 2
    threads = 512 // vec
    along = _floor_pow2(outputs // vec) if outputs // vec < threads else threads
    height = min(_floor_pow2(c) if c < threads else threads, threads // min(along, 32))
    width = min(along, threads // height)  # block.x over the outputs
    if c < min(height * 16, 256):
        return Split(1)
    values = -(-c // height)  # channels a thread
    multiprocessors, per_multiprocessor = limits
    target = multiprocessors * (per_multiprocessor // (width * height))  # blocks that fill the card
    grid = -(-(outputs // vec) // width)
    if values < 256 or grid > target:
        return Split(height)
    return Split(height, max(min(-(-target // grid), -(-values // 16)), -(-values // 256)))


def kernel_combines(split: Split) -> bool:
    """Whether the fused kernel adds up partial sums shared out as ``split`` shares them."""
    blocks = 1 << (split.blocks - 1).bit_length()
    return split.threads in KERNEL_SPLITS and split.blocks <= KERNEL_BLOCKS and blocks <= 4 * split.threads


def device_limits(device: torch.device) -> tuple[int, int]:
    """(multiprocessors, threads a multiprocessor) of a CUDA device, as PyTorch's reductions size their grid."""
    properties = torch.cuda.get_device_properties(device)
    return properties.multi_processor_count, properties.max_threads_per_multi_processor


def _floor_pow2(n: int) -> int:
    return 1 << max(n, 1).bit_length() - 1


def norm_fusable(x: torch.Tensor, norm) -> bool:
    """Whether the kernels can compute ``norm`` (Wan's RMS norm: no bias, channels first) over x."""
    return (
        kernels_take(x, norm.gamma)
        and isinstance(norm.bias, float)
        and norm.bias == 0.0
        and getattr(norm, "channel_first", True)
    )


def norm_split(x: torch.Tensor, norm, bias: torch.Tensor | None = None) -> Split | None:
    """The split with which the fused kernel gives PyTorch's bits for ``norm`` over x's shape
    (with ``bias`` added first, as PyTorch adds a convolution's), whether x is contiguous or
    frame-major (as after a resampler) in diffusers' decoder; None where those differ, where the
    kernel cannot combine the split (``kernel_combines``), or where the check on random values failed.
    Checked once per shape."""
    key = ("norm", tuple(x.shape), x.dtype, x.device, bias is not None)
    if key not in _SPLITS:
        frame_major = torch.empty(x.shape[:1] + x.shape[2:3] + x.shape[1:2] + x.shape[3:], device="meta")
        layouts = (torch.empty(x.shape, device="meta").stride(), frame_major.transpose(1, 2).stride())
        limits = device_limits(x.device)
        splits = {reduction_split(tuple(x.shape), s, limits) for s in layouts}
        found = splits.pop() if len(splits) == 1 else None
        fused = exact_kernel("norm_silu")
        if found is not None and (fused is None or not kernel_combines(found)):
            found = None
        if found is not None:

            def kernel() -> torch.Tensor:
                sample = probe(x)
                got = torch.empty_like(sample)
                fused(sample, bias, norm.gamma.reshape(-1), float(norm.scale), got, found)
                return got

            if not pytorch_gives(kernel, x, norm, bias):
                found = None
        _SPLITS[key] = found
        record(key, found is not None)
    return _SPLITS[key]


def norm_silu(x: torch.Tensor, norm, out: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Write ``silu(norm(x + bias))`` into ``out`` (any strides) for a channel-first ``WanRMS_norm``
    (``bias``: a convolution's, not yet added to x; or None): the fused kernel where it gives PyTorch's
    bits for x's shape, else PyTorch's ops on channel-first x."""
    fusable = norm_fusable(x, norm)
    split = norm_split(x, norm, bias) if fusable else None
    if split is None and not (fusable and norms_given_exact(x, norm, bias)):
        _norm_silu_ops(x, norm, out, bias)
        return
    norms = pytorch_norms(x, bias) if split is None else None
    exact_kernel("norm_silu")(x, bias, norm.gamma.reshape(-1), float(norm.scale), out, split or Split(1), norms)


def pytorch_norms(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 norms over channels [B, 1, T, H, W] that diffusers' ``WanRMS_norm`` has PyTorch compute
    for x (+ ``bias``, added as PyTorch adds a convolution's): of a float32 channel-first copy, made in
    one pass (a Triton kernel: PyTorch's strided copy is slower)."""
    if kernels_take(x, bias) and (widened := exact_kernel("widened")) is not None:
        return widened(x, bias).norm(2.0, 1, keepdim=True)
    wide = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    wide.copy_(x if bias is None else torch.add(x, bias.reshape(-1, 1, 1, 1)))
    return wide.norm(2.0, 1, keepdim=True)


def norms_given_exact(x: torch.Tensor, norm, bias: torch.Tensor | None = None) -> bool:
    """Whether the kernel handed ``pytorch_norms`` gives PyTorch's bits for ``norm`` over x's shape, x
    contiguous or frame-major in diffusers' decoder (checked once per shape on random values)."""
    fused = exact_kernel("norm_silu")
    if fused is None:
        return False

    def kernel() -> torch.Tensor:
        sample = probe(x).contiguous(memory_format=CHANNELS_LAST)
        got = torch.empty_like(sample)
        fused(sample, bias, norm.gamma.reshape(-1), float(norm.scale), got, Split(1), pytorch_norms(sample, bias))
        return got

    key = ("norm given", tuple(x.shape), x.dtype, x.device, bias is not None)
    return checked(key, lambda: pytorch_gives(kernel, x, norm, bias))


def pytorch_gives(kernel: Callable[[], torch.Tensor], x: torch.Tensor, norm, bias: torch.Tensor | None) -> bool:
    """Whether ``kernel()`` (the fused kernel run on ``probe(x)``) gives the bits of diffusers'
    ``silu(norm(probe(x) + bias))`` on both layouts its decoder feeds its norms: contiguous, and
    frame-major (as a resampler leaves it). One layout at a time, PyTorch's result made before the
    kernel's and each dropped once compared, so that a check at a large shape holds few copies of it on
    top of the decode's memory (diffusers' norm makes float32 copies of its own)."""
    for frame_major in (False, True):
        layout = probe(x)
        if frame_major:
            layout = layout.transpose(1, 2).contiguous().transpose(1, 2)
        want = F.silu(norm(added(layout, bias)))  # layout is this check's own: the bias goes in place
        del layout
        same = same_bits(kernel(), want)
        del want
        if not same:
            return False
    return True


def norm_silu_fast(x: torch.Tensor, norm, out: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """``norm_silu`` for the fast decoder: the fast kernel (``_fast_kernels.py``; float32, its own order,
    not PyTorch's bits) where x's dtype and ``norm`` fit it, else PyTorch's ops."""
    if not norm_fusable(x, norm):
        _norm_silu_ops(x, norm, out, bias)
        return
    from ._fast_kernels import norm_silu_free

    norm_silu_free(x, bias, norm.gamma.reshape(-1), float(norm.scale), out)


def _norm_silu_ops(x: torch.Tensor, norm, out: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``norm_silu`` with PyTorch's ops, on x channel-first as diffusers holds it (x itself unchanged)."""
    silu_into(norm(channel_first(x if bias is None else added(x.clone(), bias))), out)


def add_bias_residual(y: torch.Tensor, bias: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``(y + bias) + h`` into y, a residual block's end (``bias``: its conv2's, not yet added): one
    kernel where y and h are channels-last (padded or not) and that was checked for their shapes and
    strides, else two adds."""
    strides = (pixel_stride(y), pixel_stride(h))
    bias_residual = exact_kernel("bias_residual") if kernels_take(y, h) and None not in strides else None
    if bias_residual is not None:

        def sample(seed: int, stride: int) -> torch.Tensor:
            whole = probe(torch.empty((y.shape[0], stride, *y.shape[2:]), dtype=y.dtype, device=y.device), seed)
            return whole.contiguous(memory_format=CHANNELS_LAST)[:, : y.shape[1]]

        def reference() -> torch.Tensor:
            return added(sample(0, strides[0]), bias).add_(sample(1, strides[1]))

        key = ("bias_residual", tuple(y.shape), strides, y.dtype, y.device)
        if verified(key, reference, lambda: bias_residual(sample(0, strides[0]), bias, sample(1, strides[1]), strides)):
            return bias_residual(y, bias, h, strides)
    return added(y, bias).add_(h)


def norm_silu_is_exact(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused kernel can run on ``device`` and gives PyTorch's bits there (checked once)."""
    if device.type != "cuda" or dtype not in (torch.float32, torch.bfloat16):
        return False
    key = (device, dtype)
    if key not in _EXACT:
        try:
            import triton  # noqa: F401
        except ImportError:
            _EXACT[key] = False
            return False
        wan = require("diffusers.models.autoencoders.autoencoder_kl_wan", "video")
        g = torch.Generator(device=device).manual_seed(0)
        norm = wan.WanRMS_norm(96, images=False).to(device, dtype)
        with torch.no_grad():
            norm.gamma.copy_(torch.randn(norm.gamma.shape, generator=g, device=device) * 2)
            x = torch.randn(1, 3, 96, 37, 68, generator=g, device=device) * 40
            x[:, 0, :, :4] = 0.0
            x[:, 1, :, :2] *= 1e-30
            x = x.to(dtype).permute(0, 2, 1, 3, 4)  # frame-major, as a resampler leaves it
            want = torch.nn.functional.silu(norm(x))
            got = torch.empty(1, 96, 5, 39, 70, device=device, dtype=dtype)[:, :, 2:, 1:38, 1:69]
            try:
                norm_silu(x.contiguous(memory_format=CHANNELS_LAST), norm, got)
            except Exception as e:  # a Triton that cannot build it here: PyTorch's ops do the same work
                reason = f"{type(e).__name__}: {e}"
                warnings.warn(f"framepipe's fused norm + SiLU kernel is not used ({reason})", stacklevel=2)
                _EXACT[key] = False
                return False
        _EXACT[key] = same_bits(want, got) and norm_split(x, norm) is not None
    return _EXACT[key]
