"""``framepipe batch`` on one GPU against every GPU of the host, on videos of mixed lengths.

Writes seeded random latents of the given lengths (frames per video), then runs the same batch with
``--gpus 0`` and with ``--gpus 0,1,...`` into fresh folders, and compares the batches' work time
(the first video's start to the last one's end: the workers' start-up and model loading left out)
and their wall time, with each worker's share (when it began and ended, how much of it it decoded).
A batch of short videos on every GPU runs first and is not measured: what a process does once per machine
(Triton's kernel compiles, Python's bytecode) is not part of a batch on a machine in use.

    python benchmarks/batch_scaling.py --gpus 0,1 --dtype bfloat16 --lengths 81,41,121,61,81,21,101,81 --out r/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from script_inputs import add_encoder_arguments, latents_shape

from framepipe._choices import CONTENTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", default="0,1")
    p.add_argument("--arch", default="wan2.1")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--size", default="480x832")
    p.add_argument("--lengths", default="81,41,121,61,81,21,101,81,41,121,61,81", help="frames per video (1 + 4k)")
    p.add_argument(
        "--content",
        choices=tuple(CONTENTS),
        default="decoded",
        help="what the encoders get: the random weights' decode (noise, x264's worst case) or procedural "
        "clips of its size, which encode like real video (the GPU decodes all the same)",
    )
    add_encoder_arguments(p)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    lengths = [int(v) for v in args.lengths.split(",")]
    common = ["--arch", args.arch, "--dtype", args.dtype, "--preset", args.preset, "--crf", str(args.crf),
              "--segment-frames", args.segment_frames, "--content", args.content, "--json", "--quiet"]  # fmt: skip
    for option in args.encoder_option:
        common += ["--encoder-option", option]
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "arch": args.arch, "dtype": args.dtype, "size": args.size, "lengths": lengths,
              "encoder": f"libx264 {args.preset} crf {args.crf}, segments {args.segment_frames}",
              "encoder_options": args.encoder_option,
              "content": args.content}  # fmt: skip

    def write_latents(folder: Path, frames: list[int]) -> Path:
        """Seeded random latents of ``frames`` frames each, one file per video."""
        folder.mkdir()
        g = torch.Generator().manual_seed(0)
        for i, n in enumerate(frames):
            latents = torch.randn(latents_shape(args.arch, frames=n, height=height, width=width), generator=g)
            save_file({"latents": latents}, folder / f"v{i:03d}.safetensors")
        return folder

    def batch(folder: Path, gpus: str, out: Path) -> dict:
        """``framepipe batch`` of ``folder`` on ``gpus`` into ``out``: its JSON summary."""
        command = [sys.executable, "-m", "framepipe", "batch", str(folder), "-o", str(out), "--gpus", gpus, *common]
        answer = subprocess.run(command, capture_output=True, text=True)
        if answer.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{answer.stderr}")
        return json.loads(answer.stdout)

    with tempfile.TemporaryDirectory() as tmp:
        inputs = write_latents(Path(tmp) / "latents", lengths)
        short = write_latents(Path(tmp) / "first", [5] * len(args.gpus.split(",")))  # one for each GPU's worker
        batch(short, args.gpus, Path(tmp) / "machine_warm_up")
        for name, gpus in (("one_gpu", args.gpus.split(",")[0]), ("all_gpus", args.gpus)):
            summary = batch(inputs, gpus, Path(tmp) / name)
            result[name] = {k: summary[k] for k in ("done", "failed", "seconds", "work_seconds", "gpu_seconds",
                                                    "devices", "videos_per_hour", "per_worker")}  # fmt: skip
            print(json.dumps({name: result[name]}), flush=True)
    one, every = result["one_gpu"], result["all_gpus"]
    result["work_speedup"] = round(one["work_seconds"] / every["work_seconds"], 3)
    result["wall_speedup"] = round(one["seconds"] / every["seconds"], 3)
    result["command"] = " ".join(["python", *sys.argv])
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        suffix = "" if args.content == "decoded" else f"_{args.content}"
        suffix += "".join(f"_{option.replace('=', '')}" for option in args.encoder_option)
        suffix += "" if args.lengths == p.get_default("lengths") else f"_{len(lengths)}videos"
        (Path(args.out) / f"batch_scaling_{args.dtype}{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
