"""A Wan resampler's 2x nearest upsampling and 3x3 convolution, two ways. Upsampled: the frames
upsampled in one copy (which also interleaves a time convolution's frame pairs), then convolved:
diffusers' bits. Sub-pixel (the fast decoder's): each 2x2 block of the output is a 2x2 convolution of
the frames as they are, with the 3x3 weights that fall on the same input pixel summed, so 16
multiply-adds a pixel and channel in place of 36 and no upsampled copy; the summed weights round
otherwise, so its bits are not diffusers'. Wan 2.2's up blocks also add an upsampled copy of their
input (diffusers' ``DupUp3D``: channels repeated, then moved into time and space); ``shortcut_added``
reads it as a strided view of that input, no copy made."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._layouts import kept_copy, kernels_take, pixel_stride
from ._optional import exact_kernel

# For an output row 2i + a, the 3x3 kernel's rows fall on input rows i - 1, i, i (a = 0) or i, i, i + 1
# (a = 1): [a][k][r] = 1 where kernel row r falls on the k-th of the two input rows (i - 1 + a + k).
SUBPIXEL_TAPS = (((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1)))


def upsampled(x: torch.Tensor, pairs: bool, channels_last: bool) -> torch.Tensor:
    """diffusers' ``WanUpsample`` (nearest-exact, 2x: each pixel repeated 2x2) of x's frames as one
    [B * T, C, 2H, 2W] batch, in one copy. With ``pairs``, x is a time convolution's [B, 2C, T, H, W]
    output whose channel halves are the even and the odd frames (diffusers' reshape + stack)."""
    b, c, t, h, w = x.shape
    p = 2 if pairs else 1
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b * t * p, c // p, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=layout)
    if x.is_cuda and (kernel := exact_kernel("upsample_copy")) is not None:  # faster than torch's strided copy
        kernel(x, out)
        return out
    target = out.unflatten(0, (b, t, p)).unflatten(4, (h, 2)).unflatten(6, (w, 2))  # [B, T, P, C, H, 2, W, 2]
    source = x.unflatten(1, (p, c // p)).permute(0, 3, 1, 2, 4, 5)  # [B, T, P, C, H, W]
    target.copy_(source[:, :, :, :, :, None, :, None])
    return out


def resampler_frames(x: torch.Tensor, pairs: bool) -> torch.Tensor:
    """x's frames as one channels-last [B * T * P, C, H, W] batch, in the order ``upsampled`` gives
    them: a view of a whole channels-last x, else one copy."""
    b, c, t, h, w = x.shape
    if not pairs and pixel_stride(x) == c:
        return x.transpose(1, 2).flatten(0, 1)
    p = 2 if pairs else 1
    out = torch.empty((b * t * p, c // p, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    out.unflatten(0, (b, t, p)).copy_(x.unflatten(1, (p, c // p)).permute(0, 3, 1, 2, 4, 5))
    return out


def subpixel_fits(conv: torch.nn.Module) -> bool:
    """Whether ``conv`` is a resampler's plain 3x3 convolution with padding 1 (Wan's every one)."""
    return (
        isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
    )  # fmt: skip


def subpixel_weights(conv: torch.nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[4 * Co, C, 2, 2] channels-last weights, output channels (a, b, co): those of output pixel
    (2i + a, 2j + b), summed in float32 at least (kept while ``conv``'s parameters are unchanged), and the bias."""

    def make(conv: torch.nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = conv.weight.detach()
        wide = torch.promote_types(weight.dtype, torch.float32)
        taps = torch.tensor(SUBPIXEL_TAPS, dtype=wide, device=weight.device)
        merged = torch.einsum("aky,blx,ocyx->abockl", taps, taps, weight.to(wide)).flatten(0, 2)
        bias = None if conv.bias is None else conv.bias.detach()
        return merged.to(weight.dtype).contiguous(memory_format=torch.channels_last), bias

    return kept_copy(conv, "subpixel", make)


def subpixel_conv(conv: torch.nn.Conv2d, x: torch.Tensor, pairs: bool) -> torch.Tensor:
    """``conv`` over ``upsampled(x, pairs, True)``, computed sub-pixel: one 2x2 convolution of 4 * Co
    channels over x's frames padded by 1, whose output pixel (i + a, j + b) holds in channel group
    (a, b) the output pixel (2i + a, 2j + b); placed, with the bias added, in one strided pass."""
    frames = resampler_frames(x, pairs)
    weight, bias = subpixel_weights(conv)
    y = F.conv2d(frames, weight, None, padding=1)  # [N, 4 Co, H + 1, W + 1]
    if y.stride(1) != 1:
        y = y.contiguous(memory_format=torch.channels_last)
    n, _, h, w = frames.shape
    out = torch.empty((n, conv.out_channels, 2 * h, 2 * w), dtype=y.dtype, device=y.device,
                      memory_format=torch.channels_last)  # fmt: skip
    place(y, bias, out)
    return out


def place(y: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """Put the output pixels y holds (channel group (a, b) of pixel (i + a, j + b): pixel (2i + a,
    2j + b)) into ``out``, ``bias`` added: one Triton kernel on CUDA (torch's strided add is ~3x
    slower there), else a strided ``torch.add`` (the same bits)."""
    if y.is_cuda and (kernel := exact_kernel("subpixel_place")) is not None:
        kernel(y, bias, out)
        return
    n, co, h, w = out.shape[0], out.shape[1], out.shape[2] // 2, out.shape[3] // 2
    sn, _, sh, sw = y.stride()
    # pixel (n, co, i, a, j, b) sits at channel (a, b, co) of y's pixel (i + a, j + b): strides add up
    blocks = y.as_strided((n, co, h, 2, w, 2), (sn, 1, sh, 2 * co + sh, sw, co + sw), y.storage_offset())
    target = out.unflatten(2, (h, 2)).unflatten(4, (w, 2))
    if bias is None:
        target.copy_(blocks)
    else:
        torch.add(blocks, bias.view(-1, 1, 1, 1, 1), out=target)


def shortcut_steps(module: torch.nn.Module) -> tuple[int, int, int, int] | None:
    """How far ``DupUp3D``'s input channel moves per step of (output channel, frame, row, column offset),
    where its mapping (repeat each channel, then spread the repeats over the ft x fs x fs block) is that
    regular: None where it is not."""
    return mapping_steps(module.out_channels, module.factor_t, module.factor_s, module.repeats)


@functools.cache
def mapping_steps(channels: int, ft: int, fs: int, repeats: int) -> tuple[int, int, int, int] | None:
    """``shortcut_steps`` for a ``DupUp3D`` of these sizes (worked out once)."""
    source = (torch.arange(channels * ft * fs * fs) // repeats).view(channels, ft, fs, fs)
    steps = tuple(int(source.narrow(d, 1, 1).flatten()[0]) if n > 1 else 0 for d, n in enumerate(source.shape))
    grid = torch.meshgrid(*(torch.arange(n) for n in source.shape), indexing="ij")
    regular = sum(step * index for step, index in zip(steps, grid, strict=True))
    return steps if torch.equal(regular, source) else None


def shortcut_added(
    module: torch.nn.Module, x: torch.Tensor, shortcut: torch.Tensor, first_chunk: bool
) -> torch.Tensor | None:
    """``x + module(shortcut, first_chunk=first_chunk)`` for diffusers' ``DupUp3D`` ``module`` in one
    add (the same bits: one rounding of the same sum), reading ``shortcut`` in any layout through a
    strided view (on CUDA, a Triton kernel's) and writing in x's layout; None where the mapping is not
    a view (then run the module)."""
    steps = shortcut_steps(module)
    ft, fs = module.factor_t, module.factor_s
    b, _, t, h, w = shortcut.shape
    if steps is None or (first_chunk and ft > 1 and t != 1):
        return None
    sb, sc, st, sh, sw = shortcut.stride()
    kc, ka, ki, kj = (step * sc for step in steps)
    view = shortcut.as_strided(
        (b, module.out_channels, t, ft, h, fs, w, fs), (sb, kc, st, ka, sh, ki, sw, kj), shortcut.storage_offset()
    )
    if first_chunk:
        view = view[:, :, :, ft - 1 :]  # diffusers drops the frames before the first
    spread = (b, module.out_channels, view.shape[2] * view.shape[3], h * fs, w * fs)
    if tuple(x.shape) != spread:
        return None
    kernel = exact_kernel("shortcut_add") if kernels_take(x, shortcut) else None  # faster than torch's add
    if kernel is not None:
        return kernel(x, shortcut, steps, ft, fs, first_chunk)
    out = torch.empty_like(x)
    as8 = lambda y: y.unflatten(2, view.shape[2:4]).unflatten(4, (h, fs)).unflatten(6, (w, fs))  # noqa: E731
    torch.add(as8(x), view, out=as8(out))
    return out
