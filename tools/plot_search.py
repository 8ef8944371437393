"""Plot how the architecture weights of a search run moved, edge by edge.

Reads ``arch_weights.jsonl`` from a search run directory: one JSON record per epoch with the
softmax weights of the 14 edges of each cell type (one weight per operation) and the decision
state of every edge after that epoch (-1 undecided, 0 pruned, k > 0 fixed to operation k).
The figure has one block per cell type and, inside it, one panel per edge: row j holds the
inputs of intermediate node j. Each panel draws one line per operation (a legend shared by all
panels names them). A vertical dashed line marks the epoch whose decision fixed the edge,
labelled with the chosen operation, or with "pruned" when the edge was dropped.

Usage::

    python tools/plot_search.py runs/search-cpu --out search-weights.png
    python -m tools.plot_search runs/search-cpu/arch_weights.jsonl --out weights.pdf
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as ``python tools/plot_search.py``: make the repository root importable.
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import argparse
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from NAS.model_search import CELL_TYPES, EDGES, NODES, PRUNED, UNDECIDED, edge_sources
from NAS.operations import PRIMITIVES
from tools.plot_curves import save_figure

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "arch_weights.jsonl"
CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell"}
INPUT_NAMES = (r"$c_{k-2}$", r"$c_{k-1}$")


class SearchLogError(ValueError):
    """An ``arch_weights.jsonl`` file that is missing or not in the format ``train_search.py`` writes."""


@dataclass
class SearchHistory:
    """The per-epoch architecture weights and decisions of one search run."""

    path: Path
    epochs: list[int]
    operations: list[str]
    weights: dict[str, np.ndarray]  # cell type -> (epochs, edges, operations) softmax weights
    decisions: dict[str, np.ndarray]  # cell type -> (epochs, edges) decision states

    def decision_epochs(self, cell_type: str) -> list[tuple[int, int] | None]:
        """Return, per edge, (epoch, state) of the first record where it is no longer undecided, or None."""
        result: list[tuple[int, int] | None] = []
        states = self.decisions[cell_type]
        for edge in range(states.shape[1]):
            decided = np.flatnonzero(states[:, edge] != UNDECIDED)
            if decided.size:
                row = int(decided[0])
                result.append((self.epochs[row], int(states[row, edge])))
            else:
                result.append(None)
        return result


def weights_path(run: str | Path) -> Path:
    """Return the ``arch_weights.jsonl`` of a search run directory, or ``run`` itself when it is a file."""
    path = Path(run)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise SearchLogError(f"{path} not found: give a search run directory that contains {WEIGHTS_FILE} "
                             "(written by train_search.py), or the file itself")
    return path


def _check_record(record: Any, where: str, operations: int | None) -> int:
    """Check one record's layout and return its operation count."""
    if not isinstance(record, dict):
        raise SearchLogError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("epoch", "weights", "decisions"):
        if key not in record:
            raise SearchLogError(f"{where}: the record has no {key!r} field")
    for key in ("weights", "decisions"):
        if not isinstance(record[key], dict) or any(t not in record[key] for t in CELL_TYPES):
            raise SearchLogError(f"{where}: {key!r} must map each of {', '.join(CELL_TYPES)} to a list")
    for cell_type in CELL_TYPES:
        try:
            weights = np.asarray(record["weights"][cell_type], dtype=float)
        except (TypeError, ValueError):
            raise SearchLogError(f"{where}: {cell_type} weights are not a table of numbers") from None
        if weights.ndim != 2 or weights.shape[0] != EDGES:
            raise SearchLogError(f"{where}: {cell_type} weights must be {EDGES} rows (edges) of operation "
                                 f"weights, got shape {weights.shape}")
        if operations is not None and weights.shape[1] != operations:
            raise SearchLogError(f"{where}: {cell_type} weights have {weights.shape[1]} operations per edge, "
                                 f"but earlier records have {operations}")
        operations = weights.shape[1]
        decisions = record["decisions"][cell_type]
        if (not isinstance(decisions, list) or len(decisions) != EDGES
                or any(not isinstance(d, int) or not UNDECIDED <= d < operations for d in decisions)):
            raise SearchLogError(f"{where}: {cell_type} decisions must be {EDGES} integers in "
                                 f"{UNDECIDED}..{operations - 1}, got {decisions!r}")
    assert operations is not None
    return operations


def read_search_history(run: str | Path) -> SearchHistory:
    """Read ``arch_weights.jsonl`` of a search run (a run directory or the file).

    An unreadable last line is skipped with a warning, since a run stopped while writing leaves
    one. An unreadable line anywhere else raises ``SearchLogError``.
    """
    path = weights_path(run)
    lines = path.read_text().splitlines()
    records: list[dict[str, Any]] = []
    operations: int | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s line %d is not valid JSON (%s); skipped as an unfinished last line",
                               path, number, error)
                continue
            raise SearchLogError(f"{path} line {number} is not valid JSON ({error})") from None
        operations = _check_record(record, f"{path} line {number}", operations)
        records.append(record)
    if not records:
        raise SearchLogError(f"{path} has no records yet: the search writes one after each epoch")
    assert operations is not None

    if operations == len(PRIMITIVES):
        names = list(PRIMITIVES)
    else:
        logger.warning("%s has %d operations per edge but NAS/operations.py has %d; operations are numbered",
                       path, operations, len(PRIMITIVES))
        names = [f"operation {i}" for i in range(operations)]
    return SearchHistory(
        path=path,
        epochs=[int(record["epoch"]) for record in records],
        operations=names,
        weights={t: np.array([record["weights"][t] for record in records], dtype=float) for t in CELL_TYPES},
        decisions={t: np.array([record["decisions"][t] for record in records], dtype=int) for t in CELL_TYPES},
    )


