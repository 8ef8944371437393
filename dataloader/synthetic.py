"""Tiny synthetic FER2013 files and CK+48 and JAFFE folders for tests.

Each image is grey noise with a brighter horizontal bar whose row depends on the class, so a
small network can learn the classes above chance in a few steps.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from dataloader.ck48 import CK48_CLASSES
from dataloader.fer2013 import CLASSES, IMAGE_SIZE, SPLITS
from dataloader.jaffe import DEFAULT_CROP as JAFFE_CROP
from dataloader.jaffe import EXPRESSIONS as JAFFE_EXPRESSIONS
from dataloader.jaffe import IMAGE_SIZE as JAFFE_SIZE

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


def make_ck48_folder(
    root: str | Path,
    subjects: Sequence[int] = (10, 11, 12, 13, 14, 15),
    classes: Sequence[str] = CK48_CLASSES,
    frames: int = 3,
    seed: int = 0,
) -> Path:
    """Write a small CK+48 folder copy and return ``root``.

    Every subject gets one sequence per class in ``classes``, with sequence numbers 1, 2, ...
    in that order, and ``frames`` 48x48 grey PNG frames per sequence, numbered from 10. Files
    are named ``<class>/S###_###_########.png`` as in the real copy. An image shows a bar at
    the row of its class's index in CK48_CLASSES.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sequence, name in enumerate(classes, start=1):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        labels = np.full(frames, CK48_CLASSES.index(name), dtype=np.int64)
        for subject in subjects:
            for frame, image in enumerate(synthetic_images(labels, rng), start=10):
                Image.fromarray(image, mode="L").save(folder / f"S{subject:03d}_{sequence:03d}_{frame:08d}.png")
    return root


def palette_tiff(path: str | Path, grey: np.ndarray) -> Path:
    """Save uint8 grey pixels as a palette ("P") TIFF whose palette is reversed grey.

    Entry i of the palette is the grey value 255 - i. A reader that applies the palette gets
    ``grey`` back, and one that reads the raw indices gets 255 - ``grey``.
    """
    indices = np.ascontiguousarray(255 - grey.astype(np.uint8))
    image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
    image.putpalette([value for index in range(256) for value in (255 - index,) * 3])
    image.save(path)
    return Path(path)


def make_jaffe_folder(
    root: str | Path,
    subjects: Sequence[str] = ("KA", "KL", "KM"),
    takes: int = 2,
    palette_every: int = 3,
    seed: int = 0,
) -> Path:
    """Write a small JAFFE folder copy of 256x256 grey TIFFs and return ``root``.

    Every subject gets ``takes`` images of each expression, named like ``KA.AN1.39.tiff`` with
    running image numbers. Every ``palette_every``-th file (counting from the first) is saved
    as a palette TIFF with a reversed grey palette (see ``palette_tiff``), the others as plain
    grey. Each image is background noise with a synthetic 48x48 face pattern (a bar at the
    row of the FER2013 label), scaled up to fill jaffe.DEFAULT_CROP, so ``load_jaffe`` returns
    learnable 48x48 images.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    left, top, size = JAFFE_CROP
    number = 1
    for subject in subjects:
        for label, code in enumerate(JAFFE_EXPRESSIONS):
            for take in range(1, takes + 1):
                face = synthetic_images(np.array([label]), rng)[0]
                full = rng.normal(120.0, NOISE_STD, size=(JAFFE_SIZE, JAFFE_SIZE))
                full = np.clip(np.rint(full), 0, 255).astype(np.uint8)
                full[top : top + size, left : left + size] = np.asarray(
                    Image.fromarray(face, mode="L").resize((size, size), Image.Resampling.NEAREST)
                )
                path = root / f"{subject}.{code}{take}.{number}.tiff"
                if (number - 1) % palette_every == 0:
                    palette_tiff(path, full)
                else:
                    Image.fromarray(full, mode="L").save(path)
                number += 1
    return root
