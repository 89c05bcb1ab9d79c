"""Which ways of computing a decoder step give PyTorch's bits, and which of them is fastest: checked on
random values, and timed, on the device once per shape at first use (a process's record of both is
kept for benchmarks and reports)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence

import torch

from ._layouts import bits

# Equivalences checked on the device at first use, per shape: key -> whether the bits were the same.
_VERIFIED: dict[tuple, bool] = {}


def verified_equivalences() -> dict[tuple, bool]:
    """What ``verified`` has checked so far in this process (for benchmarks and reports)."""
    return dict(_VERIFIED)


def chosen_ways() -> dict[tuple, object]:
    """How each convolution (and, fast, resampler) shape runs, as ``fastest_way`` chose it so far."""
    return dict(_WAYS)


def verified(key: tuple, reference: Callable[[], torch.Tensor], candidate: Callable[[], torch.Tensor]) -> bool:
    """Whether ``candidate()`` gives ``reference()``'s bits for ``key`` (computed once per process)."""
    return checked(key, lambda: same_bits(reference(), candidate()))


def checked(key: tuple, check: Callable[[], bool]) -> bool:
    """``check()``'s answer for ``key``: whether a way gives PyTorch's bits (computed once per process)."""
    if key not in _VERIFIED:
        _VERIFIED[key] = check()
    return _VERIFIED[key]


def record(key: tuple, same: bool) -> None:
    """Note a check made elsewhere (``verified_equivalences`` reports it)."""
    _VERIFIED[key] = same


# How each step's shape runs, chosen at first use: key -> a way (fastest_way), None: as diffusers runs it.
_WAYS: dict[tuple, object] = {}


# A way other than the first must take less than this share of its time: a padded output costs its
# readers too, which the convolution's time leaves out (bf16 shapes 3 % faster alone made a whole
# decode 2 % slower on an H200).
MARGIN = 0.9


def fastest_way(key: tuple, reference: Callable[[], torch.Tensor], run: Callable[[object], torch.Tensor],
                ways: Sequence[object], *, device: torch.device, exact: bool = True) -> object | None:  # fmt: skip
    """The fastest of ``ways`` whose ``run(way)`` has ``reference()``'s bits (with ``exact``; else any
    of them), None where none has; chosen once per process for ``key``: compared, then timed, the
    first of them kept unless another takes under ``MARGIN`` of its time."""
    if key not in _WAYS:
        if exact:
            want = reference()
            ways = [way for way in ways if same_bits(want, run(way))]
            del want
            _VERIFIED[key] = bool(ways)
        chosen, best = next(iter(ways), None), math.inf
        if len(ways) > 1:
            for way in ways:  # the first way unless another is clearly faster
                if (took := seconds(functools.partial(run, way), device)) < best * MARGIN:
                    chosen, best = way, took
        _WAYS[key] = chosen
    return _WAYS[key]


def seconds(run: Callable[[], object], device: torch.device, runs: int = 3, calls: int = 3) -> float:
    """The time of one call of ``run`` on an idle ``device``, as a decode meets it: ``calls`` calls one
    after another, the shortest of ``runs`` such times over ``calls`` (after one untimed call). Back to
    back, a call's launch on the host overlaps the kernels before it, as in a decode; a call timed alone
    adds it, and so lost the fast decoder's own convolution shapes it wins in a decode
    (``docs/benchmarks.md``, "Its own convolution")."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    sync()
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        sync()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def probe(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Seeded random values of ``like``'s shape, dtype and device, channel-first, their scale varying
    by up to 2**6 either way from channel to channel: sums over channels that round often, so two
    summation orders that differ show it."""
    g = torch.Generator(device=like.device).manual_seed(seed)
    b, c = like.shape[:2]
    x = torch.randn(like.shape, generator=g, device=like.device, dtype=like.dtype)
    scale = torch.randint(-6, 7, (b, c) + (1,) * (like.dim() - 2), generator=g, device=like.device)
    return x.mul_(torch.exp2(scale.to(like.dtype)))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two float tensors hold the same bits (NaN payloads and the sign of zero included), in
    any layouts (compared in place: no copies)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(bits(a), bits(b))