# Line colours of the operations other than ``none``: matplotlib's ten defaults with grey swapped
# for indigo, since grey marks pruned edges.
OPERATION_COLOURS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "#393b79", "C8", "C9")


def operation_styles(operations: list[str]) -> list[dict[str, Any]]:
    """Return the line style of each operation: ``none`` is a thin black dotted line, the others take
    ``OPERATION_COLOURS`` in turn (solid lines, then dashed past ten)."""
    styles = []
    colour = 0
    for name in operations:
        if name == "none":
            styles.append({"color": "black", "linestyle": ":", "linewidth": 1.0})
            continue
        styles.append({"color": OPERATION_COLOURS[colour % len(OPERATION_COLOURS)],
                       "linestyle": ("-", "--", "-.")[(colour // len(OPERATION_COLOURS)) % 3], "linewidth": 1.1})
        colour += 1
    return styles


def edge_title(node: int, source: int) -> str:
    """Return a panel title such as ``node 2 <- c_{k-1}``."""
    name = INPUT_NAMES[source] if source < 2 else f"node {source - 2}"
    return f"node {node} \u2190 {name}"


def _draw_decision(axes, epoch: int, state: int, history: SearchHistory, styles: list[dict[str, Any]]) -> None:
    """Mark the epoch an edge was decided, labelled with the chosen operation or "pruned"."""
    colour = "grey" if state == PRUNED else styles[state]["color"]
    label = "pruned" if state == PRUNED else history.operations[state]
    axes.axvline(epoch, color=colour, linestyle="--", linewidth=1.0)
    first, last = history.epochs[0], history.epochs[-1]
    right_half = last > first and (epoch - first) / (last - first) > 0.6
    axes.annotate(label, xy=(epoch, 1.0), xycoords=("data", "axes fraction"), xytext=(-3 if right_half else 3, -3),
                  textcoords="offset points", ha="right" if right_half else "left", va="top", fontsize=7,
                  color=colour, bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
                                      "alpha": 0.85})


def plot_search(history: SearchHistory, out: str | Path, title: str | None = None) -> Path:
    """Draw the weights of every edge over the epochs, with decision markers, and save to ``out``."""
    styles = operation_styles(history.operations)
    sources = edge_sources()
    columns = NODES + 1
    low = min(float(history.weights[t].min()) for t in CELL_TYPES)
    high = max(float(history.weights[t].max()) for t in CELL_TYPES)
    pad = 0.05 * max(high - low, 1e-3)
    uniform = 1.0 / len(history.operations)
    marker = "." if len(history.epochs) < 15 else None

    figure = Figure(figsize=(3.0 * columns, 2.1 * 2 * NODES + 1.2), layout="constrained")
    FigureCanvasAgg(figure)
    blocks = figure.subfigures(len(CELL_TYPES), 1)
    for block, cell_type in zip(blocks, CELL_TYPES):
        block.suptitle(CELL_TITLES[cell_type], fontsize=13, fontweight="bold")
        grid = block.subplots(NODES, columns, sharex=True, sharey=True, squeeze=False)
        decided = history.decision_epochs(cell_type)
        for edge, (node, source) in enumerate(sources):
            axes = grid[node, source]
            weights = history.weights[cell_type][:, edge, :]
            state = decided[edge][1] if decided[edge] else None
            for op, style in enumerate(styles):
                width = 2.4 if state is not None and op == state and state != PRUNED else style["linewidth"]
                axes.plot(history.epochs, weights[:, op], marker=marker, markersize=3,
                          **{**style, "linewidth": width})
            axes.axhline(uniform, color="grey", linewidth=0.6, alpha=0.6)
            if decided[edge] is not None:
                _draw_decision(axes, decided[edge][0], decided[edge][1], history, styles)
            axes.set_title(edge_title(node, source), fontsize=9)
            axes.set_ylim(low - pad, high + pad)
            axes.grid(True, alpha=0.25)
            axes.tick_params(labelsize=7)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        for node in range(NODES):
            grid[node, 0].set_ylabel("softmax weight", fontsize=8)
            for source in range(node + 2, columns):
                grid[node, source].set_axis_off()
        for source in range(columns):
            grid[NODES - 1, source].set_xlabel("epoch", fontsize=8)

        if cell_type == CELL_TYPES[0]:
            # The shared legend fills the empty corner right of node 0's panels.
            handles = [Line2D([], [], **style) for style in styles]
            handles.append(Line2D([], [], color="grey", linewidth=0.6))
            labels = [*history.operations, f"uniform (1/{len(history.operations)})"]
            legend = grid[0, columns - 1].legend(handles, labels, loc="center right", ncols=3, fontsize=9,
                                                 title="operation", frameon=True)
            legend.set_in_layout(False)
    figure.suptitle(title or f"architecture weights of {history.path.parent.name}", fontsize=14)
    return save_figure(figure, out)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python tools/plot_search.py``."""
    parser = argparse.ArgumentParser(
        prog="python tools/plot_search.py",
        description="Plot the softmax weight of every operation on every edge over the epochs of a search "
                    "run, with a marker at the epoch each edge was decided.")
    parser.add_argument("run", metavar="RUN_DIR", help=f"search run directory, or its {WEIGHTS_FILE}")
    parser.add_argument("--out", type=Path, required=True, help="output image (.png, .pdf or .svg)")
    parser.add_argument("--title", default=None, help="figure title (default: names the run directory)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a missing or malformed weights file exits with status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        history = read_search_history(args.run)
    except (SearchLogError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    plot_search(history, args.out, args.title)
    print(f"wrote {args.out} ({len(history.epochs)} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
