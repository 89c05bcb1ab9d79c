"""framepipe's exception types. The CLI turns each into a one-line message and a non-zero exit."""

import pickle
import tokenize
import zipfile

#: What a user can do when the GPU runs out of memory (``DeviceError``'s message).
GPU_OUT_OF_MEMORY = (
    "The GPU ran out of memory while decoding; free GPU memory, use --dtype bfloat16, or decode fewer videos at once."
)


#: What ``torch.load`` and ``np.load`` raise on a file that is not what it claims (truncated, corrupt,
#: another format): the file's fault, reported in one line. ``KeyError`` and ``IndexError`` come from
#: PyTorch's unpickler, ``TokenError`` from NumPy's header parser, on some corrupt bytes (a fuzz test).
UNREADABLE = (OSError, RuntimeError, ValueError, EOFError, KeyError, IndexError, tokenize.TokenError,
              pickle.UnpicklingError, zipfile.BadZipFile)  # fmt: skip


class FramepipeError(Exception):
    """Base class: a problem with what the user asked for, reported without a traceback."""


class SettingsError(FramepipeError, ValueError):
    """An option has a value framepipe does not accept (a mode, a preset, a segment plan...)."""


class MissingDependencyError(FramepipeError, ImportError):
    """An optional dependency is not installed; the message gives the install command."""


class LatentsError(FramepipeError, ValueError):
    """The latent file or tensor is missing, unreadable, or has the wrong shape or values."""


class CheckpointError(FramepipeError, ValueError):
    """The VAE checkpoint is missing, unrecognized, or does not match the architecture."""


class OutputError(FramepipeError, OSError):
    """The output path cannot be written."""


class EncoderError(FramepipeError, RuntimeError):
    """The video encoder refused its settings or failed while writing."""


class DeviceError(FramepipeError, RuntimeError):
    """The requested device or dtype is unavailable, or the device ran out of memory."""


class DataError(FramepipeError, ValueError):
    """A dataset, shard, object store or manifest is missing, unreadable or inconsistent."""


class ShardError(DataError):
    """One shard is missing or corrupt; the message starts with the shard's name."""


class TooLargeError(DataError):
    """An object is larger than the caller allows; nothing of it was kept."""

    def __init__(self, shard: str, problem: str | None = None) -> None:
        # One argument: an already formatted message (how DataLoader re-raises a worker's error).
        super().__init__(shard if problem is None else f"shard {shard}: {problem}")
        self.shard = shard if problem is not None else None


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): the detail that
    fits into one of our one-line messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def why_unreadable(error: BaseException) -> str:
    """What one of ``UNREADABLE`` says about a file, in a few words: its first line, or where that is a
    bare key or index (the unpickler's KeyError, IndexError), that the bytes are damaged."""
    if isinstance(error, KeyError | IndexError | tokenize.TokenError):
        return "the file is damaged, or not the format its name says."
    return first_line(error)


def traceback_message(text: str) -> str | None:
    """Our own error's message where ``text`` ends with it, as a traceback carried in another
    error's message does (DataLoader and Ray re-raise a worker's error so); None otherwise."""
    lines = text.strip().splitlines()
    kind, sep, message = lines[-1].partition(": ") if lines else ("", "", "")
    return message if sep and kind.startswith("framepipe.") else None
