"""The one checkpoint format of every stage.

A checkpoint is a dict of plain types (dicts, lists, strings, numbers, booleans, None and
tensors), so it loads with ``torch.load(..., weights_only=True)``, which never runs code from
the file. Files are written atomically: to a temporary file in the same folder, then
``os.replace``, so an interrupted write leaves the previous file intact.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FORMAT_KEY = "format_version"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, of another version or lacking a field."""


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` if ``value`` contains anything but plain types and tensors."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is not a string or integer")
            check_plain(item, f"{where}.{key}")
        return
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a plain type; convert it before saving")


def atomic_save(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (plain types and tensors) to ``path`` atomically and return the path."""
    path = Path(path)
    payload = {FORMAT_KEY: FORMAT_VERSION, **payload}
    check_plain(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def load_checkpoint(path: str | Path, kind: str | Iterable[str] | None = None,
                    required: Iterable[str] = (), map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely and check its version, kind and fields.

    ``kind`` is the stage (or stages) that may have written it (for example ``"search"``);
    ``required`` lists fields that must be present. Every failure raises ``CheckpointError``
    naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} could not be read ({type(error).__name__}: {error}); "
                              "it may be truncated or not written by this project") from None
    if not isinstance(data, dict) or FORMAT_KEY not in data:
        raise CheckpointError(f"checkpoint {path} has no {FORMAT_KEY!r}: it was not written by this project")
    if data[FORMAT_KEY] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {data[FORMAT_KEY]}, "
                              f"this code reads version {FORMAT_VERSION}")
    if kind is not None:
        kinds = {kind} if isinstance(kind, str) else set(kind)
        if data.get("kind") not in kinds:
            raise CheckpointError(f"checkpoint {path} was written by stage {data.get('kind')!r}; "
                                  f"expected {' or '.join(sorted(kinds))}")
    missing = [name for name in required if name not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing)}")
    return data


def resolve_resume(path: str | Path, filename: str = "last.pt") -> Path:
    """Return the checkpoint named by ``--resume``: a checkpoint file, or a run directory
    holding ``filename``."""
    path = Path(path)
    if path.is_dir():
        candidate = path / filename
        if not candidate.is_file():
            raise CheckpointError(f"--resume {path}: the run directory has no {filename}; "
                                  "give the checkpoint file itself or the directory of a run that saved one")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such file or run directory")
    return path


@contextlib.contextmanager
def resume_hint(run_dir: Path, command: str) -> Iterator[None]:
    """Turn Ctrl-C inside the block into one log line with the command that continues the run.

    The run exits with status 130, the shell's code for an interrupt, instead of a traceback.
    """
    try:
        yield
    except KeyboardInterrupt:
        logger.warning("interrupted: %s contains the last finished epoch; continue with: python %s --resume %s",
                       run_dir / "last.pt", command, run_dir)
        raise SystemExit(130) from None


def restore_training(checkpoint: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: torch.amp.GradScaler | None = None) -> None:
    """Load the model, optimizer, learning-rate scheduler and (when saved) gradient scaler states
    of a checkpoint written by a training stage."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
