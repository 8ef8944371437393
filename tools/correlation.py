"""Rank correlation between two measures of the same architectures: Kendall tau-b and Spearman rho.

Read the pairs from a CSV file with one row per architecture::

    python tools/correlation.py --csv archs.csv --x search_acc --y test_acc --name arch

or from run directories, one per architecture::

    python -m tools.correlation --runs runs/retrain-A runs/retrain-B runs/retrain-C --x search_acc --y test_acc

The numbers taken from a run directory (all accuracies in percent):

* ``search_acc``: ``arch_acc`` in the last row of the search run's ``metrics.csv``, the accuracy
  on the architecture half during the final search epoch (training mode). For a retraining run,
  the search run is the directory of the ``genotype.json`` that its ``args.json`` names.
* ``search_eval_acc``: ``arch_eval_acc`` in that same last row (written with ``--post_val``).
* ``val_acc``: ``results.json`` -> best -> PublicTest -> VIEW -> accuracy, the validation accuracy
  of ``best.pt``. Without ``results.json`` (a run still training): the highest ``val_acc`` in
  ``metrics.csv``.
* ``test_acc``: ``results.json`` -> best -> PrivateTest -> VIEW -> accuracy, the test accuracy of
  the validation-selected checkpoint. Without ``results.json``: ``test_acc`` in the first
  ``metrics.csv`` row with the highest ``val_acc``.

VIEW is ``plain`` or ``tencrop`` (``--view``). Kendall tau-b corrects for ties; Spearman rho
ranks ties by their average rank. p-values are two-sided, from ``scipy.stats.kendalltau`` (exact
for small samples without ties, else its normal approximation) and ``scipy.stats.spearmanr``
(t distribution).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as ``python tools/correlation.py``: make the repository root importable.
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import argparse
import csv
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

from scipy import stats

from tools.plot_curves import MetricsError, parse_number, read_rows, unique_names

logger = logging.getLogger(__name__)

RUN_MEASURES = ("search_acc", "search_eval_acc", "val_acc", "test_acc")
VIEWS = ("plain", "tencrop")
MIN_PAIRS = 3


class CorrelationError(ValueError):
    """Input that gives no rank correlation: missing values, too few pairs or a constant column."""


@dataclass
class Correlation:
    """Kendall tau-b and Spearman rho of ``n`` pairs, with their two-sided p-values."""

    n: int
    kendall_tau: float
    kendall_p: float
    spearman_rho: float
    spearman_p: float

    def format(self) -> str:
        return (f"n = {self.n}\n"
                f"Kendall tau-b = {self.kendall_tau:+.4f} (p = {self.kendall_p:.4g})\n"
                f"Spearman rho  = {self.spearman_rho:+.4f} (p = {self.spearman_p:.4g})")


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Return Kendall tau-b and Spearman rho of the pairs (x[i], y[i]) with p-values.

    Raises ``CorrelationError`` for fewer than three pairs, unequal lengths or a constant side.
    """
    if len(x) != len(y):
        raise CorrelationError(f"x has {len(x)} values but y has {len(y)}")
    if len(x) < MIN_PAIRS:
        raise CorrelationError(f"a rank correlation needs at least {MIN_PAIRS} pairs, got {len(x)}")
    for name, values in (("x", x), ("y", y)):
        if any(not math.isfinite(v) for v in values):
            raise CorrelationError(f"{name} contains a value that is not a finite number: {list(values)}")
        if len(set(values)) == 1:
            raise CorrelationError(f"every {name} value is {values[0]}: the ranking is constant, so no rank "
                                   "correlation exists")
    kendall = stats.kendalltau(x, y, variant="b")
    spearman = stats.spearmanr(x, y)
    return Correlation(len(x), float(kendall.statistic), float(kendall.pvalue), float(spearman.statistic),
                       float(spearman.pvalue))


@dataclass
class Pair:
    """One architecture: its name and its two measures."""

    name: str
    x: float
    y: float


