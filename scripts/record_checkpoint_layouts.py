"""Record the Wan VAE checkpoint layouts from their own public sources into a test fixture.

The key names and shapes come from instantiating the Wan repositories' VAE modules (on the meta
device: no weights), and the diffusers names from running diffusers' own conversion script on those
keys, so the tests check framepipe's loader against the layouts' authors, not against framepipe's
own mapping. Nothing from these sources is kept but the names, shapes and configurations.

    python scripts/record_checkpoint_layouts.py WAN21_VAE_PY WAN22_VAE2_2_PY CONVERT_WAN_TO_DIFFUSERS_PY \
        --sources "Wan-Video/Wan2.1@<commit>" "Wan-Video/Wan2.2@<commit>" "huggingface/diffusers@<commit>"

Needs einops (the Wan modules import it); not a framepipe dependency.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "wan-checkpoint-layouts.json"

# The releases' configurations, as the Wan repositories' loaders build them (`_video_vae`), and a
# small configuration of the same code for decode tests.
_SHARED = dict(dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True],
               dropout=0.0)  # fmt: skip
CONFIGS = {
    "wan2.1": {"release": dict(dim=96, z_dim=16, **_SHARED), "small": dict(dim=8, z_dim=16, **_SHARED)},
    "wan2.2": {
        "release": dict(dim=160, dec_dim=256, z_dim=48, **_SHARED),
        "small": dict(dim=8, dec_dim=16, z_dim=48, **_SHARED),
    },
}
CONVERTERS = {"wan2.1": "convert_vae", "wan2.2": "convert_vae_22"}
# ComfyUI loads these files with its own copy of the Wan modules, keyed off these names (comfy/sd.py).
COMFYUI_MARKERS = {
    "wan2.1": ["decoder.middle.0.residual.0.gamma"],
    "wan2.2": ["decoder.middle.0.residual.0.gamma", "decoder.upsamples.0.upsamples.0.residual.2.weight"],
}


def _load_module(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layout(module: types.ModuleType, config: dict) -> dict[str, list[int]]:
    with torch.device("meta"):
        model = module.WanVAE_(**config)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _diffusers_names(script: Path, function: str, keys: list[str]) -> dict[str, str]:
    """Run one of diffusers' VAE converters on ``keys`` (no download: its loaders are stand-ins)."""
    tree = ast.parse(script.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    captured: dict[str, str] = {}

    class Capture:
        def __init__(self, **_config):
            pass

        def load_state_dict(self, state, **_kwargs):
            captured.update({v: k for k, v in state.items()})

    fake_torch = types.SimpleNamespace(load=lambda *_a, **_k: {k: k for k in keys})
    namespace = {
        "torch": fake_torch,
        "hf_hub_download": lambda *_a, **_k: "checkpoint",
        "init_empty_weights": contextlib.nullcontext,
        "AutoencoderKLWan": Capture,
        "vae22_diffusers_config": {},
        "Dict": dict,
        "Any": object,
    }
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(script), "exec"), namespace)
    namespace[function]()
    missing = set(keys) - set(captured)
    if missing:
        raise SystemExit(f"diffusers' {function} dropped keys: {sorted(missing)[:5]}")
    return captured


def _diffusers_config(script: Path, name: str) -> dict:
    """A config dict that diffusers' conversion script defines at module level (latent statistics left out)."""
    tree = ast.parse(script.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == name)
    config = ast.literal_eval(node.value)
    return {k: v for k, v in config.items() if not k.startswith("latents_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wan21", type=Path)
    parser.add_argument("wan22", type=Path)
    parser.add_argument("diffusers_script", type=Path)
    parser.add_argument("--sources", nargs=3, required=True, metavar="REPO@COMMIT")
    args = parser.parse_args()
    modules = {"wan2.1": _load_module(args.wan21, "wan21_vae"), "wan2.2": _load_module(args.wan22, "wan22_vae")}
    paths = {"wan2.1": "wan/modules/vae.py", "wan2.2": "wan/modules/vae2_2.py"}
    fixture = {
        "about": "Wan VAE checkpoint layouts recorded by scripts/record_checkpoint_layouts.py from the "
        "layouts' own sources; the diffusers names from diffusers' scripts/convert_wan_to_diffusers.py.",
        "diffusers_source": f"{args.sources[2]} scripts/convert_wan_to_diffusers.py",
    }
    for (version, module), source in zip(modules.items(), args.sources[:2], strict=True):
        release = _layout(module, CONFIGS[version]["release"])
        fixture[version] = {
            "source": f"{source} {paths[version]}",
            "comfyui_markers": COMFYUI_MARKERS[version],
            "release": {"config": CONFIGS[version]["release"], "tensors": release},
            "small": {"config": CONFIGS[version]["small"], "tensors": _layout(module, CONFIGS[version]["small"])},
            "diffusers_names": _diffusers_names(args.diffusers_script, CONVERTERS[version], sorted(release)),
            # diffusers' AutoencoderKLWan arguments for the release ({} = the class defaults, Wan 2.1's)
            "diffusers_config": {}
            if version == "wan2.1"
            else _diffusers_config(args.diffusers_script, "vae22_diffusers_config"),
        }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)


if __name__ == "__main__":
    main()
