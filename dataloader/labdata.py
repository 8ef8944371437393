"""Posed-expression datasets recorded in a lab (CK+48, JAFFE): the in-memory dataset and shared I/O.

``ck48.py`` and ``jaffe.py`` read their own folders and h5 files into a ``LabDataset``. This
module contains what both need: error collection, grey image decoding, h5 reading helpers and
the atomic h5 writer used by ``python -m dataloader.prepare ck48|jaffe``.
"""
from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
import torch

from dataloader.fer2013 import DatasetError

logger = logging.getLogger(__name__)

MAX_ERRORS = 20
LAYOUT_ATTRIBUTE = "layout"
PREPARED_LAYOUT = "dataloader.prepare"  # value of LAYOUT_ATTRIBUTE in files that the prepare command writes

# Pillow modes that convert to "L" without loss. Pillow clips 16-bit and float modes to 0..255
# instead of scaling them, so those are rejected.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV"})


@dataclass
class LabDataset:
    """One lab-recorded expression dataset held in memory.

    ``labels`` index into ``classes``. ``subjects`` are subject ids: the CK+ subject number (10
    for S010), or for JAFFE an index into ``subject_names``. ``sequences`` are CK+ sequence
    numbers within a subject (4 for S010_004). Subjects and sequences are None when the source
    does not record them (the widely copied ``CK_data.h5`` has neither), and ``files`` is None
    when the source has no file names. ``layout`` names the source format: "folder",
    "prepared" (written by ``python -m dataloader.prepare``), "h5" (another h5 file with class
    names) or "CK_data" (data_pixel and data_label only).
    """

    name: str
    pixels: torch.Tensor  # uint8 (N, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    subjects: torch.Tensor | None = None  # int64 (N,)
    sequences: torch.Tensor | None = None  # int64 (N,)
    files: list[str] | None = None
    layout: str = "folder"
    source: str = ""
    subject_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        count = int(self.pixels.shape[0])
        if self.pixels.dtype != torch.uint8 or self.pixels.dim() != 3:
            raise DatasetError(
                f"{self.name} pixels are {self.pixels.dtype} {tuple(self.pixels.shape)}; expected uint8 (N, H, W)"
            )
        if tuple(self.labels.shape) != (count,) or self.labels.dtype != torch.int64:
            raise DatasetError(
                f"{self.name} labels are {self.labels.dtype} {tuple(self.labels.shape)}; expected int64 ({count},)"
            )
        if count and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DatasetError(
                f"{self.name} labels span {int(self.labels.min())}..{int(self.labels.max())}; "
                f"expected 0..{len(self.classes) - 1} for the classes {self.classes}"
            )
        for key in ("subjects", "sequences"):
            values = getattr(self, key)
            if values is not None and (tuple(values.shape) != (count,) or values.dtype != torch.int64):
                raise DatasetError(
                    f"{self.name} {key} are {values.dtype} {tuple(values.shape)}; expected int64 ({count},)"
                )
        if self.files is not None and len(self.files) != count:
            raise DatasetError(f"{self.name} has {len(self.files)} file names for {count} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        subjects = "None" if self.subjects is None else str(len(torch.unique(self.subjects)))
        return (
            f"LabDataset(name={self.name!r}, pixels={self.pixels.dtype} {tuple(self.pixels.shape)}, "
            f"classes={self.classes}, subjects={subjects}, layout={self.layout!r}, source={self.source!r})"
        )

    def class_counts(self) -> list[int]:
        """Return the number of images of each class, in the order of ``classes``."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def select(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> LabDataset:
        """Return a new dataset with the images at ``indices``, in that order."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        return replace(
            self,
            pixels=self.pixels[index],
            labels=self.labels[index],
            subjects=None if self.subjects is None else self.subjects[index],
            sequences=None if self.sequences is None else self.sequences[index],
            files=None if self.files is None else [self.files[i] for i in index.tolist()],
        )

    def with_classes(self, classes: Sequence[str]) -> LabDataset:
        """Return the same images with labels renumbered to index ``classes``.

        Class names are matched case-insensitively, and ``classes`` must name the same set of
        classes as the dataset. Use it to compare datasets stored with different label orders.
        """
        requested = [name.lower() for name in classes]
        current = [name.lower() for name in self.classes]
        if sorted(requested) != sorted(current):
            raise DatasetError(
                f"{self.name}: cannot reorder the classes {self.classes} to {list(classes)}; the names differ"
            )
        mapping = torch.tensor([requested.index(name) for name in current], dtype=torch.int64)
        return replace(self, labels=mapping[self.labels], classes=list(classes))


