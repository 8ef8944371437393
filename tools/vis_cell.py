"""Draw the normal and reduction cells of a genotype.

Each cell becomes its own figure, written as ``PREFIX_normal.png``/``.pdf`` and
``PREFIX_reduce.png``/``.pdf``. The inputs c_{k-2} and c_{k-1} sit on the left, the four
intermediate nodes 0..3 on a line in the middle and the output c_{k} on the right. Edges from
c_{k-2} arc above the line, edges from c_{k-1} arc below it, and an edge between intermediate
nodes runs straight to its neighbour or arcs over (or under) the nodes it skips. Every edge
carries its operation name. Each label sits on its edge, or beside it when every point on the
edge is taken, where it overlaps no node and no other label and crosses the fewest other edges.
Grey edges into c_{k} show which states are concatenated.

The figures are drawn with matplotlib alone (Agg for PNG, matplotlib's PDF backend for PDF);
graphviz is not used.

Usage::

    python tools/vis_cell.py Auto_FERNet --out images/auto_fernet
    python -m tools.vis_cell runs/search-EXP-.../genotype.json --out cells/searched
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as ``python tools/vis_cell.py``: make the repository root importable.
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from NAS import genotypes as genotype_io
from NAS.genotypes import Genotype, GenotypeError
from tools.plot_curves import save_figure

logger = logging.getLogger(__name__)

CELL_TYPES = ("normal", "reduce")
CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell"}
FORMATS = ("png", "pdf")

# Layout in data units (the axes keep an equal aspect, so one unit is the same length on both axes).
COLUMN_GAP = 2.4  # horizontal distance between neighbouring columns
INPUT_OFFSET = 1.0  # c_{k-2} sits this far above the line of intermediate nodes, c_{k-1} as far below
NODE_RADIUS = 0.32
BOX_WIDTH, BOX_HEIGHT = 1.1, 0.6  # the boxes of c_{k-2}, c_{k-1} and c_{k}
ARC_RAD = 0.42  # curvature of an arc (matplotlib's arc3 rad): its bulge is rad / 2 times its chord
INCHES_PER_UNIT = 0.9
LABEL_FONT_SIZE = 9
# Points along an edge (Bezier parameter t) tried for its label, best first, and sideways shifts
# (in label heights) tried when every point on the edge itself is blocked.
LABEL_POSITIONS = (0.5, 0.44, 0.56, 0.38, 0.62, 0.32, 0.68, 0.26, 0.74, 0.2, 0.8)
LABEL_SHIFTS = (0.0, 1.1, -1.1, 2.2, -2.2)
LABEL_MARGIN_PX = 3.0

NODE_COLOURS = {"input": "#b4e5b4", "node": "#add8e6", "output": "#eee8aa"}
CONCAT_COLOUR = "#9a9a9a"


@dataclass
class Edge:
    """One drawn edge: from state ``source`` to state ``target`` (6 is the output c_{k})."""

    source: int
    target: int
    operation: str | None  # None for the unlabelled edges into c_{k}
    rad: float = 0.0


@dataclass
class CellDrawing:
    """A drawn cell: its figure and the label and node artists that must not overlap."""

    figure: Figure
    labels: list[Text]
    nodes: list[Patch]


def state_name(state: int) -> str:
    """Return the display name of a cell state: c_{k-2}, c_{k-1}, 0..3 or c_{k} (state 6)."""
    if state == 0:
        return r"$c_{k-2}$"
    if state == 1:
        return r"$c_{k-1}$"
    if state == genotype_io.NODES + 2:
        return r"$c_{k}$"
    return str(state - 2)


def state_position(state: int) -> tuple[float, float]:
    """Return the centre of a state's node in data units."""
    if state == 0:
        return 0.0, INPUT_OFFSET
    if state == 1:
        return 0.0, -INPUT_OFFSET
    return COLUMN_GAP * (state - 1), 0.0


