"""Shared by the tests: writing frames through a sink, the reference decode, a command line that
takes Ctrl-C."""

import sys

import torch

from framepipe import to_uint8_frames


def write_all(sink, frames, chunk=4, *, height=None, width=None):
    """Open ``sink``, write ``frames`` ([N, H, W, 3], or planes with ``height``/``width`` given) in
    chunks of ``chunk`` frames as the pipeline does, and close it."""
    sink.open(frames=len(frames), height=height or frames.shape[1], width=width or frames.shape[2])
    for i in range(0, len(frames), chunk):
        sink.write(frames[i : i + chunk])
    sink.close()


def diffusers_frames(vae, latents: torch.Tensor, *, latent_format="pipeline") -> torch.Tensor:
    """What diffusers gives: WanPipeline's de-normalization, ``vae.decode``, framepipe's uint8 rule.

    # -> [B, N, H, W, 3] uint8
    """
    dtype = next(vae.parameters()).dtype
    z = latents.to(dtype)
    if latent_format == "pipeline":  # written as pipeline_wan.py does it
        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(z.device, z.dtype)
        z = z / std + mean
    with torch.no_grad():
        video = vae.decode(z).sample
    return to_uint8_frames(video).cpu()


# A process started in the background by a non-interactive shell (CI scripts, `make test &`) inherits
# SIGINT ignored, and Python then leaves it ignored: a test that sends Ctrl-C has its child take it back.
TAKES_CTRL_C = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def framepipe_command(*args) -> list[str]:
    """``python -m framepipe ARGS``, in a process that takes Ctrl-C whatever its parent ignores."""
    code = TAKES_CTRL_C + "import runpy; runpy.run_module('framepipe', run_name='__main__')"
    return [sys.executable, "-c", code, *map(str, args)]
