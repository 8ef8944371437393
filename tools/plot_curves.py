"""Plot accuracy, loss and learning rate of one or more runs from their ``metrics.csv``.

Works for every stage's file: retraining rows have ``train_acc``, ``val_acc`` and ``test_acc``;
search rows have ``train_acc``, ``arch_acc`` and ``arch_eval_acc``. Every column whose name ends
in ``_acc`` goes to the accuracy panel, every ``*_loss`` column to the loss panel and ``lr`` to the
learning-rate panel. Empty cells (``test_acc`` with ``--no-test_every_epoch``) and absent columns
are left out. Runs share the axes: one colour per run, one line style per column.

Usage::

    python tools/plot_curves.py runs/retrain-A runs/retrain-B --out curves.png
    python -m tools.plot_curves runs/search-cpu/metrics.csv --out search-curves.png
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as ``python tools/plot_curves.py``: make the repository root importable.
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import argparse
import contextlib
import csv
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
# Line style of each known column; other columns cycle through STYLE_CYCLE.
COLUMN_STYLES: dict[str, str] = {
    "train_acc": "-", "train_loss": "-",
    "val_acc": "--",
    "test_acc": ":",
    "arch_acc": "-.", "arch_loss": "-.",
    "arch_eval_acc": (0, (5, 1, 1, 1, 1, 1)),  # type: ignore[dict-item]
    "lr": "-",
}
STYLE_CYCLE = ["-", "--", ":", "-."]
# Readable names of the known columns.
COLUMN_NAMES: dict[str, str] = {
    "train_acc": "train",
    "train_loss": "train",
    "val_acc": "validation (PublicTest)",
    "test_acc": "test (PrivateTest)",
    "arch_acc": "architecture half",
    "arch_loss": "architecture half",
    "arch_eval_acc": "architecture half, eval mode",
    "lr": "learning rate",
}


class MetricsError(ValueError):
    """A metrics file that is missing or cannot be read."""


@dataclass
class RunMetrics:
    """The numeric columns of one ``metrics.csv``: each column maps to (epochs, values) of its non-empty cells."""

    name: str
    path: Path
    columns: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    def series(self, column: str) -> tuple[list[float], list[float]]:
        """Return (epochs, values) of ``column``; both empty when the column is absent."""
        return self.columns.get(column, ([], []))


def metrics_path(run: str | Path) -> Path:
    """Return the ``metrics.csv`` of a run directory, or ``run`` itself when it is a file."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise MetricsError(f"{path} not found: give a run directory that contains {METRICS_FILE}, or the file itself")
    return path


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Read the rows of a metrics CSV file as dicts of strings; raise ``MetricsError`` when it has no header."""
    path = Path(path)
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        if not reader.fieldnames:
            raise MetricsError(f"{path} is empty: it has no header row")
        if "epoch" not in reader.fieldnames:
            raise MetricsError(f"{path} has no 'epoch' column (columns: {', '.join(reader.fieldnames)})")
        return list(reader)


def parse_number(text: str | None) -> float | None:
    """Return ``text`` as a float, or None when it is empty, not a number or NaN."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def read_metrics(run: str | Path, name: str | None = None) -> RunMetrics:
    """Read the numeric columns of a run's ``metrics.csv`` (a run directory or the file)."""
    path = metrics_path(run)
    rows = read_rows(path)
    metrics = RunMetrics(name or path.parent.name, path)
    for line, row in enumerate(rows, start=2):
        epoch = parse_number(row.get("epoch"))
        if epoch is None:
            logger.warning("%s line %d: epoch %r is not a number; row skipped", path, line, row.get("epoch"))
            continue
        for column, text in row.items():
            if column in (None, "epoch"):
                continue
            value = parse_number(text)
            if value is None:
                continue
            epochs, values = metrics.columns.setdefault(column, ([], []))
            epochs.append(epoch)
            values.append(value)
    return metrics


def unique_names(runs: Sequence[str | Path]) -> list[str]:
    """Name each run by its directory, adding parent folders until the names differ."""
    paths = [Path(run).resolve() for run in runs]
    paths = [path.parent if path.is_file() else path for path in paths]
    depth = 1
    while True:
        names = ["/".join(path.parts[-depth:]) for path in paths]
        if len(set(names)) == len(names) or depth >= max(len(path.parts) for path in paths):
            return names
        depth += 1


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` to ``path`` atomically, in the format of the file's suffix (png, pdf, svg...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_format = path.suffix.lstrip(".").lower() or "png"
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("wb") as file:
            figure.savefig(file, format=file_format, dpi=dpi)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    return path


def panel_columns(runs: Sequence[RunMetrics]) -> dict[str, list[str]]:
    """Group the columns present in ``runs`` into the accuracy, loss and learning-rate panels."""
    present: list[str] = []
    for run in runs:
        present.extend(column for column in run.columns if column not in present)
    return {
        "accuracy (%)": [c for c in present if c.endswith("_acc")],
        "loss": [c for c in present if c.endswith("_loss")],
        "learning rate": [c for c in present if c == "lr"],
    }


LEGEND_INSIDE_MAX = 6


def plot_curves(runs: Sequence[RunMetrics], out: str | Path, title: str | None = None) -> Path:
    """Draw the accuracy, loss and learning-rate panels of ``runs`` on shared epoch axes and save to ``out``."""
    if not runs:
        raise ValueError("plot_curves needs at least one run")
    panels = panel_columns(runs)
    # Beyond a few lines a legend inside the panel hides the curves, so it goes to the right.
    legend_outside = len(runs) * max(len(columns) for columns in panels.values()) > LEGEND_INSIDE_MAX
    figure = Figure(figsize=(13 if legend_outside else 9, 10), layout="constrained")
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(len(panels), 1, sharex=True)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    styles: dict[str, object] = {}

    for axes, (ylabel, columns) in zip(axes_list, panels.items()):
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        drawn = 0
        for colour, run in zip(colours, runs):
            for column in columns:
                epochs, values = run.series(column)
                if not epochs:
                    continue
                style = styles.setdefault(column, COLUMN_STYLES.get(column, STYLE_CYCLE[len(styles) % 4]))
                label = COLUMN_NAMES.get(column, column)
                if len(runs) > 1:
                    label = f"{run.name}: {label}"
                axes.plot(epochs, values, color=colour, linestyle=style, marker="." if len(epochs) < 30 else None,
                          label=label)
                drawn += 1

        if drawn and legend_outside:
            axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif drawn:
            axes.legend(fontsize=8, loc="best")
        else:
            axes.text(0.5, 0.5, f"no {ylabel.split(' (')[0]} column in these files", transform=axes.transAxes,
                      ha="center", va="center", color="grey")

    axes_list[-1].set_xlabel("epoch")
    axes_list[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title or ", ".join(run.name for run in runs))
    return save_figure(figure, out)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python tools/plot_curves.py``."""
    parser = argparse.ArgumentParser(
        prog="python tools/plot_curves.py",
        description="Plot accuracy, loss and learning rate from the metrics.csv of one or more runs "
                    "(search, retraining or any other stage) on shared axes.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or metrics.csv files")
    parser.add_argument("--out", type=Path, required=True, help="output image (.png, .pdf or .svg)")
    parser.add_argument("--title", default=None, help="figure title (default: the run names)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a missing or unreadable metrics file exits with status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        names = unique_names(args.runs)
        runs = [read_metrics(run, name) for run, name in zip(args.runs, names)]
    except (MetricsError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    for run in runs:
        if not run.columns:
            logger.warning("%s has no rows with numbers yet", run.path)
    plot_curves(runs, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
