"""Cross-validation folds for the small lab datasets (CK+48, JAFFE).

Every fold function returns a list of ``Fold(train, test)`` pairs of sorted int64 numpy
arrays of image indices. Numpy arrays index torch tensors directly (``pixels[fold.test]``)
and convert to JSON with ``folds_to_json``.

- ``subject_folds``: k folds with no subject in two test parts, stratified by class as far
  as the subject grouping allows. Use it to report subject-independent accuracy.
- ``loso_folds``: leave one subject out.
- ``stratified_folds``: k class-stratified folds that ignore subjects.
- ``paper_folds`` and ``ck48_paper_folds``: the ten CK+ folds of the original research code
  (CK.py of github.com/WuJie1010/Facial-Expression-Recognition.Pytorch, which Auto-FERNet's
  CK+ experiments use). They test fixed blocks of each class in CK_data.h5 order, so the
  same subject's frames fall into training and test parts, some folds overlap and some
  images are never tested (``fold_coverage`` counts them).
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from dataloader.ck48 import CK_DATA_CLASSES, ckdata_order
from dataloader.labdata import LabDataset

ArrayLike = torch.Tensor | np.ndarray | Sequence[int]

# Per-class image counts of CK_data.h5 (CK_DATA_CLASSES order) and the size of each class's
# test block in the original code.
PAPER_CLASS_COUNTS: tuple[int, ...] = (135, 177, 75, 207, 84, 249, 54)
PAPER_TEST_BLOCKS: tuple[int, ...] = (12, 18, 9, 21, 9, 24, 6)
PAPER_FOLD_COUNT = 10


class Fold(NamedTuple):
    """Indices of one cross-validation fold: sorted int64 arrays, ``train`` and ``test``."""

    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class FoldCoverage:
    """How often the test parts of a set of folds cover each image."""

    untested: int  # images in no test part
    tested_once: int
    tested_more_than_once: int  # images in two or more test parts (overlapping folds)


class FoldError(ValueError):
    """Folds cannot be built as requested (too few subjects, a class missing from training, ...)."""


def _as_index_array(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise FoldError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise FoldError(f"{name} must be integers, got {array.dtype}")
    return array.astype(np.int64)


def _fold(count: int, test: np.ndarray) -> Fold:
    """Build a Fold from its test indices. Training gets all remaining indices of 0..count-1."""
    test = np.unique(test.astype(np.int64))
    train = np.setdiff1d(np.arange(count, dtype=np.int64), test, assume_unique=True)
    return Fold(train, test)


def check_training_classes(folds: Sequence[Fold], labels: ArrayLike) -> None:
    """Raise FoldError when a class of ``labels`` is missing from some fold's training part."""
    labels = _as_index_array(labels, "labels")
    classes = np.unique(labels)
    problems = []
    for number, fold in enumerate(folds):
        missing = np.setdiff1d(classes, labels[fold.train])
        if missing.size:
            problems.append(f"fold {number} has no training image of class(es) {missing.tolist()}")
    if problems:
        raise FoldError(
            "; ".join(problems) + ". A model cannot learn a class it never sees; use fewer folds or stratified_folds"
        )


def fold_coverage(folds: Sequence[Fold], count: int) -> FoldCoverage:
    """Count the images of 0..count-1 that no, one, or several folds test."""
    times = np.zeros(count, dtype=np.int64)
    for fold in folds:
        np.add.at(times, fold.test, 1)
    return FoldCoverage(
        untested=int(np.count_nonzero(times == 0)),
        tested_once=int(np.count_nonzero(times == 1)),
        tested_more_than_once=int(np.count_nonzero(times > 1)),
    )


# ---------------------------------------------------------------------------------------------
# Subject-wise and stratified folds


def subject_folds(labels: ArrayLike, subjects: ArrayLike | None, k: int = 10, *, seed: int = 0) -> list[Fold]:
    """Split images into ``k`` folds so that each subject's images share one test part.

    Every image is tested exactly once. Classes are stratified as far as the grouping by
    subject allows (scikit-learn's StratifiedGroupKFold with shuffled subjects, seeded by
    ``seed``). Raises FoldError when ``subjects`` is None (as for CK_data.h5, which records
    no subjects), when there are fewer than ``k`` subjects, or when some fold's training part
    lacks a class.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if subjects is None:
        raise FoldError(
            "subject folds need a subject id per image, and this dataset has none (CK_data.h5 records no subjects); "
            "read the CK+48 class folders or a prepared h5 file, or use paper_folds or stratified_folds"
        )
    labels = _as_index_array(labels, "labels")
    subjects = _as_index_array(subjects, "subjects")
    if labels.shape != subjects.shape:
        raise FoldError(f"got {len(labels)} labels but {len(subjects)} subject ids; expected one of each per image")
    subject_count = len(np.unique(subjects))
    if k < 2 or k > subject_count:
        raise FoldError(f"cannot split {subject_count} subjects into k={k} folds; expected 2 <= k <= {subject_count}")

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    positions = np.zeros(len(labels))  # StratifiedGroupKFold reads only the length of X
    try:
        folds = [_fold(len(labels), test) for _, test in splitter.split(positions, labels, groups=subjects)]
    except ValueError as error:
        raise FoldError(f"cannot build {k} subject folds: {error}") from error
    check_training_classes(folds, labels)
    return folds


def loso_folds(subjects: ArrayLike, labels: ArrayLike | None = None) -> list[Fold]:
    """Return one leave-one-subject-out fold per subject, in ascending subject order.

    With ``labels`` given, raises FoldError when leaving a subject out removes a class from
    training.
    """
    subjects = _as_index_array(subjects, "subjects")
    folds = [_fold(len(subjects), np.flatnonzero(subjects == subject)) for subject in np.unique(subjects)]
    if labels is not None:
        if len(_as_index_array(labels, "labels")) != len(subjects):
            raise FoldError(f"got {len(labels)} labels but {len(subjects)} subject ids; expected one of each per image")
        check_training_classes(folds, labels)
    return folds


def stratified_folds(labels: ArrayLike, k: int = 10, *, seed: int = 0) -> list[Fold]:
    """Split images into ``k`` class-stratified folds that ignore subjects. Each image is tested once.

    Uses scikit-learn's StratifiedKFold with shuffling seeded by ``seed``.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = _as_index_array(labels, "labels")
    if k < 2 or k > len(labels):
        raise FoldError(f"cannot split {len(labels)} images into k={k} folds; expected 2 <= k <= {len(labels)}")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    try:
        folds = [_fold(len(labels), test) for _, test in splitter.split(np.zeros(len(labels)), labels)]
    except ValueError as error:
        raise FoldError(f"cannot build {k} stratified folds: {error}") from error
    check_training_classes(folds, labels)
    return folds