def cell_edges(edges: Sequence[tuple[str, int]], concat: Sequence[int]) -> list[Edge]:
    """Return the edges of one cell with the curvature each is drawn with.

    Edges from c_{k-2} arc above the line of nodes, edges from c_{k-1} below it. Other edges run
    straight between neighbours and otherwise arc to the side that has fewer arcs over the same
    stretch. A repeated (source, target) pair is drawn with more curvature, alternating sides, so
    parallel edges stay apart.
    """
    output = genotype_io.NODES + 2
    drawn: list[Edge] = []
    for position, (operation, source) in enumerate(edges):
        drawn.append(Edge(source, position // 2 + 2, operation))
    drawn.extend(Edge(state, output, None) for state in concat)

    above: list[tuple[float, float]] = []
    below: list[tuple[float, float]] = []
    seen: dict[tuple[int, int], int] = {}
    concat_side = 0.0
    for edge in drawn:
        start, end = state_position(edge.source)[0], state_position(edge.target)[0]
        repeat = seen.get((edge.source, edge.target), 0)
        seen[(edge.source, edge.target)] = repeat + 1
        if edge.source == 0:
            side = -1.0
        elif edge.source == 1:
            side = 1.0
        elif edge.target == edge.source + 1 and repeat == 0:
            side = 0.0
        elif edge.operation is None:
            # Edges into c_{k} all go to the side with fewer labelled arcs, so they cross fewer labels.
            concat_side = concat_side or (-1.0 if len(above) < len(below) else 1.0)
            side = concat_side
        else:
            overlapping_above = sum(a < end and start < b for a, b in above)
            overlapping_below = sum(a < end and start < b for a, b in below)
            side = -1.0 if overlapping_above <= overlapping_below else 1.0
        if repeat % 2:
            # Odd repeats go to the other side (a straight edge's repeat goes above).
            side = 1.0 if side < 0 else -1.0
        elif repeat and not side:
            side = -1.0
        if side:
            (above if side < 0 else below).append((start, end))
        edge.rad = side * ARC_RAD * (1 + 0.6 * ((repeat + 1) // 2))
    return drawn


def bezier_points(edge: Edge, t: np.ndarray) -> np.ndarray:
    """Return points at parameters ``t`` on the quadratic Bezier curve that matplotlib's arc3
    connection style draws for ``edge``, in data units.

    The points match the drawn curve exactly because the axes keep an equal aspect.
    """
    start = np.array(state_position(edge.source))
    end = np.array(state_position(edge.target))
    dx, dy = end - start
    control = (start + end) / 2 + edge.rad * np.array([dy, -dx])
    t = np.asarray(t, dtype=float)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * end


def bezier_normal(edge: Edge, t: float) -> np.ndarray:
    """Return the unit normal of the edge's curve at parameter ``t``."""
    tangent = bezier_points(edge, np.array([t + 1e-3]))[0] - bezier_points(edge, np.array([t - 1e-3]))[0]
    normal = np.array([-tangent[1], tangent[0]])
    return normal / max(float(np.linalg.norm(normal)), 1e-12)


def add_node(axes, state: int) -> Patch:
    """Draw the node of ``state`` and return its patch."""
    x, y = state_position(state)
    if 2 <= state < genotype_io.NODES + 2:
        patch: Patch = Circle((x, y), NODE_RADIUS, facecolor=NODE_COLOURS["node"], edgecolor="black", zorder=3)
    else:
        kind = "output" if state > 1 else "input"
        patch = FancyBboxPatch((x - BOX_WIDTH / 2, y - BOX_HEIGHT / 2), BOX_WIDTH, BOX_HEIGHT,
                               boxstyle="round,pad=0.02,rounding_size=0.12", facecolor=NODE_COLOURS[kind],
                               edgecolor="black", zorder=3)
    axes.add_patch(patch)
    axes.text(x, y, state_name(state), ha="center", va="center", fontsize=12, zorder=4)
    return patch


def _inflate(box: Bbox, pixels: float) -> Bbox:
    return Bbox.from_extents(box.x0 - pixels, box.y0 - pixels, box.x1 + pixels, box.y1 + pixels)


def place_labels(axes, renderer, edges: Sequence[Edge], texts: Sequence[Text], node_boxes: Sequence[Bbox]) -> int:
    """Move each edge's label to the free position that crosses the fewest other edges.

    Labels are placed shortest edge first, since short edges have the fewest places to choose
    from. Returns how many labels could only be placed overlapping a node or another label.
    """
    to_display = axes.transData.transform
    samples = np.linspace(0.08, 0.92, 60)
    curves = [to_display(bezier_points(edge, samples)) for edge in edges]
    order = sorted(range(len(edges)), key=lambda i: float(np.ptp(curves[i][:, 0]) + np.ptp(curves[i][:, 1])))
    placed: list[Bbox] = []
    blocked = 0
    for index in order:
        edge, text = edges[index], texts[index]
        if text is None:
            continue
        best: tuple[float, np.ndarray] | None = None
        for shift in LABEL_SHIFTS:
            for t in LABEL_POSITIONS:
                point = bezier_points(edge, np.array([t]))[0]
                text.set_position(point)
                height = text.get_window_extent(renderer).height
                if shift:
                    pixel = to_display(point) + shift * height * bezier_normal(edge, t)
                    point = axes.transData.inverted().transform(pixel)
                    text.set_position(point)
                box = _inflate(text.get_window_extent(renderer), LABEL_MARGIN_PX)
                hard = sum(box.overlaps(other) for other in [*node_boxes, *placed])
                crossings = sum(bool(box.count_contains(curve)) for i, curve in enumerate(curves)
                                if i != index)
                cost = 1000.0 * hard + 10.0 * crossings + abs(t - 0.5) + 3.0 * abs(shift)
                if best is None or cost < best[0]:
                    best = (cost, point)
        assert best is not None
        text.set_position(best[1])
        if best[0] >= 1000.0:
            blocked += 1
        placed.append(_inflate(text.get_window_extent(renderer), LABEL_MARGIN_PX))
    return blocked


def draw_cell(edges: Sequence[tuple[str, int]], concat: Sequence[int], title: str) -> CellDrawing:
    """Draw one cell (its eight (operation, input) pairs and concatenated states) as a figure."""
    drawn = cell_edges(edges, concat)
    output = genotype_io.NODES + 2
    states = range(output + 1)
    curve_points = np.concatenate([bezier_points(edge, np.linspace(0, 1, 40)) for edge in drawn])
    xs = np.concatenate([curve_points[:, 0], [state_position(s)[0] for s in states]])
    ys = np.concatenate([curve_points[:, 1], [state_position(s)[1] for s in states]])
    margin = 0.9
    x0, x1 = xs.min() - margin, xs.max() + margin
    y0, y1 = ys.min() - margin, ys.max() + margin

    figure = Figure(figsize=((x1 - x0) * INCHES_PER_UNIT, (y1 - y0) * INCHES_PER_UNIT + 0.5))
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, (y1 - y0) / (y1 - y0 + 0.5 / INCHES_PER_UNIT)))
    axes.set_xlim(x0, x1)
    axes.set_ylim(y0, y1)
    axes.set_aspect("equal")
    axes.set_axis_off()
    axes.apply_aspect()
    figure.suptitle(title, fontsize=13, y=0.98)

    patches = {state: add_node(axes, state) for state in states}
    texts: list[Text | None] = []
    for edge in drawn:
        labelled = edge.operation is not None
        arrow = FancyArrowPatch(state_position(edge.source), state_position(edge.target),
                                connectionstyle=f"arc3,rad={edge.rad}", arrowstyle="-|>", mutation_scale=14,
                                patchA=patches[edge.source], patchB=patches[edge.target], shrinkA=1, shrinkB=1,
                                color="black" if labelled else CONCAT_COLOUR, linewidth=1.3 if labelled else 1.0,
                                zorder=1 if labelled else 0)
        axes.add_patch(arrow)
        if labelled:
            texts.append(axes.text(0, 0, edge.operation, ha="center", va="center", fontsize=LABEL_FONT_SIZE,
                                   zorder=2, bbox={"boxstyle": "round,pad=0.25", "facecolor": "white",
                                                   "edgecolor": "#c8c8c8", "alpha": 0.95}))
        else:
            texts.append(None)

    renderer = canvas.get_renderer()
    node_boxes = [patch.get_window_extent(renderer) for patch in patches.values()]
    blocked = place_labels(axes, renderer, drawn, texts, node_boxes)
    if blocked:
        logger.warning("%s: %d edge labels found no free place and overlap a node or another label", title, blocked)
    return CellDrawing(figure, [text for text in texts if text is not None], list(patches.values()))


def overlaps(drawing: CellDrawing) -> list[tuple[str, str]]:
    """Return the pairs of labels and nodes of a drawing whose boxes overlap (empty when none do)."""
    renderer = drawing.figure.canvas.get_renderer()
    boxes = [(f"label {text.get_text()!r} #{i}", text.get_window_extent(renderer))
             for i, text in enumerate(drawing.labels)]
    boxes += [(f"node #{i}", patch.get_window_extent(renderer)) for i, patch in enumerate(drawing.nodes)]
    found = []
    for i, (name_a, box_a) in enumerate(boxes):
        for name_b, box_b in boxes[i + 1:]:
            if name_a.startswith("node") and name_b.startswith("node"):
                continue
            if box_a.overlaps(box_b):
                found.append((name_a, name_b))
    return found


def genotype_title(spec: str) -> str:
    """Return a short name for a genotype given by name or by path (a run directory's name for its genotype.json)."""
    if spec in genotype_io.names():
        return spec
    path = Path(spec)
    return path.parent.name if path.name == "genotype.json" and path.parent.name else path.stem


def draw_genotype(genotype: Genotype, prefix: str | Path, name: str = "genotype",
                  formats: Sequence[str] = FORMATS) -> list[Path]:
    """Draw both cells of ``genotype`` to ``PREFIX_normal.<format>`` and ``PREFIX_reduce.<format>``.

    Raises ``GenotypeError`` for an invalid genotype. Returns the written paths.
    """
    genotype = genotype_io.validate(genotype)
    written = []
    for cell_type in CELL_TYPES:
        edges = getattr(genotype, cell_type)
        concat = getattr(genotype, f"{cell_type}_concat")
        drawing = draw_cell(edges, concat, f"{name}: {CELL_TITLES[cell_type]}")
        for file_format in formats:
            written.append(save_figure(drawing.figure, Path(f"{prefix}_{cell_type}.{file_format}"), dpi=150))
    return written


def draw_combined(genotype: Genotype, path: str | Path, name: str = "genotype", dpi: int = 150) -> Path:
    """Draw the normal cell above the reduction cell of ``genotype`` in one PNG file at ``path``."""
    import matplotlib.image

    genotype = genotype_io.validate(genotype)
    images = []
    for cell_type in CELL_TYPES:
        drawing = draw_cell(getattr(genotype, cell_type), getattr(genotype, f"{cell_type}_concat"),
                            f"{name}: {CELL_TITLES[cell_type]}")
        drawing.figure.set_dpi(dpi)
        drawing.figure.canvas.draw()
        images.append(np.asarray(drawing.figure.canvas.buffer_rgba()))
    width = max(image.shape[1] for image in images)
    padded = [np.pad(image, ((0, 0), (0, width - image.shape[1]), (0, 0)), constant_values=255) for image in images]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    matplotlib.image.imsave(temporary, np.concatenate(padded, axis=0))
    os.replace(temporary, path)
    return path


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python tools/vis_cell.py``."""
    parser = argparse.ArgumentParser(
        prog="python tools/vis_cell.py",
        description="Draw the normal and reduction cells of a genotype as PREFIX_normal and PREFIX_reduce "
                    "images (PNG and PDF).")
    parser.add_argument("genotype", metavar="GENOTYPE",
                        help=f"a genotype name in NAS/genotypes.py ({', '.join(genotype_io.names())}) "
                             "or the path of a genotype.json written by train_search.py")
    parser.add_argument("--out", required=True, metavar="PREFIX",
                        help="output prefix: writes PREFIX_normal.png/.pdf and PREFIX_reduce.png/.pdf")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), metavar="FORMAT",
                        help="file formats to write, any that matplotlib supports (default: png pdf)")
    parser.add_argument("--title", default=None, help="name shown above each cell (default: the genotype name)")
    parser.add_argument("--combined", default=None, metavar="PNG",
                        help="also write both cells, normal above reduction, into this one PNG file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; an unknown or invalid genotype exits with status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        genotype = genotype_io.load(args.genotype)
    except (GenotypeError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    for path in draw_genotype(genotype, args.out, args.title or genotype_title(args.genotype), args.formats):
        print(f"wrote {path}")
    if args.combined:
        print(f"wrote {draw_combined(genotype, args.combined, args.title or genotype_title(args.genotype))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
