"""Seeded, class-stratified index splits and subsets."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def _as_labels(labels: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    tensor = torch.as_tensor(labels).cpu()
    if tensor.dim() != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"labels must be integers, got {tensor.dtype}")
    return tensor.to(torch.int64)


def _class_members(labels: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """Return, for each class value in ascending order, its indices in a seeded random order."""
    members = []
    for value in torch.unique(labels).tolist():
        indices = torch.nonzero(labels == value).flatten()
        members.append(indices[torch.randperm(len(indices), generator=generator)])
    return members


def _sorted_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    if not parts:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(parts)).values


def stratified_split(
    labels: torch.Tensor | np.ndarray | Sequence[int], portion: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices 0..N-1 into two disjoint sorted int64 tensors, stratified by class.

    The first part gets round(portion * n_c) images of each class c (rounded half up), but at
    least 1 and at most n_c - 1 when the class has 2 or more images. The second part gets the
    rest. The same labels and seed give the same split.
    """
    if not 0.0 < portion < 1.0:
        raise ValueError(f"portion must be strictly between 0 and 1, got {portion}")
    labels = _as_labels(labels)
    generator = torch.Generator().manual_seed(int(seed))

    first, second = [], []
    for members in _class_members(labels, generator):
        size = len(members)
        take = math.floor(portion * size + 0.5)
        if size >= 2:
            take = min(max(take, 1), size - 1)
        first.append(members[:take])
        second.append(members[take:])
    return _sorted_cat(first), _sorted_cat(second)


def _proportional_quotas(sizes: list[int], n: int) -> list[int]:
    """Share ``n`` among classes of the given sizes by largest remainder, at least 1 each where n allows."""
    total = sum(sizes)
    shares = [n * size / total for size in sizes]
    quotas = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda c: (shares[c] - quotas[c], sizes[c]), reverse=True)
    for c in by_remainder[: n - sum(quotas)]:
        quotas[c] += 1

    if n >= len(sizes):
        for c in range(len(sizes)):
            if quotas[c] == 0:
                # Take the slot from the class that is furthest above its exact share.
                donor = max((d for d in range(len(sizes)) if quotas[d] > 1), key=lambda d: quotas[d] - shares[d])
                quotas[donor] -= 1
                quotas[c] = 1
    return quotas


def stratified_subset(labels: torch.Tensor | np.ndarray | Sequence[int], n: int, seed: int) -> torch.Tensor:
    """Pick ``n`` sorted indices with each class in proportion to its share of ``labels``.

    Per-class counts use largest-remainder rounding, so they add up to exactly ``n``, and every
    class gets at least one image when ``n`` is at least the number of classes. ``n`` equal to
    the number of labels returns all indices. Raises ValueError when ``n`` is negative or
    larger than the number of labels.
    """
    labels = _as_labels(labels)
    total = len(labels)
    if n < 0 or n > total:
        raise ValueError(f"cannot pick a subset of {n} images from {total}; expected 0 <= n <= {total}")
    if n == total:
        return torch.arange(total, dtype=torch.int64)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)

    generator = torch.Generator().manual_seed(int(seed))
    members = _class_members(labels, generator)
    quotas = _proportional_quotas([len(m) for m in members], n)
    return _sorted_cat([m[:quota] for m, quota in zip(members, quotas)])