# ---------------------------------------------------------------------------------------------
# The original code's CK+ folds


def paper_folds(labels_in_ckdata_order: ArrayLike) -> list[Fold]:
    """Return the ten CK+ folds of the original research code, indexing images in CK_data.h5 order.

    ``labels_in_ckdata_order`` are labels in CK_DATA_CLASSES order (0 anger ... 6 contempt),
    grouped by class with PAPER_CLASS_COUNTS images each. Class c starts at image s_c and
    has a test block of b_c images (PAPER_TEST_BLOCKS). Fold f of 0..8 tests images
    s_c + f*b_c ... s_c + (f+1)*b_c - 1 of every class, and fold 9 the last b_c images of
    every class. As in the original code, fold 8's fear block (9 x 9 = 81 > 75 fear images)
    runs into the first 6 happy images. Training gets every image that the fold does not test.
    Raises FoldError when the labels are not grouped with those counts.
    """
    labels = _as_index_array(labels_in_ckdata_order, "labels_in_ckdata_order")
    valid = labels.size > 0 and int(labels.min()) >= 0
    counts = np.bincount(labels, minlength=len(PAPER_CLASS_COUNTS)).tolist() if valid else []
    if counts != list(PAPER_CLASS_COUNTS) or np.any(np.diff(labels) < 0):
        raise FoldError(
            f"paper folds need the 981 CK+48 labels grouped by class in the order {list(CK_DATA_CLASSES)} "
            f"with {list(PAPER_CLASS_COUNTS)} images; got class counts {counts}. "
            f"Use ck48_paper_folds(dataset) to reorder a dataset read from the class folders"
        )
    starts = np.concatenate([[0], np.cumsum(PAPER_CLASS_COUNTS)])
    folds = []
    for number in range(PAPER_FOLD_COUNT):
        blocks = []
        for start, end, block in zip(starts[:-1], starts[1:], PAPER_TEST_BLOCKS):
            first = end - block if number == PAPER_FOLD_COUNT - 1 else start + number * block
            blocks.append(np.arange(first, first + block))
        folds.append(_fold(len(labels), np.concatenate(blocks)))
    return folds


def ck48_paper_folds(dataset: LabDataset) -> list[Fold]:
    """Return ``paper_folds`` as indices into ``dataset``, whatever its image and label order.

    The dataset is put into CK_data.h5 order with ``ck48.ckdata_order`` (classes in
    CK_DATA_CLASSES order, file names sorted within a class), the folds are built there and
    mapped back to the dataset's own indices.
    """
    order = ckdata_order(dataset)
    rank = np.array([CK_DATA_CLASSES.index(name.lower()) for name in dataset.classes], dtype=np.int64)
    folds = paper_folds(rank[dataset.labels.numpy()][order])
    return [Fold(np.sort(order[fold.train]), np.sort(order[fold.test])) for fold in folds]


# ---------------------------------------------------------------------------------------------
# JSON


def folds_to_json(folds: Sequence[Fold], path: str | Path, **info: object) -> Path:
    """Write folds as JSON: ``{"folds": [{"train": [...], "test": [...]}, ...], **info}``.

    ``info`` adds JSON-serialisable fields such as the protocol name or the seed. The file is
    written under a temporary name and then renamed, so ``path`` is never half-written.
    """
    if "folds" in info:
        raise ValueError("'folds' is reserved for the fold list; pass the other fields under other names")
    path = Path(path)
    document = {**info, "folds": [{"train": fold.train.tolist(), "test": fold.test.tolist()} for fold in folds]}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        temporary.write_text(json.dumps(document) + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def folds_from_json(path: str | Path) -> list[Fold]:
    """Read folds written by ``folds_to_json``."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        return [
            Fold(np.asarray(entry["train"], dtype=np.int64), np.asarray(entry["test"], dtype=np.int64))
            for entry in document["folds"]
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise FoldError(f"{path} is not a folds file written by folds_to_json ({error})") from error
