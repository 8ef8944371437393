"""Tiny synthetic FER2013 files for tests.

Each image is grey noise with a brighter horizontal bar whose row depends on the class, so a
small network can learn the classes above chance in a few steps.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from dataloader.fer2013 import CLASSES, IMAGE_SIZE, SPLITS

BAR_HEIGHT = 4
BAR_SPACING = 6  # rows between the tops of neighbouring classes' bars
BAR_BRIGHTNESS = 60.0
NOISE_STD = 30.0


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return uint8 images (N, 48, 48) of noise plus a bar at a class-dependent row."""
    count = len(labels)
    images = rng.normal(110.0, NOISE_STD, size=(count, IMAGE_SIZE, IMAGE_SIZE))
    for index, label in enumerate(labels):
        top = 3 + BAR_SPACING * int(label)
        images[index, top : top + BAR_HEIGHT, 6:-6] += BAR_BRIGHTNESS
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def balanced_labels(count: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``count`` int64 labels in shuffled order, each class count differing by at most one."""
    labels = np.arange(count, dtype=np.int64) % len(CLASSES)
    return rng.permutation(labels)


def make_fer2013_h5(
    path: str | Path,
    n_train: int = 140,
    n_public: int = 35,
    n_private: int = 35,
    seed: int = 0,
    flat: bool = False,
) -> Path:
    """Write a small synthetic FER2013 h5 file with balanced classes and return its path.

    With ``flat`` True the pixels are stored as (N, 2304), as many public copies do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as file:
        for name, count in zip(SPLITS, (n_train, n_public, n_private)):
            labels = balanced_labels(count, rng)
            pixels = synthetic_images(labels, rng)
            if flat:
                pixels = pixels.reshape(count, IMAGE_SIZE * IMAGE_SIZE)
            file.create_dataset(f"{name}_pixel", data=pixels)
            file.create_dataset(f"{name}_label", data=labels)
    return path


def make_fer2013_csv(
    path: str | Path,
    rows_per_class_and_usage: int = 2,
    column_order: Sequence[str] = ("emotion", "pixels", "Usage"),
    spaces: bool = False,
    seed: int = 0,
) -> Path:
    """Write a small synthetic CSV in Kaggle's fer2013.csv format and return its path.

    Rows of the three usages are shuffled together. ``column_order`` sets the column order,
    and ``spaces`` puts a space after every comma.
    """
    if sorted(column_order) != sorted(("emotion", "pixels", "Usage")):
        raise ValueError(f"column_order must be a permutation of emotion, pixels, Usage, got {column_order}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    usages = np.repeat(np.arange(len(SPLITS)), len(CLASSES) * rows_per_class_and_usage)
    labels = np.tile(np.repeat(np.arange(len(CLASSES)), rows_per_class_and_usage), len(SPLITS))
    order = rng.permutation(len(labels))
    usages, labels = usages[order], labels[order]
    images = synthetic_images(labels, rng)

    separator = ", " if spaces else ","
    with path.open("w", newline="") as stream:
        stream.write(separator.join(column_order) + "\n")
        for usage, label, image in zip(usages, labels, images):
            fields = {
                "emotion": str(int(label)),
                "pixels": " ".join(map(str, image.reshape(-1).tolist())),
                "Usage": SPLITS[usage],
            }
            stream.write(separator.join(fields[column] for column in column_order) + "\n")
    return path
