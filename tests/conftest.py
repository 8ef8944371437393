"""Shared pytest fixtures: paths to the optional real datasets and small synthetic h5 files."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real datasets live beside the repository; tests that need them skip when they are absent.
REAL_DATA = Path(os.environ.get("FER_REAL_DATA", ROOT.parent / "shared" / "datasets"))


def real_file(name: str) -> Path:
    """Return the path of a real dataset file, or skip the test when it is not present."""
    path = REAL_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {path} is not present; set FER_REAL_DATA to its folder to run this test")
    return path


@pytest.fixture(autouse=True, scope="session")
def _cpu_settings():
    """Flush denormal floats as the scripts do, and use one thread per test process.

    One thread keeps a test run from oversubscribing the cores when a training run (or another
    test process) shares the machine: busy-waiting OpenMP threads then slow both by 10x or more.
    Set FER_TEST_THREADS to use more.
    """
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(int(os.environ.get("FER_TEST_THREADS", "1")))
    yield
