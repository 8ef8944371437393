"""Run directories, logging, argument records, per-epoch metrics and meters."""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def make_run_dir(save: str, prefix: str) -> Path:
    """Return a new run directory ``<prefix>-<save>-<YYYYmmdd-HHMMSS>`` under ``runs/``,
    or ``save`` itself when it names a path (contains a slash)."""
    if "/" in save or os.sep in save:
        path = Path(save)
    else:
        path = Path("runs") / f"{prefix}-{save}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def setup_logging(run_dir: Path | None = None, level: int = logging.INFO) -> None:
    """Log to the console and, when ``run_dir`` is given, to ``run_dir/log.txt`` (appending)."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_fer_handler", False):
            root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(Path(run_dir) / "log.txt"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%m/%d %H:%M:%S"))
        handler._fer_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON atomically."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)
    return path


def save_args(args: argparse.Namespace, run_dir: Path) -> Path:
    """Record the parsed arguments in ``run_dir/args.json``."""
    return write_json(vars(args), run_dir / "args.json")


class MetricsCSV:
    """A CSV file with one row per epoch. Opening an existing file keeps rows up to ``keep_until``
    (the epoch a resumed run restarts from), so a resumed run does not repeat rows."""

    def __init__(self, path: str | Path, fields: Iterable[str], keep_until: int | None = None) -> None:
        self.path = Path(path)
        self.fields = list(fields)
        rows: list[dict[str, str]] = []
        if keep_until is not None and self.path.exists():
            with self.path.open(newline="") as file:
                rows = [row for row in csv.DictReader(file) if int(row.get("epoch", -1)) < keep_until]
        with self.path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows({k: row.get(k, "") for k in self.fields} for row in rows)

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(self.fields)
        if unknown:
            raise KeyError(f"metrics row has unknown fields {sorted(unknown)}; known: {self.fields}")
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, fieldnames=self.fields).writerow(
                {k: _format(row.get(k, "")) for k in self.fields})


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class AverageMeter:
    """Running average of a value weighted by a count (for example the batch size)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.total += float(value) * n
        self.count += n

    @property
    def average(self) -> float:
        return self.total / self.count if self.count else 0.0


class AccuracyMeter:
    """Counts correct top-1 predictions on the device and reads them back once, at the end."""

    def __init__(self) -> None:
        self.correct: torch.Tensor | None = None
        self.count = 0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        hits = (logits.argmax(dim=1) == target).sum()
        self.correct = hits if self.correct is None else self.correct + hits
        self.count += int(target.numel())

    @property
    def percent(self) -> float:
        if not self.count or self.correct is None:
            return 0.0
        return 100.0 * float(self.correct) / self.count


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Return the top-1 accuracy of ``logits`` against ``target`` in percent."""
    return 100.0 * float((logits.argmax(dim=1) == target).float().mean())