def read_csv_pairs(path: str | Path, x: str, y: str, name: str | None = None) -> list[Pair]:
    """Read the columns ``x`` and ``y`` (and ``name`` for labels) of a CSV file with a header row.

    Rows where ``x`` or ``y`` is empty are skipped with a warning; any other value that is not a
    number raises ``CorrelationError`` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise CorrelationError(f"CSV file {path} not found")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        for column in (x, y, *([name] if name else [])):
            if column not in columns:
                raise CorrelationError(f"{path} has no column {column!r}; its columns are {', '.join(columns)}")
        pairs = []
        for line, row in enumerate(reader, start=2):
            texts = {column: (row.get(column) or "").strip() for column in (x, y)}
            if not all(texts.values()):
                logger.warning("%s line %d: %s empty; row skipped", path, line,
                               " and ".join(c for c, t in texts.items() if not t))
                continue
            values = {}
            for column, text in texts.items():
                try:
                    values[column] = float(text)
                except ValueError:
                    raise CorrelationError(f"{path} line {line}: {column} = {text!r} is not a number") from None
            label = row.get(name, "") if name else f"line {line}"
            pairs.append(Pair(label or f"line {line}", values[x], values[y]))
    return pairs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CorrelationError(f"{path} is not valid JSON ({error})") from None


def search_run_of(run: Path) -> Path:
    """Return the search run directory of ``run``: ``run`` itself when it contains
    ``arch_weights.jsonl``, else the directory of the ``genotype.json`` that its ``args.json`` names."""
    if (run / "arch_weights.jsonl").is_file():
        return run
    args_path = run / "args.json"
    if not args_path.is_file():
        raise CorrelationError(f"{run} is not a search run (no arch_weights.jsonl) and has no args.json that "
                               "names the genotype.json of one")
    saved_args = _read_json(args_path)
    genotype = saved_args.get("genotype") or ""
    if not genotype:
        raise CorrelationError(f"{run} was trained from the named genotype {saved_args.get('arch')!r}, not from "
                               "a search run's genotype.json, so it has no search accuracy")
    search_dir = Path(genotype).parent
    if not (search_dir / "metrics.csv").is_file():
        raise CorrelationError(f"{run}: its genotype {genotype} is not inside a search run directory with a "
                               "metrics.csv. A relative path in args.json is relative to the directory that "
                               "training ran in: run this command there, or use --csv")
    return search_dir


def _last_row_value(path: Path, column: str) -> float:
    rows = read_rows(path)
    if not rows:
        raise CorrelationError(f"{path} has no rows yet")
    value = parse_number(rows[-1].get(column))
    if value is None:
        raise CorrelationError(f"{path}: the last row has no {column} value"
                               + (" (the search ran without --post_val)" if column == "arch_eval_acc" else ""))
    return value


def _best_value(run: Path, split: str, view: str) -> float | None:
    """Return results.json -> best -> split -> view -> accuracy, or None when results.json is absent."""
    path = run / "results.json"
    if not path.is_file():
        return None
    results = _read_json(path)
    try:
        return float(results["best"][split][view]["accuracy"])
    except (KeyError, TypeError):
        views = list(results.get("best", {}).get(split, {})) if isinstance(results.get("best"), dict) else []
        raise CorrelationError(f"{path} has no best -> {split} -> {view} accuracy"
                               + (f" (views present: {', '.join(views)})" if views else "")) from None


def _metrics_fallback(run: Path, measure: str, view: str) -> float:
    """Return val_acc or test_acc from metrics.csv at the epoch with the highest val_acc."""
    if view != "plain":
        raise CorrelationError(f"{run} has no results.json, and metrics.csv contains only plain accuracies; "
                               "use --view plain or wait for the run to finish")
    path = run / "metrics.csv"
    if not path.is_file():
        raise CorrelationError(f"{run} has neither results.json nor metrics.csv")
    rows = [row for row in read_rows(path) if parse_number(row.get("val_acc")) is not None]
    if not rows:
        hint = " (it is a search run; val_acc and test_acc come from retraining runs)" \
            if (run / "arch_weights.jsonl").is_file() else ""
        raise CorrelationError(f"{path} has no val_acc values{hint}")
    best = max(rows, key=lambda row: parse_number(row["val_acc"]))  # max keeps the first of equal rows
    value = parse_number(best.get(measure))
    if value is None:
        raise CorrelationError(f"{path}: the epoch {best['epoch']} row with the best val_acc has no {measure} "
                               "(the run used --no-test_every_epoch)")
    return value


def run_measure(run: str | Path, measure: str, view: str = "plain") -> float:
    """Return one measure of a run directory, as defined in this module's docstring."""
    run = Path(run)
    if not run.is_dir():
        raise CorrelationError(f"run directory {run} not found")
    if measure == "search_acc":
        return _last_row_value(search_run_of(run) / "metrics.csv", "arch_acc")
    if measure == "search_eval_acc":
        return _last_row_value(search_run_of(run) / "metrics.csv", "arch_eval_acc")
    if measure in ("val_acc", "test_acc"):
        split = "PublicTest" if measure == "val_acc" else "PrivateTest"
        value = _best_value(run, split, view)
        return value if value is not None else _metrics_fallback(run, measure, view)
    raise CorrelationError(f"unknown measure {measure!r}; use one of {', '.join(RUN_MEASURES)}")


