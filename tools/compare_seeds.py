"""Repeat a training stage over several seeds and report the mean and standard deviation.

Run mode starts the command after ``--`` once per seed, appending ``--seed S --save PREFIX-seedS``,
then collects the runs::

    python tools/compare_seeds.py --seeds 1 2 3 --out runs/cmp -- python train_FER2013.py --epochs 2

Collect mode reads runs that exist already::

    python -m tools.compare_seeds collect runs/cmp-seed1 runs/cmp-seed2 --out cmp.csv

From each run's ``results.json`` it takes the accuracy of the validation-selected checkpoint
(``best``, or the entry named by ``--tag``) on PrivateTest (test) and PublicTest (validation),
plain and, when the run evaluated it, tencrop. A cross-validated fine-tuning run (CK+48, JAFFE)
has a ``summary.json`` instead, and gives its mean accuracy over folds (``folds``).

The text ``{seed}`` anywhere in the command is replaced by the seed, so each seed can start
from its own checkpoint::

    python tools/compare_seeds.py --seeds 1 2 3 --out runs/jaffe -- \
        python train_JAFFE.py --checkpoint runs/cmp-seed{seed}/best.pt --epochs 15 The CSV file has one row per run, then a ``mean``
and a ``std`` row. The standard deviation is the sample one (n - 1 in the denominator), so it
is empty for a single run.

A ``--save`` value without a slash makes the training scripts create
``runs/<stage>-PREFIX-seedS-<YYYYmmdd-HHMMSS>``. Run mode then collects the newest such
directory; give a PREFIX with a slash (``runs/cmp``) to get fixed directory names.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as ``python tools/compare_seeds.py``: make the repository root importable.
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import argparse
import csv
import json
import logging
import math
import os
import re
import shlex
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
FOLDS_FILE = "summary.json"
SPLITS = ("PrivateTest", "PublicTest", "folds")
SEED_PLACEHOLDER = "{seed}"
VIEWS = ("plain", "tencrop")
APPENDED_OPTIONS = ("--seed", "--save")


class ResultsError(ValueError):
    """A run directory whose results.json is missing or lacks the requested figures."""


@dataclass
class RunResult:
    """The accuracies of one run: keys such as ``PrivateTest_plain``, values in percent."""

    run: Path
    seed: int | None
    epoch: int | None
    accuracies: dict[str, float] = field(default_factory=dict)


@dataclass
class Summary:
    """Mean and sample standard deviation of one accuracy over ``n`` runs (std is NaN when n < 2)."""

    key: str
    n: int
    mean: float
    std: float

    def format(self) -> str:
        split, view = self.key.split("_", 1)
        spread = f"{self.std:.2f}" if not math.isnan(self.std) else "n/a"
        return f"{split} {view}: {self.mean:.2f} \u00b1 {spread} % (n = {self.n})"


def accuracy_keys() -> list[str]:
    """Return the accuracy columns in output order."""
    return [f"{split}_{view}" for split in SPLITS for view in VIEWS]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path} is not valid JSON ({error})") from None


def _read_seed(run: Path) -> int | None:
    """Return the seed recorded in ``run/args.json``, or None when the file or the field is missing."""
    path = run / "args.json"
    if not path.is_file():
        return None
    try:
        seed = json.loads(path.read_text()).get("seed")
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON; the seed column stays empty", path)
        return None
    return None if seed is None else int(seed)


def read_folds(run: Path) -> RunResult:
    """Read the mean accuracy over folds from the ``summary.json`` of a cross-validated run."""
    path = run / FOLDS_FILE
    report = _load_json(path)
    accuracies: dict[str, float] = {}
    for view, key in (("plain", "accuracy"), ("tencrop", "accuracy_tencrop")):
        entry = report.get(key) if isinstance(report, dict) else None
        if isinstance(entry, dict) and "mean" in entry:
            accuracies[f"folds_{view}"] = float(entry["mean"])
    if not accuracies:
        raise ResultsError(f"{path} has no accuracy over folds: a zero-shot run has none, so leave it out")
    if not report.get("complete", True):
        logger.warning("%s: not every fold has finished; the mean covers folds %s", path, report.get("folds_run"))
    return RunResult(run, _read_seed(run), None, accuracies)


def read_run(run: str | Path, tag: str = "best") -> RunResult:
    """Read the accuracies of the ``tag`` checkpoint from ``run/results.json`` (or the mean over
    folds from ``run/summary.json``), and the seed from ``args.json``."""
    run = Path(run)
    path = run / RESULTS_FILE
    if not path.is_file() and (run / FOLDS_FILE).is_file():
        return read_folds(run)
    if not path.is_file():
        raise ResultsError(f"{path} not found: the run has not finished, or {run} is not a run directory")
    report = _load_json(path)
    if not isinstance(report, dict):
        raise ResultsError(f"{path} is not a JSON object")

    entry = report.get(tag)
    if not isinstance(entry, dict):
        tags = [key for key, value in report.items() if isinstance(value, dict) and "checkpoint" in value]
        raise ResultsError(f"{path} has no {tag!r} checkpoint entry (entries: {', '.join(tags) or 'none'}); "
                           "choose one with --tag")

    accuracies: dict[str, float] = {}
    for split in SPLITS:
        views = entry.get(split)
        if not isinstance(views, dict):
            continue
        for view in VIEWS:
            summary = views.get(view)
            if isinstance(summary, dict) and "accuracy" in summary:
                accuracies[f"{split}_{view}"] = float(summary["accuracy"])
    if not accuracies:
        raise ResultsError(f"{path}: the {tag!r} entry has no PrivateTest or PublicTest accuracy")

    epoch = entry.get("epoch")
    return RunResult(run, _read_seed(run), None if epoch is None else int(epoch), accuracies)


def summarise(results: Sequence[RunResult]) -> list[Summary]:
    """Return the mean and sample standard deviation of every accuracy that some run has."""
    summaries = []
    for key in accuracy_keys():
        values = [r.accuracies[key] for r in results if key in r.accuracies]
        if not values:
            continue
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        summaries.append(Summary(key, len(values), statistics.fmean(values), std))
    return summaries


def write_csv(results: Sequence[RunResult], summaries: Sequence[Summary], path: str | Path) -> Path:
    """Write one row per run, then the ``mean`` and ``std`` rows, to ``path``."""
    path = Path(path)
    keys = [s.key for s in summaries]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run", "seed", "epoch", *keys])
        for result in results:
            writer.writerow([str(result.run), "" if result.seed is None else result.seed,
                             "" if result.epoch is None else result.epoch,
                             *[_number(result.accuracies.get(key)) for key in keys]])
        writer.writerow(["mean", "", "", *[_number(s.mean) for s in summaries]])
        writer.writerow(["std", "", "", *[_number(s.std) for s in summaries]])
    return path


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    return f"{value:.6f}"


def format_table(results: Sequence[RunResult], summaries: Sequence[Summary]) -> str:
    """Return the per-run accuracies and the mean +- std lines as text."""
    keys = [s.key for s in summaries]
    width = max([len(str(r.run)) for r in results] + [3])
    lines = [f"{'run':<{width}}  {'seed':>5}  {'epoch':>5}" + "".join(f"  {k:>19}" for k in keys)]
    for r in results:
        cells = "".join(f"  {r.accuracies[k]:>19.2f}" if k in r.accuracies else f"  {'':>19}" for k in keys)
        lines.append(f"{str(r.run):<{width}}  {'' if r.seed is None else r.seed:>5}  "
                     f"{'' if r.epoch is None else r.epoch:>5}{cells}")
    lines.extend(s.format() for s in summaries)
    return "\n".join(lines)


def report(runs: Sequence[Path], out: Path, tag: str) -> int:
    """Collect ``runs``, write the CSV file and print the table; return the number of unreadable runs."""
    results: list[RunResult] = []
    failed = 0
    for run in runs:
        try:
            results.append(read_run(run, tag))
        except ResultsError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    if not results:
        return failed or 1
    summaries = summarise(results)
    write_csv(results, summaries, out)
    print(format_table(results, summaries))
    print(f"wrote {out}")
    return failed


# ---------------------------------------------------------------------------------------------
# Run mode


def check_command(command: Sequence[str]) -> None:
    """Raise ``ValueError`` when ``command`` is empty or sets an option that run mode appends."""
    if not command:
        raise ValueError("no command after '--': give the training command to repeat, such as "
                         "-- python train_FER2013.py --epochs 2")
    for word in command:
        for option in APPENDED_OPTIONS:
            if word == option or word.startswith(option + "="):
                raise ValueError(f"the command already sets {option}; compare_seeds appends {option} for every "
                                 "seed, so remove it")


def save_name(prefix: str, seed: int) -> str:
    """Return the ``--save`` value of one seed's run."""
    return f"{prefix}-seed{seed}"


