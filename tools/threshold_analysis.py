"""Relabel threshold x FES threshold grid: run train_relabel.py for each pair, or collect finished
runs, then draw PublicTest (validation) and PrivateTest (test) accuracy as heatmaps and write a CSV.

Accuracy is that of each run's validation-selected checkpoint (best.pt). A FES threshold of
``off`` means a run without the FES gate (--no-fes). Several runs of one grid cell (for example
different seeds) are averaged in the heatmap and listed one per row in the CSV.

Usage::

    python tools/threshold_analysis.py run --checkpoint runs/retrain-EXP-.../train_acc_85.pt \\
        --relabel_thresholds 0.1 0.2 0.3 --fes_thresholds off 0.0 0.03 --epochs 100 --out analysis/thresholds \\
        --threads 1
    python tools/threshold_analysis.py collect runs/relabel-* --out analysis/thresholds
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as ``python tools/threshold_analysis.py``: make the repository root importable.
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import argparse
import csv
import json
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tools.experiment import setup_logging

logger = logging.getLogger(__name__)

OFF = "off"
VIEWS = ("plain", "tencrop")
CSV_FIELDS = ["relabel_threshold", "fes_threshold", "val_acc", "test_acc", "test_acc_not_in_training",
              "start_val_acc", "start_test_acc", "best_epoch", "epochs", "view", "run_dir"]
# train_relabel.py options that the grid sets for every run.
GRID_OPTIONS = ("--checkpoint", "--epochs", "--relabel_threshold", "--fes", "--no-fes", "--fes_threshold", "--save",
                "--resume")


@dataclass
class GridRun:
    """The figures of one finished relabel run."""

    run_dir: Path
    relabel_threshold: float
    fes_threshold: float | None  # None: the FES gate was off
    val_acc: float
    test_acc: float
    test_acc_not_in_training: float
    start_val_acc: float | None
    start_test_acc: float | None
    best_epoch: int
    epochs: int
    view: str

    def row(self) -> dict[str, object]:
        return {"relabel_threshold": self.relabel_threshold,
                "fes_threshold": OFF if self.fes_threshold is None else self.fes_threshold,
                "val_acc": self.val_acc, "test_acc": self.test_acc,
                "test_acc_not_in_training": self.test_acc_not_in_training,
                "start_val_acc": "" if self.start_val_acc is None else self.start_val_acc,
                "start_test_acc": "" if self.start_test_acc is None else self.start_test_acc,
                "best_epoch": self.best_epoch, "epochs": self.epochs, "view": self.view, "run_dir": str(self.run_dir)}


class RunError(ValueError):
    """A run directory that is unfinished or not a train_relabel.py run."""


def read_run(run_dir: str | Path, view: str = "plain") -> GridRun:
    """Read the thresholds from ``args.json`` and the accuracies of the best checkpoint from ``results.json``."""
    run_dir = Path(run_dir)
    args_path, results_path = run_dir / "args.json", run_dir / "results.json"
    if not args_path.is_file():
        raise RunError(f"{run_dir}: no args.json; expected a run directory of train_relabel.py")
    if not results_path.is_file():
        raise RunError(f"{run_dir}: no results.json; the run has not finished")
    try:
        args = json.loads(args_path.read_text())
        results = json.loads(results_path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{run_dir}: invalid JSON ({error})") from None
    if "relabel_threshold" not in args:
        raise RunError(f"{run_dir}: args.json has no relabel_threshold; expected a run of train_relabel.py")
    if "best" not in results or view not in results["best"].get("PublicTest", {}):
        raise RunError(f"{run_dir}: results.json has no {view} accuracy of the best checkpoint; "
                       f"{'run with --tta tencrop' if view == 'tencrop' else 'the run may have failed'}")

    best = results["best"]
    start = results.get("start", {})
    fes_on = bool(args.get("fes", True))
    return GridRun(
        run_dir=run_dir,
        relabel_threshold=float(args["relabel_threshold"]),
        fes_threshold=float(args["fes_threshold"]) if fes_on else None,
        val_acc=float(best["PublicTest"][view]["accuracy"]),
        test_acc=float(best["PrivateTest"][view]["accuracy"]),
        test_acc_not_in_training=float(best["PrivateTest_not_in_Training"][view]["accuracy"]),
        start_val_acc=_accuracy(start, "PublicTest", view),
        start_test_acc=_accuracy(start, "PrivateTest", view),
        best_epoch=int(best["epoch"]),
        epochs=int(args.get("epochs", 0)),
        view=view,
    )


def _accuracy(entry: dict, split: str, view: str) -> float | None:
    summary = entry.get(split, {}).get(view)
    return None if summary is None else float(summary["accuracy"])


def collect(run_dirs: Sequence[str | Path], view: str = "plain") -> list[GridRun]:
    """Read every finished relabel run. Directories that are unfinished or of another kind are logged and skipped."""
    runs = []
    for run_dir in run_dirs:
        try:
            runs.append(read_run(run_dir, view))
        except RunError as error:
            logger.warning("skipped %s", error)
    if not runs:
        raise RunError(f"none of the {len(run_dirs)} directories is a finished train_relabel.py run")
    return runs


# ---------------------------------------------------------------------------------------------
# Outputs


def grid_axes(runs: Sequence[GridRun]) -> tuple[list[float], list[float | None]]:
    """Return the sorted relabel thresholds and FES thresholds (None, the gate off, first)."""
    relabel = sorted({run.relabel_threshold for run in runs})
    fes = sorted({run.fes_threshold for run in runs}, key=lambda value: (value is not None, value or 0.0))
    return relabel, fes


def grid_means(runs: Sequence[GridRun], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean of ``metric`` per grid cell (NaN where no run) and the run count per cell.

    Rows are relabel thresholds and columns FES thresholds, in the order of ``grid_axes``.
    """
    relabel, fes = grid_axes(runs)
    total = np.zeros((len(relabel), len(fes)))
    count = np.zeros((len(relabel), len(fes)), dtype=int)
    for run in runs:
        i, j = relabel.index(run.relabel_threshold), fes.index(run.fes_threshold)
        total[i, j] += getattr(run, metric)
        count[i, j] += 1
    means = np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
    return means, count


