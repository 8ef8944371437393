"""Facial Expression Similarity (FES): how often annotators split their votes between two classes.

The FER+ vote file ``fer2013new.csv`` gives, for every image of ``fer2013.csv`` (row i of one
file is image i of the other), how many of ten annotators chose each emotion. For two classes
a != b, FES[a][b] is the mean over the selected rows of min(v_a, v_b) / max(v_a, v_b), where a
row adds 0 unless both vote counts are positive. Rows without any of the seven votes still
count in the mean. The diagonal is 1. The matrix is in FER2013 class order (``CLASSES``).

Usage::

    python tools/fes.py fer2013new.csv --rows training --out fes.json --plot fes.png
    python -m tools.fes fer2013new.csv --rows all --out fes-all.json
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as ``python tools/fes.py``: make the repository root importable.
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import argparse
import contextlib
import csv
import json
import logging
import os
import tempfile
from typing import Any, Sequence

import numpy as np

from dataloader.fer2013 import CLASSES, SPLITS, DatasetError
from tools.experiment import write_json

logger = logging.getLogger(__name__)

# FER+ vote column -> FER2013 class index. The columns contempt, unknown and NF are not used.
VOTE_COLUMNS: dict[str, int] = {
    "anger": 0,
    "disgust": 1,
    "fear": 2,
    "happiness": 3,
    "sadness": 4,
    "surprise": 5,
    "neutral": 6,
}
USAGE_COLUMN = "Usage"
ROW_CHOICES: tuple[str, ...] = ("training", "all")
MAX_ERRORS = 20
TOLERANCE = 1e-9


def _from_upper_triangle(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Build a symmetric matrix with a unit diagonal from its upper triangle, row by row."""
    size = len(rows) + 1
    matrix = np.eye(size)
    for i, values in enumerate(rows):
        if len(values) != size - 1 - i:
            raise ValueError(f"row {i} of the upper triangle has {len(values)} values, expected {size - 1 - i}")
        for offset, value in enumerate(values):
            j = i + 1 + offset
            matrix[i, j] = matrix[j, i] = value
    return matrix


# The FES matrix published by the Auto-FERNet authors, in CLASSES order. It was
# computed over all rows of the vote file, test rows included: compute_fes(path, rows="all")
# reproduces it to 4 decimals.
PUBLISHED_FES: np.ndarray = _from_upper_triangle(
    [
        [0.0272, 0.0219, 0.0200, 0.0488, 0.0322, 0.0584],  # Angry
        [0.0095, 0.0115, 0.0278, 0.0138, 0.0321],  # Disgust
        [0.0152, 0.0279, 0.0462, 0.0338],  # Fear
        [0.0258, 0.0345, 0.0558],  # Happy
        [0.0347, 0.1384],  # Sad
        [0.0530],  # Surprise
    ]
)
PUBLISHED_FES.setflags(write=False)


# ---------------------------------------------------------------------------------------------
# Reading the vote file


def _find_vote_columns(header: list[str], path: Path) -> tuple[int, list[int]]:
    """Return the position of Usage and of each vote column, in FER2013 class order."""
    positions = {name.strip().lower(): index for index, name in enumerate(header)}
    expected = [USAGE_COLUMN, *VOTE_COLUMNS]
    missing = [name for name in expected if name.lower() not in positions]
    if missing:
        raise DatasetError(
            f"{path}, line 1: column(s) {missing} missing from header {header}; expected the FER+ "
            f"header with the columns {expected} in any order"
        )
    by_class = sorted(VOTE_COLUMNS, key=VOTE_COLUMNS.__getitem__)
    return positions[USAGE_COLUMN.lower()], [positions[name] for name in by_class]


def _parse_votes(row: list[str], header: list[str], columns: list[int]) -> tuple[list[int] | None, str | None]:
    """Parse the seven vote counts of one row. Return (votes, None) or (None, problem)."""
    votes = []
    for position in columns:
        text = row[position].strip()
        if not (text.isascii() and text.isdigit()):
            name = header[position].strip()
            return None, f"column '{name}' is '{text}', expected a non-negative integer vote count"
        votes.append(int(text))
    return votes, None


