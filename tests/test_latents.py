"""Reading latent files and rejecting bad ones with a clear message."""

import contextlib
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from framepipe import LatentsError, check_latents, load_latents


@pytest.fixture
def z():
    return torch.randn(16, 3, 4, 6)


def test_formats_round_trip(tmp_path, z):
    save_file({"latents": z, "other": torch.zeros(1)}, tmp_path / "a.safetensors")
    save_file({"x": z}, tmp_path / "b.safetensors")
    torch.save(z, tmp_path / "c.pt")
    torch.save({"latents": z, "step": 3}, tmp_path / "d.pt")
    np.save(tmp_path / "e.npy", z.numpy())
    for name in ["a.safetensors", "b.safetensors", "c.pt", "d.pt", "e.npy"]:
        assert torch.equal(load_latents(tmp_path / name), z), name


@pytest.mark.parametrize(
    "name, make, match",
    [
        ("missing.pt", None, "not found"),
        ("empty.safetensors", lambda p: p.write_bytes(b""), "empty"),
        (
            "corrupt.safetensors",
            lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad"),
            "Cannot read",
        ),
        ("corrupt.pt", lambda p: p.write_bytes(b"not a zip or pickle"), "Cannot read"),
        ("corrupt.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), "Cannot read"),
        ("latents.txt", lambda p: p.write_text("1 2 3"), "Unsupported latent file type"),
        (
            "many.safetensors",
            lambda p: save_file({"a": torch.zeros(1), "b": torch.zeros(1)}, p),
            "none is named",
        ),
        ("obj.npy", lambda p: np.save(p, np.array(["a"])), "numeric"),
        ("no-tensor.pt", lambda p: torch.save({"step": 3}, p), r"holds no tensor \(its keys: step\)"),
    ],
)
def test_bad_files(tmp_path, name, make, match):
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(LatentsError, match=match):
        load_latents(path)


def test_pickled_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(LatentsError, match="Cannot read"):
        load_latents(tmp_path / "evil.pt")


@pytest.mark.parametrize(
    "shape, match",
    [((16, 4, 6), "Expected latents of shape"), ((1, 1, 16, 3, 4, 6), "Expected latents of shape"),
     ((1, 48, 3, 4, 6), "48 channels but this VAE expects 16"), ((1, 16, 0, 4, 6), "empty dimension")],
)  # fmt: skip
def test_bad_shapes(shape, match):
    with pytest.raises(LatentsError, match=match):
        check_latents(torch.zeros(shape), z_dim=16)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite(bad):
    z = torch.zeros(16, 2, 3, 3)
    z[3, 1, 2, 0] = bad
    with pytest.raises(LatentsError, match="1 NaN or Inf"):
        check_latents(z, z_dim=16)


def test_integer_latents_rejected():
    with pytest.raises(LatentsError, match="floating-point"):
        check_latents(torch.zeros(16, 2, 3, 3, dtype=torch.int64), z_dim=16)


def test_four_dims_become_one_video():
    assert check_latents(torch.zeros(16, 2, 3, 3), z_dim=16).shape == (1, 16, 2, 3, 3)


def test_an_npy_header_is_checked_before_anything_is_allocated(tmp_path):
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (16, 1000, 10**6)})
    (tmp_path / "huge.npy").write_bytes(header.getvalue() + bytes(64))  # 4 KB declaring 59.6 GiB
    with pytest.raises(LatentsError, match=r"declares latents of shape \(16, 1000, 1000000\) \(59\.60 GiB\)"):
        load_latents(tmp_path / "huge.npy")
    torch.save(torch.zeros(16, 2, 4, 4), tmp_path / "renamed.npy")  # a .pt renamed
    with pytest.raises(LatentsError, match="is not a .npy array"):
        load_latents(tmp_path / "renamed.npy")


def test_a_broadcast_view_in_a_pt_file_is_refused(tmp_path):
    # 1.6 KB on disk, 59.6 GiB once copied: the allocator's traceback, before.
    torch.save({"latents": torch.zeros(1).expand(16, 1000, 1000, 1000)}, tmp_path / "z.pt")
    with pytest.raises(
        LatentsError, match=r"holds a view of shape \(16, 1000, 1000, 1000\) \(59\.60 GiB\) over only 4"
    ):
        load_latents(tmp_path / "z.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".npy"])
def test_corrupt_files_give_one_line_errors(tmp_path, suffix):
    """Truncated or damaged latent files, and the same bytes as a VAE checkpoint, either load or raise
    framepipe's own error (a fuzz: PyTorch's unpickler raised KeyError and IndexError on some, NumPy's
    header parser TokenError)."""
    from framepipe import FramepipeError
    from framepipe._checkpoint import read_state_dict

    z = torch.randn(16, 3, 4, 6)
    good = tmp_path / f"good{suffix}"
    {".pt": lambda: torch.save(z, good), ".safetensors": lambda: save_file({"latents": z}, good),
     ".npy": lambda: np.save(good, z.numpy())}[suffix]()  # fmt: skip
    data, rng, path = good.read_bytes(), random.Random(1), tmp_path / f"bad{suffix}"
    for i in range(300):
        damaged = bytearray(data[: rng.randrange(1, len(data))] if i % 3 == 0 else data)
        for _ in range(0 if i % 3 == 0 else rng.randrange(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        for read in (load_latents, read_state_dict):
            with contextlib.suppress(FramepipeError):
                read(path)