def find_run_dir(save: str, started: float, runs_root: Path = Path("runs")) -> Path | None:
    """Return the directory a training script made for ``--save save``: the path itself when it
    contains a slash, else the newest ``runs/<stage>-<save>-<YYYYmmdd-HHMMSS>`` changed since ``started``."""
    if "/" in save or os.sep in save:
        return Path(save)
    pattern = re.compile(rf"^[A-Za-z]+-{re.escape(save)}-\d{{8}}-\d{{6}}$")
    candidates = [path for path in runs_root.glob(f"*-{save}-*")
                  if path.is_dir() and pattern.match(path.name) and path.stat().st_mtime >= started - 1]
    return max(candidates, key=lambda path: path.stat().st_mtime) if candidates else None


def run_seeds(command: Sequence[str], seeds: Sequence[int], prefix: str, *, keep_going: bool = False,
              skip_existing: bool = False) -> tuple[list[Path], list[int]]:
    """Run ``command`` once per seed; return (run directories found, seeds whose command failed)."""
    runs: list[Path] = []
    failed: list[int] = []
    for seed in seeds:
        save = save_name(prefix, seed)
        finished = [Path(save) / name for name in (RESULTS_FILE, FOLDS_FILE) if (Path(save) / name).is_file()]
        if skip_existing and ("/" in save or os.sep in save) and finished:
            print(f"seed {seed}: {finished[0]} exists; not run again", flush=True)
            runs.append(Path(save))
            continue
        full = [word.replace(SEED_PLACEHOLDER, str(seed)) for word in command] + ["--seed", str(seed), "--save", save]
        print(f"seed {seed}: {shlex.join(full)}", flush=True)
        started = time.time()
        status = subprocess.run(full, check=False).returncode
        if status != 0:
            print(f"error: seed {seed}: the command exited with status {status}", file=sys.stderr)
            failed.append(seed)
            if not keep_going:
                break
            continue
        run_dir = find_run_dir(save, started)
        if run_dir is None:
            print(f"error: seed {seed}: no run directory runs/<stage>-{save}-<time> was created", file=sys.stderr)
            failed.append(seed)
            continue
        runs.append(run_dir)
    return runs, failed


