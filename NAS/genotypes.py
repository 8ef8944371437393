"""Genotypes: the cells that a search finds, and the ones published with the project.

A genotype lists, for each of the four intermediate nodes of a cell, two ``(operation, input)``
pairs. Input 0 is the output of the cell two back (c_{k-2}), input 1 that of the previous cell
(c_{k-1}), and input ``i + 2`` the i-th intermediate node. ``normal_concat`` and
``reduce_concat`` name the states concatenated into the cell output.

Add a searched cell by pasting the line that ``train_search.py`` prints at the end of a run.
"""
from __future__ import annotations

import json
import random
from collections import namedtuple
from pathlib import Path
from typing import Any

from NAS.operations import PRIMITIVES

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

NODES = 4

# The cell found by the original Auto-FERNet code. NOTE: that search ran on Training,
# PublicTest and PrivateTest together, so test figures of this cell are not free of test data.
Auto_FERNet = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("conv_3x3", 1),
        ("dil_conv_5x5", 0), ("conv_1x1", 2),
        ("ghost", 2), ("dil_conv_5x5", 3),
        ("skip_connect", 0), ("conv_1x1", 1),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("dil_conv_5x5", 2),
        ("avg_pool_3x3", 1), ("skip_connect", 2),
        ("avg_pool_3x3", 0), ("sep_conv_3x3", 2),
    ],
    reduce_concat=[2, 3, 4, 5],
)

# The DARTS (second order) CIFAR-10 cell, kept as a well-known reference point.
DARTS_V2 = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("skip_connect", 0), ("dil_conv_3x3", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2),
        ("skip_connect", 2), ("max_pool_3x3", 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)


class GenotypeError(ValueError):
    """An invalid genotype: an unknown operation, a bad input index or a wrong layout."""


def _validate_cell(kind: str, edges: Any, concat: Any) -> tuple[list[tuple[str, int]], list[int]]:
    if not isinstance(edges, (list, tuple)) or len(edges) != 2 * NODES:
        raise GenotypeError(f"{kind}: expected {2 * NODES} (operation, input) pairs, got {edges!r}")
    checked: list[tuple[str, int]] = []
    for position, edge in enumerate(edges):
        if not isinstance(edge, (list, tuple)) or len(edge) != 2:
            raise GenotypeError(f"{kind}[{position}]: expected an (operation, input) pair, got {edge!r}")
        op, source = edge
        if op not in PRIMITIVES or op == "none":
            raise GenotypeError(
                f"{kind}[{position}]: unknown operation {op!r}; expected one of {', '.join(PRIMITIVES[1:])}")
        node = position // 2
        if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source < node + 2:
            raise GenotypeError(
                f"{kind}[{position}]: input {source!r} of node {node} must be an integer in 0..{node + 1}")
        checked.append((str(op), int(source)))
    if not isinstance(concat, (list, tuple)) or not concat:
        raise GenotypeError(f"{kind}_concat: expected a non-empty list of states, got {concat!r}")
    for state in concat:
        if isinstance(state, bool) or not isinstance(state, int) or not 0 <= state < NODES + 2:
            raise GenotypeError(f"{kind}_concat: state {state!r} must be an integer in 0..{NODES + 1}")
    return checked, [int(s) for s in concat]


def validate(genotype: Any) -> Genotype:
    """Check a genotype (a ``Genotype`` or any 4-item sequence) and return it as a ``Genotype``."""
    if isinstance(genotype, dict):
        missing = [k for k in Genotype._fields if k not in genotype]
        if missing:
            raise GenotypeError(f"genotype is missing {', '.join(missing)}")
        genotype = [genotype[k] for k in Genotype._fields]
    if not isinstance(genotype, (list, tuple)) or len(genotype) != 4:
        raise GenotypeError(f"expected a genotype with fields {', '.join(Genotype._fields)}, got {genotype!r}")
    normal, normal_concat = _validate_cell("normal", genotype[0], genotype[1])
    reduce, reduce_concat = _validate_cell("reduce", genotype[2], genotype[3])
    return Genotype(normal, normal_concat, reduce, reduce_concat)


def to_dict(genotype: Genotype) -> dict[str, list]:
    """Return the genotype as plain lists, for JSON files and checkpoints."""
    genotype = validate(genotype)
    return {
        "normal": [[op, source] for op, source in genotype.normal],
        "normal_concat": list(genotype.normal_concat),
        "reduce": [[op, source] for op, source in genotype.reduce],
        "reduce_concat": list(genotype.reduce_concat),
    }


def from_dict(data: Any) -> Genotype:
    """Build a validated genotype from the plain form that ``to_dict`` returns."""
    return validate(data)


def to_python(genotype: Genotype, name: str = "Searched") -> str:
    """Return a line of Python that defines ``genotype`` under ``name``, for this module."""
    genotype = validate(genotype)
    return (f"{name} = Genotype(normal={genotype.normal!r}, normal_concat={genotype.normal_concat!r}, "
            f"reduce={genotype.reduce!r}, reduce_concat={genotype.reduce_concat!r})")


def random_genotype(seed: int) -> Genotype:
    """Draw a cell of each type uniformly from the search space, reproducibly from ``seed``.

    Each intermediate node takes two distinct inputs among the states before it, and each input
    edge one operation other than ``none``, as a searched cell does. Nodes 2..5 are concatenated.
    A random cell trained with the same budget as a searched one is the usual baseline of a search.
    """
    rng = random.Random(seed)
    operations = [op for op in PRIMITIVES if op != "none"]

    def cell() -> list[tuple[str, int]]:
        edges: list[tuple[str, int]] = []
        for node in range(NODES):
            for source in sorted(rng.sample(range(node + 2), 2)):
                edges.append((rng.choice(operations), source))
        return edges

    concat = list(range(2, NODES + 2))
    return Genotype(cell(), concat, cell(), list(concat))


RANDOM_PREFIX = "random:"


def names() -> list[str]:
    """Return the names of the genotypes defined in this module."""
    return [name for name, value in globals().items() if isinstance(value, Genotype)]


def load(spec: str | Path) -> Genotype:
    """Load a genotype by name from this module, from a JSON file written by the search, or
    draw one with ``random:SEED`` (see ``random_genotype``)."""
    spec_text = str(spec)
    if spec_text in names():
        return validate(globals()[spec_text])
    if spec_text.startswith(RANDOM_PREFIX):
        seed_text = spec_text[len(RANDOM_PREFIX):]
        if not seed_text.isdigit():
            raise GenotypeError(f"invalid random cell {spec_text!r}: expected {RANDOM_PREFIX}SEED with a "
                                f"non-negative integer seed, for example {RANDOM_PREFIX}1")
        return validate(random_genotype(int(seed_text)))
    path = Path(spec_text)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"genotype file {path} not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise GenotypeError(f"{path}: not valid JSON ({error})") from None
        if isinstance(data, dict) and "genotype" in data:
            data = data["genotype"]
        try:
            return validate(data)
        except GenotypeError as error:
            raise GenotypeError(f"{path}: {error}") from None
    raise GenotypeError(
        f"unknown genotype {spec_text!r}: give a name from NAS/genotypes.py ({', '.join(names())}), "
        f"the path of a genotype.json, or {RANDOM_PREFIX}SEED for a random cell")