def write_csv(runs: Sequence[GridRun], path: str | Path) -> Path:
    """Write one row per run, sorted by relabel threshold, then FES threshold."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(runs, key=lambda run: (run.relabel_threshold, run.fes_threshold is not None,
                                           run.fes_threshold or 0.0, str(run.run_dir)))
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(run.row() for run in ordered)
    return path


def plot_grid(runs: Sequence[GridRun], path: str | Path) -> Path:
    """Draw PublicTest and PrivateTest accuracy over the grid as two heatmaps in one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    relabel, fes = grid_axes(runs)
    column_labels = ["no FES" if value is None else f"FES > {value:g}" for value in fes]
    row_labels = [f"{value:g}" for value in relabel]
    view = runs[0].view
    figure = Figure(figsize=(2.0 + 2.4 * len(fes), 1.6 + 0.7 * len(relabel)), layout="constrained")
    FigureCanvasAgg(figure)
    panels = [("val_acc", f"PublicTest (validation), {view}"), ("test_acc", f"PrivateTest (test), {view}")]
    for position, (metric, title) in enumerate(panels, start=1):
        means, count = grid_means(runs, metric)
        axes = figure.add_subplot(1, 2, position)
        axes.set_facecolor("lightgrey")
        image = axes.imshow(np.ma.masked_invalid(means), cmap="viridis", aspect="auto")
        figure.colorbar(image, ax=axes, label="accuracy (%)")
        axes.set_xticks(range(len(fes)), labels=column_labels, rotation=30, ha="right")
        axes.set_yticks(range(len(relabel)), labels=row_labels)
        axes.set_xlabel("FES gate")
        axes.set_ylabel("relabel threshold")
        axes.set_title(title, fontsize=10)
        finite = means[np.isfinite(means)]
        middle = float(finite.min() + finite.max()) / 2.0
        for i in range(len(relabel)):
            for j in range(len(fes)):
                if count[i, j] == 0:
                    continue
                label = f"{means[i, j]:.2f}" + (f"\n(mean of {count[i, j]})" if count[i, j] > 1 else "")
                axes.text(j, i, label, ha="center", va="center", fontsize=8,
                          color="black" if means[i, j] > middle else "white")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def write_outputs(runs: Sequence[GridRun], prefix: str | Path) -> tuple[Path, Path]:
    """Write ``<prefix>.csv`` and ``<prefix>.png`` and log the grid."""
    csv_path = write_csv(runs, f"{prefix}.csv")
    png_path = plot_grid(runs, f"{prefix}.png")
    for run in sorted(runs, key=lambda run: (run.relabel_threshold, run.fes_threshold is not None,
                                            run.fes_threshold or 0.0)):
        fes = OFF if run.fes_threshold is None else f"{run.fes_threshold:g}"
        logger.info("relabel threshold %g, FES threshold %s: PublicTest %.2f%%, PrivateTest %.2f%% (%s)",
                    run.relabel_threshold, fes, run.val_acc, run.test_acc, run.run_dir)
    logger.info("wrote %s and %s", csv_path, png_path)
    return csv_path, png_path


