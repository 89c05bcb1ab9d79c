"""The names a user chooses among, shared by the library and the command line: importable without
torch, so that ``framepipe --help`` and the data commands start at once."""

from __future__ import annotations

from collections.abc import Iterable

from ._errors import SettingsError

#: The decoders: framepipe's step (diffusers' bits), diffusers' own forward, framepipe's fast one (its
#: convolutions free to change bits: opt-in) and its FP8 one (fast, with e4m3 convolutions: opt-in).
DECODERS = ("framepipe", "diffusers", "fast", "fast-fp8")

#: What the encoders may be given (bench, batch), and how a report names it.
CONTENTS = {
    "decoded": "the VAE's output",
    "procedural": "procedural clips of the decoded size (encode like real video); the GPU decodes the latents",
}


def check_choice(what: str, value: object, names: Iterable[str]) -> None:
    """Refuse ``value`` unless it is one of ``names``, in the one wording every option's refusal uses."""
    names = tuple(names)
    if value not in names:
        raise SettingsError(f"Invalid {what} ({value!r}). Supported values are {', '.join(names)}.")
