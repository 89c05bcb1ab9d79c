"""The error an FP8 (e4m3) fast decoder would bring, estimated on the CPU before building one: diffusers'
decode in float32 with every 3x3(x3) convolution's operands rounded to e4m3 (its input window scaled
by one factor, its weights by one a output channel, as ``fp8_conv_probe.py`` times them) and its
output to bfloat16, against the plain float32 decode (``framepipe compare``'s reference), beside the
plain bfloat16 decode. The other ops stay float32, so the estimate leaves out bfloat16's own error
there. On framepipe's trained embedded VAE (its procedural clip's latents) and on Wan 2.2's
architecture with seeded random weights.

    python benchmarks/fp8_decode_error.py
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from script_inputs import machine

import framepipe
from framepipe._demo import procedural_latents
from framepipe._models import embedded_vae
from framepipe._quality import frame_error

E4M3_MAX = 448.0


def e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x rounded to e4m3 at ``scale`` (x / scale in e4m3's range), back in x's dtype."""
    return (x / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale


def with_fp8_convolutions(vae):
    """A copy of ``vae`` whose decoder's 3x3(x3) convolutions take e4m3 operands, bfloat16 outputs."""
    vae = copy.deepcopy(vae)
    count = 0
    for conv in vae.decoder.modules():
        if isinstance(conv, torch.nn.Conv2d | torch.nn.Conv3d) and max(conv.kernel_size) == 3:
            w = conv.weight.data
            conv.weight.data = e4m3(w, w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / E4M3_MAX)
            original = conv._conv_forward

            def quantized(x, weight, bias, original=original):
                x = e4m3(x, x.abs().amax().clamp_min(1e-30) / E4M3_MAX)
                return original(x, weight, bias).to(torch.bfloat16).to(x.dtype)

            conv._conv_forward = quantized
            count += 1
    return vae, count


def decoded(vae, z: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return framepipe.to_uint8_frames(vae.decode(z.to(next(vae.parameters()).dtype)).sample)


def case(name: str, vae, z: torch.Tensor) -> dict:
    torch.backends.cudnn.allow_tf32 = False
    reference = decoded(vae, z)
    fp8, count = with_fp8_convolutions(vae)
    row = {"model": name, "latents": list(z.shape), "fp8_convolutions": count}
    row["bf16"] = vars(frame_error(reference, decoded(copy.deepcopy(vae).to(torch.bfloat16), z)))
    row["fp8_convolutions_bf16_outputs"] = vars(frame_error(reference, decoded(fp8, z)))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wan22-size", default="64x64", help="HxW of the random Wan 2.2 case (its frames: 9)")
    args = parser.parse_args()
    print(json.dumps(machine("cpu") | {"threads": torch.get_num_threads()}), flush=True)
    vae = embedded_vae().float()
    print(json.dumps(case("embedded (trained)", vae, procedural_latents(vae, 17, 128, 128))), flush=True)
    height, width = map(int, args.wan22_size.split("x"))
    vae = framepipe.random_vae("wan2.2").float()
    b, t, h, w = framepipe.latent_shape(vae, frames=9, height=height, width=width)
    z = torch.randn((b, vae.config.z_dim, t, h, w), generator=torch.Generator().manual_seed(0))
    print(json.dumps(case("wan2.2 random weights", vae, z)), flush=True)


if __name__ == "__main__":
    main()
