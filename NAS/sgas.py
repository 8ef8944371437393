"""SGAS edge decisions (Li et al., "SGAS: Sequential Greedy Architecture Search", CVPR 2020).

After every epoch each cell type scores its 14 edges from the softmax of the architecture
weights. Edge importance is the total weight of the non-``none`` operations. Those weights,
normalised to sum 1, form a distribution whose entropy divided by log(10) measures how
uncertain the edge is. Criterion 1 scores an edge by norm(importance) * norm(1 - entropy).
Criterion 2 also multiplies by norm(mean histogram intersection with the distributions of the
last ``history_size`` epochs). ``norm`` is min-max normalisation over all 14 edges, decided and
pruned ones included, and a constant vector normalises to zeros, both as in SGAS. On a
decision epoch the best-scoring undecided edge is fixed to its strongest non-``none``
operation, and a node that then has two decided inputs has its other inputs pruned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from NAS.genotypes import Genotype
from NAS.model_search import EDGES, NODES, PRUNED, UNDECIDED, edge_sources
from NAS.operations import PRIMITIVES

INPUTS_PER_NODE = 2


def normalize(values: torch.Tensor) -> torch.Tensor:
    """Min-max normalise ``values`` to [0, 1]; a constant vector becomes zeros."""
    low = values.min()
    spread = values.max() - low
    if spread <= 0:
        return torch.zeros_like(values)
    return (values - low) / spread


def operation_distribution(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (importance, distribution) of a (14, 11) softmax matrix: the non-``none`` mass of
    each edge, and its non-``none`` weights normalised to sum 1."""
    importance = weights[:, 1:].sum(dim=-1)
    distribution = weights[:, 1:] / importance[:, None]
    return importance, distribution


def normalized_entropy(distribution: torch.Tensor) -> torch.Tensor:
    """Return the entropy of each row divided by log of the row length (1 = uniform)."""
    entropy = -(distribution * distribution.clamp_min(1e-30).log()).sum(dim=-1)
    return entropy / math.log(distribution.shape[-1])


def histogram_intersection(history: list[torch.Tensor], distribution: torch.Tensor) -> torch.Tensor:
    """Return each edge's mean histogram intersection with the distributions in ``history``
    (zeros when the history is empty)."""
    if not history:
        return torch.zeros(distribution.shape[0], dtype=distribution.dtype)
    total = torch.zeros(distribution.shape[0], dtype=distribution.dtype)
    for past in history:
        total += torch.minimum(past, distribution).sum(dim=-1)
    return total / len(history)


def edge_scores(weights: torch.Tensor, history: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Return the SGAS score of every edge; criterion 2 when ``history`` is given."""
    importance, distribution = operation_distribution(weights)
    score = normalize(importance) * normalize(1 - normalized_entropy(distribution))
    if history is not None:
        score = score * normalize(histogram_intersection(history, distribution))
    return score


def prune_full_nodes(decisions: list[int]) -> list[int]:
    """Prune the undecided inputs of every node that already has two decided inputs."""
    decisions = list(decisions)
    for node in range(NODES):
        edges = [e for e, (n, _) in enumerate(edge_sources()) if n == node]
        decided = [e for e in edges if decisions[e] > PRUNED]
        if len(decided) >= INPUTS_PER_NODE:
            for e in edges:
                if decisions[e] == UNDECIDED:
                    decisions[e] = PRUNED
    return decisions


@dataclass
class Decision:
    """One edge decision: the cell type, the edge, its input state, its node and its operation."""

    cell_type: str
    edge: int
    node: int
    source: int
    operation: str
    epoch: int
    score: float
    pruned: list[int] = field(default_factory=list)

    def describe(self) -> str:
        text = (f"{self.cell_type} edge {self.edge} (node {self.node} <- input {self.source}) fixed to "
                f"{self.operation} at epoch {self.epoch}, score {self.score:.4f}")
        if self.pruned:
            text += f"; pruned edges {self.pruned}"
        return text


def decide_edge(cell_type: str, weights: torch.Tensor, decisions: list[int], score: torch.Tensor,
                epoch: int) -> tuple[Decision, list[int]]:
    """Fix the best-scoring undecided edge to its strongest non-``none`` operation.

    Returns the decision and the new decision list (with full nodes pruned).
    Raises ``ValueError`` when no edge is undecided.
    """
    candidates = [e for e, d in enumerate(decisions) if d == UNDECIDED]
    if not candidates:
        raise ValueError(f"no undecided {cell_type} edge is left to decide")
    masked = torch.full_like(score, -math.inf)
    masked[candidates] = score[candidates]
    edge = int(torch.argmax(masked))
    _, distribution = operation_distribution(weights)
    op_index = int(torch.argmax(distribution[edge])) + 1
    new = list(decisions)
    new[edge] = op_index
    pruned_list = prune_full_nodes(new)
    pruned = [e for e in range(EDGES) if pruned_list[e] == PRUNED and new[e] == UNDECIDED]
    node, source = edge_sources()[edge]
    decision = Decision(cell_type, edge, node, source, PRIMITIVES[op_index], epoch, float(score[edge]), pruned)
    return decision, pruned_list


def is_decision_epoch(epoch: int, warmup: int, frequency: int) -> bool:
    """Return whether decisions are made after ``epoch`` (0-based)."""
    return epoch >= warmup and (epoch - warmup) % frequency == 0


def total_epochs(warmup: int, frequency: int, post_train: int) -> int:
    """Return the epochs a search needs to make all eight decisions per cell type, then
    train ``post_train`` more: warmup + frequency x 7 + post_train + 1."""
    return warmup + frequency * (NODES * INPUTS_PER_NODE - 1) + post_train + 1


def derive_genotype(weights: dict[str, torch.Tensor], decisions: dict[str, list[int]]) -> Genotype:
    """Derive the genotype from architecture weights and decisions.

    For each node, decided inputs come first. The remaining places go to the undecided inputs
    whose strongest non-``none`` weight is largest (the DARTS rule), each with that operation. Once every edge is decided or pruned this is exactly the decided cell.
    """
    cells = {}
    for cell_type in ("normal", "reduce"):
        w = weights[cell_type].detach().float().cpu()
        chosen: list[tuple[str, int]] = []
        for node in range(NODES):
            edges = [e for e, (n, _) in enumerate(edge_sources()) if n == node]
            decided = [e for e in edges if decisions[cell_type][e] > PRUNED]
            picks = [(PRIMITIVES[decisions[cell_type][e]], edge_sources()[e][1]) for e in decided]
            open_edges = [e for e in edges if decisions[cell_type][e] == UNDECIDED]
            open_edges.sort(key=lambda e: -float(w[e, 1:].max()))
            for e in open_edges[: INPUTS_PER_NODE - len(picks)]:
                picks.append((PRIMITIVES[int(w[e, 1:].argmax()) + 1], edge_sources()[e][1]))
            if len(picks) < INPUTS_PER_NODE:
                raise ValueError(f"{cell_type} node {node} has fewer than {INPUTS_PER_NODE} usable inputs: "
                                 f"decisions {decisions[cell_type]}")
            chosen.extend(sorted(picks[:INPUTS_PER_NODE], key=lambda pick: pick[1]))
        cells[cell_type] = chosen
    concat = list(range(2, 2 + NODES))
    return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)