def read_votes(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a FER+ vote file into (Usage of each row, votes (N, 7) int64 in FER2013 class order).

    Columns are found by header name (case-insensitively), so any column order works. Blank
    lines are skipped. Raises DatasetError listing up to MAX_ERRORS invalid rows, each with its
    1-based line number (the header is line 1) and column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FER+ vote file {path} not found; download fer2013new.csv from https://github.com/microsoft/FERPlus"
        )

    usages: list[str] = []
    rows: list[list[int]] = []
    errors: list[str] = []

    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream, skipinitialspace=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path} is empty; expected the FER+ header line and one row per image")
            usage_column, vote_columns = _find_vote_columns(header, path)

            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                problem = None
                votes = None
                usage = ""
                if len(row) != len(header):
                    problem = f"expected {len(header)} fields as in the header, found {len(row)}"
                else:
                    usage = row[usage_column].strip()
                    votes, problem = _parse_votes(row, header, vote_columns)
                    if problem is None and usage not in SPLITS:
                        problem = f"column '{USAGE_COLUMN}' is '{usage}', expected one of {', '.join(SPLITS)}"
                if problem is not None:
                    errors.append(f"{path}, line {reader.line_num}: {problem}")
                    if len(errors) >= MAX_ERRORS:
                        break
                    continue
                usages.append(usage)
                rows.append(votes)
        except csv.Error as error:
            raise DatasetError(f"{path}, line {reader.line_num}: invalid CSV ({error})") from error
        except UnicodeDecodeError as error:
            raise DatasetError(f"{path}: not UTF-8 text ({error}); expected FER+'s fer2013new.csv") from error

    if errors:
        more = " (stopped after the first errors)" if len(errors) >= MAX_ERRORS else ""
        raise DatasetError(f"{path}: {len(errors)} invalid row(s){more}:\n" + "\n".join(errors), errors)
    if not rows:
        raise DatasetError(f"{path} contains no data rows after the header; expected one row per image")

    votes_array = np.asarray(rows, dtype=np.int64).reshape(-1, len(CLASSES))
    logger.info("read %d rows of votes from %s", len(usages), path)
    return usages, votes_array


# ---------------------------------------------------------------------------------------------
# The matrix


def fes_matrix(votes: np.ndarray) -> np.ndarray:
    """Compute the FES matrix (7, 7) from vote counts (N, 7) in FER2013 class order.

    Every row counts in the mean, including rows whose votes are all zero.
    """
    votes = np.asarray(votes, dtype=np.float64)
    if votes.ndim != 2 or votes.shape[1] != len(CLASSES):
        raise ValueError(f"votes have shape {votes.shape}; expected (N, {len(CLASSES)}) in the order {CLASSES}")
    if votes.shape[0] == 0:
        raise ValueError("votes have no rows; FES needs at least one row")
    if (votes < 0).any():
        raise ValueError("votes contain negative counts; expected counts >= 0")

    low = np.minimum(votes[:, :, None], votes[:, None, :])
    high = np.maximum(votes[:, :, None], votes[:, None, :])
    # low > 0 exactly when both counts are positive (so high > 0 too). Other pairs keep the ratio 0.
    ratios = np.divide(low, high, out=np.zeros_like(low), where=low > 0)
    matrix = ratios.mean(axis=0)
    np.fill_diagonal(matrix, 1.0)
    return matrix


def select_rows(usages: Sequence[str], votes: np.ndarray, rows: str) -> np.ndarray:
    """Return the vote rows that ``rows`` selects: ``training`` (Usage Training) or ``all``."""
    if rows not in ROW_CHOICES:
        raise ValueError(f"rows is {rows!r}; expected one of {', '.join(ROW_CHOICES)}")
    if len(usages) != len(votes):
        raise ValueError(f"{len(usages)} Usage values for {len(votes)} vote rows; expected one per row")
    if rows == "all":
        return votes
    mask = np.array([usage == "Training" for usage in usages], dtype=bool)
    return votes[mask]


def compute_fes(path: str | Path, rows: str = "training") -> np.ndarray:
    """Read the vote file at ``path`` and compute FES over the rows that ``rows`` selects.

    ``training`` (the default) uses only Usage == Training, so PublicTest and PrivateTest votes
    never shape training. ``all`` uses every row, as the published matrix did.
    """
    usages, votes = read_votes(path)
    selected = select_rows(usages, votes, rows)
    if len(selected) == 0:
        raise DatasetError(f"{path} has no rows with Usage Training; select rows='all' (--rows all) or check the Usage column")
    return fes_matrix(selected)


# ---------------------------------------------------------------------------------------------
# Files


def _matrix_problems(matrix: np.ndarray) -> list[str]:
    """List what makes ``matrix`` an invalid FES matrix (empty when valid)."""
    size = len(CLASSES)
    if matrix.shape != (size, size):
        return [f"the matrix has shape {matrix.shape}, expected ({size}, {size})"]
    if not np.isfinite(matrix).all():
        return ["the matrix contains NaN or infinite values"]
    problems = []
    if not np.allclose(matrix, matrix.T, rtol=0.0, atol=TOLERANCE):
        i, j = np.unravel_index(np.argmax(np.abs(matrix - matrix.T)), matrix.shape)
        problems.append(f"the matrix is not symmetric: [{i}][{j}] is {matrix[i, j]} but [{j}][{i}] is {matrix[j, i]}")
    if not np.allclose(np.diag(matrix), 1.0, rtol=0.0, atol=TOLERANCE):
        problems.append(f"the diagonal is {np.diag(matrix).tolist()}, expected all 1")
    if (matrix < 0).any() or (matrix > 1).any():
        problems.append("the matrix has values outside 0..1")
    return problems


