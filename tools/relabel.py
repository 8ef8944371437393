"""Relabelling of uncertain training labels and greedy ensemble selection, as tensor code.

The code runs on the device of its tensor inputs (``greedy_select``: the device of the labels).
Only ``RelabelCounter``'s ``matrix``, ``total`` and ``format`` and each step of ``greedy_select``
copy values back to the host.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from dataloader.fer2013 import CLASSES

logger = logging.getLogger(__name__)


def relabel_targets(
    probs: torch.Tensor,
    targets: torch.Tensor,
    threshold: float,
    fes: torch.Tensor | np.ndarray | None = None,
    fes_threshold: float = 0.03,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace uncertain targets by the prediction. Return (new targets, mask of changed samples).

    ``probs`` (N, C) are class probabilities (softmax outputs) and ``targets`` (N,) class indices
    in 0..C-1. With pred = argmax(probs), a target becomes pred when
    0 < probs[pred] - probs[target] < threshold and, when ``fes`` (C, C) is given, also
    fes[target][pred] > fes_threshold. Both comparisons are strict. The inputs are not modified.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs have shape {tuple(probs.shape)}; expected (N, C)")
    if targets.shape != probs.shape[:1]:
        raise ValueError(f"targets have shape {tuple(targets.shape)}; expected ({probs.shape[0]},) to match probs")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets have dtype {targets.dtype}; expected integer class indices")
    if not threshold >= 0:
        raise ValueError(f"threshold is {threshold}; expected a probability gap >= 0")

    predictions = probs.argmax(dim=1)
    index = targets.long().unsqueeze(1)
    gap = probs.gather(1, predictions.unsqueeze(1)).squeeze(1) - probs.gather(1, index).squeeze(1)
    changed = (gap > 0) & (gap < threshold)

    if fes is not None:
        if isinstance(fes, np.ndarray):
            fes = torch.from_numpy(np.array(fes, dtype=np.float64))
        similarity = fes.to(probs.device)
        classes = probs.shape[1]
        if similarity.shape != (classes, classes):
            raise ValueError(f"fes has shape {tuple(similarity.shape)}; expected ({classes}, {classes})")
        if not similarity.is_floating_point():
            similarity = similarity.double()
        changed = changed & (similarity[targets.long(), predictions] > fes_threshold)

    new_targets = torch.where(changed, predictions.to(targets.dtype), targets)
    return new_targets, changed


class RelabelCounter:
    """Counts relabelled samples per (old class, new class) on the device of the targets.

    The counts stay on the device until ``matrix``, ``total`` or ``format`` reads them.
    """

    def __init__(self, num_classes: int = len(CLASSES), class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes is {num_classes}; expected at least 1")
        if class_names is None:
            class_names = CLASSES if num_classes == len(CLASSES) else [str(i) for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes; expected one name per class")
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.counts: torch.Tensor | None = None

    def update(self, old_targets: torch.Tensor, new_targets: torch.Tensor) -> None:
        """Add the samples whose target changed from ``old_targets`` to ``new_targets``."""
        if old_targets.shape != new_targets.shape or old_targets.ndim != 1:
            raise ValueError(
                f"old and new targets have shapes {tuple(old_targets.shape)} and {tuple(new_targets.shape)}; "
                "expected two tensors of shape (N,)"
            )
        if self.counts is None:
            self.counts = torch.zeros(self.num_classes * self.num_classes, dtype=torch.int64, device=old_targets.device)
        old = old_targets.long()
        new = new_targets.long()
        changed = (old != new).long()
        self.counts.index_put_((old * self.num_classes + new,), changed, accumulate=True)

    @property
    def matrix(self) -> list[list[int]]:
        """Counts as a list of rows: ``matrix[old][new]`` samples moved from class old to class new."""
        if self.counts is None:
            return [[0] * self.num_classes for _ in range(self.num_classes)]
        return self.counts.view(self.num_classes, self.num_classes).tolist()

    @property
    def total(self) -> int:
        """Number of relabelled samples."""
        return sum(sum(row) for row in self.matrix)

    def format(self) -> str:
        """Format the counts as a text table: one row per old class, one column per new class."""
        matrix = self.matrix
        width = max(8, *(len(name) + 1 for name in self.class_names))
        lines = ["from \\ to".ljust(width) + "".join(f"{name:>{width}}" for name in self.class_names) + f"{'total':>{width}}"]
        for name, row in zip(self.class_names, matrix):
            lines.append(f"{name:<{width}}" + "".join(f"{count:>{width}d}" for count in row) + f"{sum(row):>{width}d}")
        lines.append(f"relabelled samples: {sum(sum(row) for row in matrix)}")
        return "\n".join(lines)


def greedy_select(
    member_probs: Sequence[torch.Tensor], labels: torch.Tensor, max_members: int | None = None
) -> tuple[list[int], list[float]]:
    """Choose ensemble members by forward selection. Return (chosen indices in order, accuracies).

    Each step adds the member, not yet chosen, whose addition gives the highest top-1 accuracy of
    the averaged probabilities. A tie goes to the lower index. The first step always takes the
    best single member, and selection stops when no remaining member improves the accuracy or
    ``max_members`` are chosen. ``accuracies[k]`` is the accuracy in percent after choosing
    ``k + 1`` members.

    Pass the members' outputs on the validation split (PublicTest) only: whatever set is passed
    here decides the ensemble, so passing test outputs would select on the test set.
    """
    if len(member_probs) == 0:
        raise ValueError("member_probs is empty; expected the probabilities of at least one model")
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels have shape {tuple(labels.shape)}; expected (N,) with N >= 1")
    if max_members is not None and max_members < 1:
        raise ValueError(f"max_members is {max_members}; expected at least 1 or None for no limit")
    first = member_probs[0]
    if first.ndim != 2 or first.shape[0] != labels.shape[0]:
        raise ValueError(
            f"member 0 has probabilities of shape {tuple(first.shape)}; expected (N, C) with N = {labels.shape[0]} labels"
        )
    for index, probs in enumerate(member_probs):
        if probs.shape != first.shape:
            raise ValueError(
                f"member {index} has probabilities of shape {tuple(probs.shape)}; expected {tuple(first.shape)} "
                "like member 0"
            )
        if not probs.is_floating_point():
            raise TypeError(f"member {index} has probabilities of dtype {probs.dtype}; expected a floating type")

    stacked = torch.stack([probs.to(labels.device) for probs in member_probs])
    if stacked.dtype not in (torch.float32, torch.float64):
        stacked = stacked.float()
    limit = len(member_probs) if max_members is None else min(max_members, len(member_probs))
    count = labels.shape[0]
    chosen: list[int] = []
    history: list[float] = []
    running = torch.zeros_like(stacked[0])
    best_correct = -1

    while len(chosen) < limit:
        remaining = [index for index in range(len(member_probs)) if index not in chosen]
        # The sum has the same argmax as the mean, so the mean is never divided out.
        candidates = running.unsqueeze(0) + stacked[remaining]
        correct = (candidates.argmax(dim=2) == labels.unsqueeze(0)).sum(dim=1).tolist()
        position = max(range(len(remaining)), key=lambda k: (correct[k], -remaining[k]))
        if correct[position] <= best_correct:
            break
        best_correct = correct[position]
        chosen.append(remaining[position])
        running = candidates[position]
        history.append(100.0 * best_correct / count)
        logger.info("ensemble member %d added: %d members, accuracy %.2f%%", chosen[-1], len(chosen), history[-1])

    return chosen, history