def read_run_pairs(runs: Sequence[str | Path], x: str, y: str, view: str = "plain") -> list[Pair]:
    """Read measures ``x`` and ``y`` of each run directory."""
    names = unique_names(runs)
    return [Pair(name, run_measure(run, x, view), run_measure(run, y, view)) for run, name in zip(runs, names)]


def format_pairs(pairs: Sequence[Pair], x: str, y: str) -> str:
    """Return the pairs as an aligned table."""
    width = max([len(pair.name) for pair in pairs] + [len("name")])
    lines = [f"{'name':<{width}}  {x:>12}  {y:>12}"]
    lines += [f"{pair.name:<{width}}  {pair.x:>12.4g}  {pair.y:>12.4g}" for pair in pairs]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python tools/correlation.py``."""
    parser = argparse.ArgumentParser(
        prog="python tools/correlation.py",
        description="Kendall tau-b and Spearman rho between two rankings of architectures, with p-values.",
        epilog="Run measures: search_acc is arch_acc of the search run's last metrics.csv row; search_eval_acc "
               "its arch_eval_acc; val_acc and test_acc are PublicTest and PrivateTest accuracy of the "
               "validation-selected checkpoint from results.json (metrics.csv at the best val_acc epoch "
               "while a run has no results.json).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="CSV file with a header row, one row per architecture")
    source.add_argument("--runs", nargs="+", metavar="DIR", help="run directories, one per architecture")
    parser.add_argument("--x", required=True, help="first measure: a CSV column, or with --runs one of "
                                                   f"{', '.join(RUN_MEASURES)}")
    parser.add_argument("--y", required=True, help="second measure, as --x")
    parser.add_argument("--name", default=None, help="CSV column that names each architecture (default: line numbers)")
    parser.add_argument("--view", default="plain", choices=VIEWS,
                        help="with --runs: plain or tencrop accuracies from results.json (default: plain)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; invalid input exits with status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runs:
        for measure in (args.x, args.y):
            if measure not in RUN_MEASURES:
                parser.error(f"with --runs, --x and --y must be one of {', '.join(RUN_MEASURES)}; got {measure!r}")
    try:
        if args.csv:
            pairs = read_csv_pairs(args.csv, args.x, args.y, args.name)
        else:
            pairs = read_run_pairs(args.runs, args.x, args.y, args.view)
        result = rank_correlation([p.x for p in pairs], [p.y for p in pairs])
    except (CorrelationError, MetricsError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(format_pairs(pairs, args.x, args.y))
    print(result.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
