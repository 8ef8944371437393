"""Device selection, mixed precision, seeding and random-number state for every script."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys
import random
from typing import Any, Callable, ContextManager

import numpy as np
import torch

logger = logging.getLogger(__name__)


def select_device(spec: str = "auto") -> torch.device:
    """Return the device named by ``--device``: auto, cpu, cuda or cuda:N.

    ``auto`` picks CUDA when it is available and the CPU otherwise.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are present")
        return device
    raise ValueError(f"--device {spec!r} is invalid; use auto, cpu, cuda or cuda:N")


AMP_CHOICES = ("off", "bf16", "fp16")


def autocast_factory(device: torch.device, amp: str) -> Callable[[], ContextManager[Any]] | None:
    """Return a function that opens the autocast context for ``amp``, or None when it is off.

    ``fp16`` is for CUDA only (it needs a gradient scaler, see ``grad_scaler``). ``bf16`` works on
    both, but on the CPU it made a DARTS-style network several times slower (depthwise
    convolutions have no fast bfloat16 path there), so the scripts warn about it.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp {amp!r} is invalid; use one of {', '.join(AMP_CHOICES)}")
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 or --amp off on the CPU")
    if device.type == "cpu":
        logger.warning("--amp bf16 on the CPU made the search supernet several times slower; "
                       "bench/retrain_step.py compares it for the evaluation network")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def autocast_or_null(factory: Callable[[], ContextManager[Any]] | None) -> ContextManager[Any]:
    """Open ``factory()`` or, when it is None, a context that does nothing."""
    return factory() if factory is not None else contextlib.nullcontext()


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Return a gradient scaler that is active only for float16 autocast on CUDA."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16" and device.type == "cuda"))


def configure_cpu(threads: int = 0, keep_freed_memory: bool = True) -> None:
    """Set the CPU thread count (0 keeps PyTorch's choice), flush denormal floats to zero and,
    with ``keep_freed_memory``, stop glibc from returning large freed blocks to the system.

    Denormal values that appear in long CPU training runs make every floating-point operation
    on them many times slower; flushing them changes results only below 1e-38. glibc serves
    large blocks (over 32 MB once its threshold has adapted) with mmap and unmaps them on free,
    so the next batch's tensors of the same size page-fault again. Keeping them in the heap made
    evaluation 1.5x faster on one core of a 2-core machine.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    if keep_freed_memory:
        keep_large_blocks()


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_large_blocks() -> bool:
    """Serve large blocks from the heap and never trim it (glibc only); return whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):
        return False
    if applied:
        logger.debug("glibc keeps freed large blocks for reuse")
    return applied


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    """Return the random-number state of Python, NumPy and PyTorch in plain types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state returned by ``rng_state``."""
    random.setstate(_to_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value