class ErrorList:
    """Validation messages of one input, collected up to MAX_ERRORS."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        if not self.full:
            self.messages.append(message)

    @property
    def full(self) -> bool:
        return len(self.messages) >= MAX_ERRORS

    def raise_if_any(self) -> None:
        """Raise DatasetError listing every collected message, if there is one."""
        if not self.messages:
            return
        more = " (stopped after the first errors)" if self.full else ""
        header = f"{self.source}: {len(self.messages)} error(s){more}; nothing was written:"
        summary = "\n".join([header, *self.messages])
        raise DatasetError(summary, self.messages)


def read_grey_image(path: Path) -> tuple[np.ndarray | None, str | None]:
    """Decode an image file to 8-bit grey. Return (pixels (H, W) uint8, None) or (None, problem).

    Palette images ("P") are first expanded through their palette to RGB, so the grey value is
    the luma of the palette colour and not the palette index.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in EIGHT_BIT_MODES:
                return None, f"image mode {image.mode} is not 8-bit; expected 8-bit grey, palette or RGB"
            if image.mode in ("P", "PA"):
                image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
            grey = image.convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return None, f"cannot read image: {error}"
    return np.asarray(grey, dtype=np.uint8), None


def image_size_problem(pixels: np.ndarray, size: tuple[int, int]) -> str | None:
    """Return a message when ``pixels`` (H, W) is not ``size`` (H, W), else None."""
    if pixels.shape == size:
        return None
    height, width = pixels.shape
    return f"image is {width}x{height}; expected {size[1]}x{size[0]}"


# ---------------------------------------------------------------------------------------------
# h5 reading


def open_h5(path: Path, missing_message: str) -> h5py.File:
    """Open ``path`` for reading.

    Raises FileNotFoundError with ``missing_message`` when the file is absent, and DatasetError
    when it is not HDF5.
    """
    if not path.is_file():
        raise FileNotFoundError(missing_message)
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DatasetError(f"{path} is not a readable HDF5 file ({error})") from error


def decode_strings(values: np.ndarray | Sequence) -> list[str]:
    """Return h5 string values (bytes or str) as a list of str."""
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in np.asarray(values).tolist()]


def read_name_list(file: h5py.File, key: str) -> list[str] | None:
    """Read a list of names stored as an attribute: an array of strings or one comma-separated string."""
    if key not in file.attrs:
        return None
    value = file.attrs[key]
    if isinstance(value, (bytes, str)):
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        return [name.strip() for name in text.split(",")]
    return [name.strip() for name in decode_strings(value)]