def _as_matrix(matrix: Any) -> np.ndarray:
    array = np.asarray(matrix, dtype=np.float64)
    problems = _matrix_problems(array)
    if problems:
        raise ValueError("invalid FES matrix: " + "; ".join(problems))
    return array


def save_fes(matrix: np.ndarray, path: str | Path, *, source: str, rows: str) -> Path:
    """Write ``matrix`` to ``path`` as JSON (classes, matrix, source, rows) atomically."""
    array = _as_matrix(matrix)
    if rows not in ROW_CHOICES:
        raise ValueError(f"rows is {rows!r}; expected one of {', '.join(ROW_CHOICES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"classes": list(CLASSES), "matrix": array.tolist(), "source": str(source), "rows": rows}
    return write_json(data, path)


def load_fes(path: str | Path) -> np.ndarray:
    """Read a matrix written by ``save_fes``, checking the class names, shape, symmetry and diagonal."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FES file {path} not found; write one with python tools/fes.py VOTES_CSV --out {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: invalid JSON ({error}); expected a file written by tools/fes.py") from error
    if not isinstance(data, dict) or "classes" not in data or "matrix" not in data:
        raise DatasetError(f"{path}: expected a JSON object with the keys 'classes' and 'matrix'")
    if list(data["classes"]) != list(CLASSES):
        raise DatasetError(f"{path}: classes are {data['classes']}, expected {list(CLASSES)} in this order")
    try:
        matrix = np.asarray(data["matrix"], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{path}: 'matrix' is not a table of numbers ({error})") from error
    problems = _matrix_problems(matrix)
    if problems:
        raise DatasetError(f"{path}: invalid FES matrix: " + "; ".join(problems), [f"{path}: {p}" for p in problems])
    return matrix


def format_fes(matrix: np.ndarray) -> str:
    """Format ``matrix`` as a text table with class names and 4 decimals."""
    array = np.asarray(matrix, dtype=np.float64)
    width = max(len(name) for name in CLASSES) + 1
    lines = [" " * width + "".join(f"{name:>{width}}" for name in CLASSES)]
    for name, values in zip(CLASSES, array):
        lines.append(f"{name:<{width}}" + "".join(f"{value:>{width}.4f}" for value in values))
    return "\n".join(lines)


def plot_fes(matrix: np.ndarray, out_png: str | Path, title: str = "Facial Expression Similarity") -> Path:
    """Draw ``matrix`` as a heatmap with class labels and values, written to ``out_png`` atomically.

    The colour scale spans the off-diagonal values, and the diagonal (always 1) is grey.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    array = _as_matrix(matrix)
    size = len(CLASSES)
    off_diagonal = np.ma.masked_array(array, mask=np.eye(size, dtype=bool))

    figure = Figure(figsize=(7, 6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_facecolor("lightgrey")
    image = axes.imshow(off_diagonal, cmap="viridis", vmin=0.0, vmax=float(off_diagonal.max()))
    figure.colorbar(image, ax=axes, label="FES")
    axes.set_xticks(range(size), labels=CLASSES, rotation=45, ha="right")
    axes.set_yticks(range(size), labels=CLASSES)
    axes.set_title(title)
    threshold = 0.5 * float(off_diagonal.max())
    for i in range(size):
        for j in range(size):
            colour = "black" if i == j or array[i, j] > threshold else "white"
            axes.text(j, i, f"{array[i, j]:.4f}", ha="center", va="center", fontsize=8, color=colour)

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out_png.name}.", suffix=".tmp", dir=out_png.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            figure.savefig(file, format="png", dpi=120)
        # mkstemp creates the file readable by its owner only; give it the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, out_png)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    return out_png


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python tools/fes.py``."""
    parser = argparse.ArgumentParser(
        prog="python tools/fes.py",
        description="Compute the Facial Expression Similarity matrix from the FER+ vote file fer2013new.csv.",
    )
    parser.add_argument("votes", type=Path, metavar="VOTES_CSV", help="FER+ vote file fer2013new.csv")
    parser.add_argument(
        "--rows",
        choices=ROW_CHOICES,
        default="training",
        help="rows to average over: training (Usage Training only) or all (test rows too, as the "
        "published matrix did) (default: training)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the matrix as a PNG heatmap here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; invalid input exits with status 2 after printing the error."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        matrix = compute_fes(args.votes, args.rows)
    except (DatasetError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    save_fes(matrix, args.out, source=str(args.votes), rows=args.rows)
    print(f"wrote {args.out}")
    if args.plot is not None:
        plot_fes(matrix, args.plot, title=f"Facial Expression Similarity ({args.rows} rows)")
        print(f"wrote {args.plot}")
    print(f"FES over {args.rows} rows of {args.votes}:")
    print(format_fes(matrix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