def build_run_parser() -> argparse.ArgumentParser:
    """Build the argument parser of run mode."""
    parser = argparse.ArgumentParser(
        prog="python tools/compare_seeds.py",
        usage="%(prog)s --seeds S [S ...] --out PREFIX [options] -- COMMAND...\n"
              "       %(prog)s collect RUN_DIR... [--out CSV] [--tag TAG]",
        description="Run a training command once per seed with --seed S --save PREFIX-seedS appended and {seed} "
                    "replaced by S, then report the mean and standard deviation of the test and validation "
                    "accuracy, or of the mean accuracy over folds.")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds to run")
    parser.add_argument("--out", required=True, metavar="PREFIX",
                        help="run name prefix: run S is saved as PREFIX-seedS, and the table goes to PREFIX.csv")
    parser.add_argument("--csv", type=Path, default=None, help="table file (default: PREFIX.csv)")
    parser.add_argument("--tag", default="best", help="results.json entry to read (default: best)")
    parser.add_argument("--keep_going", action="store_true",
                        help="run the remaining seeds after a command fails (default: stop)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="do not rerun a seed whose PREFIX-seedS/results.json or summary.json exists "
                             "(PREFIX with a slash)")
    return parser


def build_collect_parser() -> argparse.ArgumentParser:
    """Build the argument parser of collect mode."""
    parser = argparse.ArgumentParser(
        prog="python tools/compare_seeds.py collect",
        description="Report the mean and standard deviation of the test and validation accuracy of finished runs.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories with results.json, or summary.json for cross-validated runs")
    parser.add_argument("--out", type=Path, default=Path("seeds.csv"), help="table file (default: seeds.csv)")
    parser.add_argument("--tag", default="best", help="results.json entry to read (default: best)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line. Returns 0 when every run succeeded and was read, 1 otherwise."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["collect"]:
        args = build_collect_parser().parse_args(argv[1:])
        return 1 if report(args.runs, args.out, args.tag) else 0

    parser = build_run_parser()
    if "--" not in argv:
        parser.parse_known_args(argv)  # prints --help, or reports missing options, first
        parser.error("put the training command after '--', such as -- python train_FER2013.py --epochs 2")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    try:
        check_command(command)
    except ValueError as error:
        parser.error(str(error))
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has repeated values: {args.seeds}")
    runs, failed = run_seeds(command, args.seeds, args.out, keep_going=args.keep_going,
                             skip_existing=args.skip_existing)
    unreadable = report(runs, args.csv or Path(f"{args.out}.csv"), args.tag) if runs else 0
    if failed:
        print(f"error: seeds {', '.join(map(str, failed))} failed", file=sys.stderr)
    return 1 if failed or unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
