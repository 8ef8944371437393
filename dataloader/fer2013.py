"""FER2013 in the HDF5 layout that the project trains on, and exact-duplicate detection.

The file contains ``<S>_pixel`` (N, 48, 48) uint8 and ``<S>_label`` (N,) int64 for each split S
in ``SPLITS``. Other keys are ignored. ``python -m dataloader.prepare fer2013`` writes it.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, overload

import h5py
import numpy as np
import torch

logger = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
DEFAULT_PATH = "data/FER_2013/data.h5"
IMAGE_SIZE = 48


class DatasetError(ValueError):
    """Invalid dataset input. ``errors`` lists every problem found, one message per problem."""

    def __init__(self, message: str, errors: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.errors: list[str] = list(errors) if errors else [message]


@dataclass
class Split:
    """One FER2013 split held in memory."""

    name: str
    pixels: torch.Tensor  # uint8 (N, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"Split(name={self.name!r}, pixels={self.pixels.dtype} {tuple(self.pixels.shape)}, labels={len(self)})"


def prepare_command(out: str | Path = DEFAULT_PATH) -> str:
    """Return the shell command that writes a FER2013 h5 file to ``out`` from Kaggle's CSV."""
    return f"python -m dataloader.prepare fer2013 --csv fer2013.csv --out {out}"


def _missing_file_message(path: Path) -> str:
    return (
        f"FER2013 file {path} not found. Download fer2013.csv from Kaggle's "
        f"'Challenges in Representation Learning: Facial Expression Recognition Challenge' and run\n"
        f"  {prepare_command(path)}\n"
        f"or, from the image-folder copy (train/<class>/, test/<class>/), run\n"
        f"  python -m dataloader.prepare fer2013 --folders DIR --out {path}"
    )


def _read_pixels(file: h5py.File, path: Path, key: str) -> np.ndarray:
    if key not in file:
        raise DatasetError(f"{path}: key '{key}' is missing; expected uint8 pixels of shape (N, 48, 48) or (N, 2304)")
    dataset = file[key]
    shape = tuple(dataset.shape)
    if shape[1:] == (IMAGE_SIZE * IMAGE_SIZE,):
        flat = True
    elif shape[1:] == (IMAGE_SIZE, IMAGE_SIZE):
        flat = False
    else:
        raise DatasetError(f"{path}: key '{key}' has shape {shape}; expected (N, 48, 48) or (N, 2304)")
    if not np.issubdtype(dataset.dtype, np.integer):
        raise DatasetError(f"{path}: key '{key}' has dtype {dataset.dtype}; expected an integer type with values 0..255")

    pixels = dataset[()]
    if pixels.dtype != np.uint8 and pixels.size:
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 255:
            raise DatasetError(f"{path}: key '{key}' has values {low}..{high}; expected pixel values 0..255")
    pixels = pixels.astype(np.uint8, copy=False)
    if flat:
        pixels = pixels.reshape(shape[0], IMAGE_SIZE, IMAGE_SIZE)
    return np.ascontiguousarray(pixels)


def _read_labels(file: h5py.File, path: Path, key: str, count: int, pixel_key: str) -> np.ndarray:
    if key not in file:
        raise DatasetError(f"{path}: key '{key}' is missing; expected int64 labels of shape (N,)")
    dataset = file[key]
    if dataset.ndim != 1:
        raise DatasetError(f"{path}: key '{key}' has shape {dataset.shape}; expected (N,)")
    if not np.issubdtype(dataset.dtype, np.integer):
        raise DatasetError(f"{path}: key '{key}' has dtype {dataset.dtype}; expected an integer type")
    if dataset.shape[0] != count:
        raise DatasetError(
            f"{path}: key '{key}' has {dataset.shape[0]} labels but '{pixel_key}' has {count} images; "
            f"expected the same count"
        )

    labels = dataset[()].astype(np.int64, copy=False)
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASSES)))
    if bad.size:
        raise DatasetError(
            f"{path}: key '{key}' has label {int(labels[bad[0]])} at index {int(bad[0])} "
            f"({bad.size} invalid labels in all); expected 0..{len(CLASSES) - 1}"
        )
    return labels


def load_fer2013(path: str | Path = DEFAULT_PATH, splits: Iterable[str] = SPLITS) -> dict[str, Split]:
    """Read the requested splits of a FER2013 h5 file into memory.

    Only ``<S>_pixel`` and ``<S>_label`` of the requested splits are read. Pixels stored flat as
    (N, 2304) are reshaped to (N, 48, 48). Raises FileNotFoundError when the file is missing and
    DatasetError when a key is missing or has the wrong shape, dtype or values.
    """
    path = Path(path)
    names = list(splits)
    unknown = [name for name in names if name not in SPLITS]
    if unknown:
        raise DatasetError(f"unknown FER2013 split(s) {unknown}; expected names from {list(SPLITS)}")
    if not path.is_file():
        raise FileNotFoundError(_missing_file_message(path))

    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise DatasetError(f"{path} is not a readable HDF5 file ({error}); {prepare_command(path)} writes one") from error

    result: dict[str, Split] = {}
    with file:
        for name in names:
            pixel_key, label_key = f"{name}_pixel", f"{name}_label"
            pixels = _read_pixels(file, path, pixel_key)
            labels = _read_labels(file, path, label_key, pixels.shape[0], pixel_key)
            result[name] = Split(name, torch.from_numpy(pixels), torch.from_numpy(labels))
            logger.info("loaded %s: %d images from %s", name, len(labels), path)
    return result


def _image_digests(images: torch.Tensor) -> np.ndarray:
    """Return one 16-byte BLAKE2b digest per image, as a numpy array of dtype V16."""
    array = np.ascontiguousarray(images.detach().cpu().numpy())
    flat = array.reshape(array.shape[0], int(np.prod(array.shape[1:])))
    joined = b"".join(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat)
    return np.frombuffer(joined, dtype="V16")


@overload
def exact_duplicates(a: torch.Tensor, b: None = None) -> tuple[int, int]: ...
@overload
def exact_duplicates(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...


def exact_duplicates(a: torch.Tensor, b: torch.Tensor | None = None) -> tuple[int, int] | torch.Tensor:
    """Find images with exactly the same pixels, compared by 128-bit BLAKE2b digests.

    With ``b`` None, return ``(duplicates, groups)``: the number of images in ``a`` equal to an
    earlier image of ``a``, and the number of distinct images that occur more than once.
    With ``b`` given, return a bool tensor of shape (len(b),), True where the image of ``b``
    also occurs in ``a``. Images of ``a`` and ``b`` must have the same shape and dtype.
    """
    digests_a = _image_digests(a)
    if b is None:
        unique, counts = np.unique(digests_a, return_counts=True)
        return int(len(digests_a) - len(unique)), int(np.count_nonzero(counts > 1))

    if tuple(a.shape[1:]) != tuple(b.shape[1:]) or a.dtype != b.dtype:
        raise ValueError(
            f"cannot compare images of shape {tuple(a.shape[1:])} {a.dtype} with {tuple(b.shape[1:])} {b.dtype}"
        )
    digests_b = _image_digests(b)
    mask = np.isin(digests_b, digests_a)
    return torch.from_numpy(mask)