def read_pixels(file: h5py.File, path: Path, key: str, flat_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read uint8 images (N, H, W) from ``key``. Images stored flat as (N, H*W) are reshaped to ``flat_shape``."""
    if key not in file:
        raise DatasetError(f"{path}: key '{key}' is missing; expected uint8 images of shape (N, H, W)")
    dataset = file[key]
    if not np.issubdtype(dataset.dtype, np.integer):
        raise DatasetError(
            f"{path}: key '{key}' has dtype {dataset.dtype}; expected an integer type with values 0..255"
        )
    pixels = dataset[()]
    if pixels.ndim == 2 and flat_shape is not None and pixels.shape[1] == flat_shape[0] * flat_shape[1]:
        pixels = pixels.reshape(pixels.shape[0], *flat_shape)
    if pixels.ndim != 3:
        raise DatasetError(f"{path}: key '{key}' has shape {pixels.shape}; expected (N, H, W)")
    if pixels.dtype != np.uint8 and pixels.size:
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 255:
            raise DatasetError(f"{path}: key '{key}' has values {low}..{high}; expected pixel values 0..255")
    return np.ascontiguousarray(pixels.astype(np.uint8, copy=False))


def read_labels(file: h5py.File, path: Path, key: str, count: int, class_count: int) -> np.ndarray:
    """Read int64 labels (count,) with values 0..class_count-1 from ``key``."""
    if key not in file:
        raise DatasetError(f"{path}: key '{key}' is missing; expected int64 labels of shape (N,)")
    dataset = file[key]
    if dataset.shape != (count,) or not np.issubdtype(dataset.dtype, np.integer):
        raise DatasetError(
            f"{path}: key '{key}' is {dataset.dtype} {dataset.shape}; expected integer labels of shape ({count},)"
        )
    labels = dataset[()].astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= class_count))
    if bad.size:
        raise DatasetError(
            f"{path}: key '{key}' has label {int(labels[bad[0]])} at index {int(bad[0])}; expected 0..{class_count - 1}"
        )
    return labels


def read_optional(file: h5py.File, path: Path, key: str, count: int) -> np.ndarray | None:
    """Read the (count,) array stored under ``key``, or return None when the key is absent."""
    if key not in file:
        return None
    dataset = file[key]
    if dataset.shape != (count,):
        raise DatasetError(f"{path}: key '{key}' has shape {dataset.shape}; expected ({count},), one value per image")
    return dataset[()]


# ---------------------------------------------------------------------------------------------
# h5 writing


def write_lab_h5(dataset: LabDataset, out: str | Path, *, overwrite: bool = False, attrs: dict | None = None) -> Path:
    """Write ``dataset`` as data_pixel, data_label, data_subject, data_sequence and data_file keys.

    Keys whose values are None are left out. The attributes ``classes``, ``dataset``,
    ``layout`` and, when known, ``subjects`` (subject names) are written, plus ``attrs``. The
    file is written under a temporary name in the output folder and then renamed, so ``out``
    is never left half-written. Raises FileExistsError when ``out`` exists and ``overwrite``
    is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --force (overwrite=True) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)

    strings = h5py.string_dtype()
    temporary = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    try:
        with h5py.File(temporary, "x") as file:
            file.create_dataset("data_pixel", data=dataset.pixels.numpy())
            file.create_dataset("data_label", data=dataset.labels.numpy())
            if dataset.subjects is not None:
                file.create_dataset("data_subject", data=dataset.subjects.numpy())
            if dataset.sequences is not None:
                file.create_dataset("data_sequence", data=dataset.sequences.numpy())
            if dataset.files is not None:
                file.create_dataset("data_file", data=np.array(dataset.files, dtype=object), dtype=strings)
            file.attrs["classes"] = np.array(dataset.classes, dtype=object)
            if dataset.subject_names is not None:
                file.attrs["subjects"] = np.array(dataset.subject_names, dtype=object)
            file.attrs["dataset"] = dataset.name
            file.attrs[LAYOUT_ATTRIBUTE] = PREPARED_LAYOUT
            for key, value in (attrs or {}).items():
                file.attrs[key] = value
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.info("wrote %s", out)
    return out


def format_counts(dataset: LabDataset) -> str:
    """Return a short summary: image, subject and per-class counts."""
    subjects = "unknown" if dataset.subjects is None else str(len(torch.unique(dataset.subjects)))
    lines = [f"{dataset.name}: {len(dataset)} images, {subjects} subjects"]
    width = max(len(name) for name in dataset.classes)
    for name, count in zip(dataset.classes, dataset.class_counts()):
        lines.append(f"  {name.ljust(width)} {count:5d}")
    return "\n".join(lines)