# ---------------------------------------------------------------------------------------------
# Running the grid


def parse_fes_threshold(text: str) -> float | None:
    """Parse a FES threshold: a number, or ``off`` for runs without the FES gate."""
    if text.strip().lower() in (OFF, "none", "no"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or {OFF!r}, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("a FES threshold cannot be NaN")
    return value


def grid_run_dir(prefix: str | Path, relabel_threshold: float, fes_threshold: float | None) -> Path:
    """Return the run directory of one grid cell: ``<prefix>-runs/relabel<r>-fes<f or off>``."""
    fes = OFF if fes_threshold is None else f"{fes_threshold:g}"
    return Path(f"{prefix}-runs") / f"relabel{relabel_threshold:g}-fes{fes}"


def run_grid(checkpoint: str, relabel_thresholds: Sequence[float], fes_thresholds: Sequence[float | None],
             epochs: int, prefix: str | Path, extra: Sequence[str] = ()) -> list[Path]:
    """Run train_relabel.main in this process for every threshold pair.

    A cell whose directory already has ``results.json`` is skipped, and one with only ``last.pt``
    is resumed, so a stopped grid continues where it stopped.
    """
    import train_relabel

    parser = train_relabel.get_args_parser()
    run_dirs = []
    for relabel_threshold in relabel_thresholds:
        for fes_threshold in fes_thresholds:
            run_dir = grid_run_dir(prefix, relabel_threshold, fes_threshold)
            run_dirs.append(run_dir)
            if (run_dir / "results.json").is_file():
                logger.info("%s has finished already; skipped", run_dir)
                continue
            if (run_dir / "last.pt").is_file():
                argv = ["--resume", str(run_dir), *extra]
            else:
                fes = ["--no-fes"] if fes_threshold is None else ["--fes", "--fes_threshold", repr(fes_threshold)]
                argv = ["--checkpoint", str(checkpoint), "--epochs", str(epochs), "--relabel_threshold",
                        repr(relabel_threshold), *fes, "--save", str(run_dir), *extra]
            logger.info("train_relabel.py %s", " ".join(argv))
            train_relabel.main(parser.parse_args(argv))
    setup_logging(None)
    return run_dirs


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python tools/threshold_analysis.py``."""
    parser = argparse.ArgumentParser(
        prog="python tools/threshold_analysis.py",
        description="Relabel threshold x FES threshold grid: PublicTest and PrivateTest accuracy as heatmaps and CSV.")
    commands = parser.add_subparsers(dest="command", required=True)

    # Without abbreviations, --relabel_threshold and --fes_threshold for train_relabel.py are
    # rejected below instead of being read as --relabel_thresholds and --fes_thresholds.
    collect_parser = commands.add_parser("collect", help="read finished train_relabel.py run directories",
                                         allow_abbrev=False)
    collect_parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of train_relabel.py")

    run_parser = commands.add_parser(
        "run", help="run train_relabel.py for every threshold pair; other options go to train_relabel.py",
        allow_abbrev=False)
    run_parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="retrain checkpoint to start from")
    run_parser.add_argument("--relabel_thresholds", type=float, nargs="+", required=True, metavar="T",
                            help="relabel thresholds (probability gaps)")
    run_parser.add_argument("--fes_thresholds", type=parse_fes_threshold, nargs="+", required=True, metavar="F",
                            help=f"FES thresholds; {OFF!r} runs without the FES gate")
    run_parser.add_argument("--epochs", type=int, required=True, help="epochs of every run")

    for sub in (collect_parser, run_parser):
        sub.add_argument("--out", required=True, metavar="PREFIX",
                         help="write PREFIX.png and PREFIX.csv (runs go to PREFIX-runs/)")
        sub.add_argument("--view", default="plain", choices=VIEWS,
                         help="accuracy of the plain image or the ten-crop average (needs --tta tencrop) "
                              "(default: plain)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; an unusable input exits with status 2 after printing the error."""
    setup_logging(None)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "collect" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":
        fixed = [option for option in extra if option.split("=")[0] in GRID_OPTIONS]
        if fixed:
            parser.error(f"{', '.join(fixed)}: the grid sets these train_relabel.py options itself")
        run_dirs = run_grid(args.checkpoint, args.relabel_thresholds, args.fes_thresholds, args.epochs, args.out,
                            extra)
    else:
        run_dirs = [Path(path) for path in args.run_dirs]
    try:
        runs = collect(run_dirs, args.view)
    except RunError as error:
        parser.exit(2, f"error: {error}\n")
    write_outputs(runs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
