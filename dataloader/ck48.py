"""CK+48: 48x48 grey faces from the extended Cohn-Kanade dataset, read from its folder or an h5 file.

The folder copy has one folder per class (anger, contempt, disgust, fear, happy, sadness,
surprise) of PNG files named ``S###_###_########.png``: subject, sequence and frame number.
The common copy contains the last three frames of 327 sequences, 981 images of 118 subjects.

``load_ck48`` reads three sources:

- the class folders (a directory path);
- an h5 file with ``data_pixel`` (N, 48, 48) uint8, ``data_label`` and a ``classes``
  attribute naming the label order, and optionally ``data_subject``, ``data_sequence`` and
  ``data_file``. ``python -m dataloader.prepare ck48`` writes such a file, with int64 subject
  and sequence numbers. Subject ids stored as strings such as "S010" and sequence ids such as
  "S010_004" are read as numbers too;
- the widely copied ``CK_data.h5`` (``data_pixel`` and ``data_label`` only, labels in
  CK_DATA_CLASSES order, images grouped by class), which records no subjects.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from dataloader.fer2013 import DatasetError
from dataloader.labdata import (
    LAYOUT_ATTRIBUTE,
    PREPARED_LAYOUT,
    ErrorList,
    LabDataset,
    decode_strings,
    image_size_problem,
    open_h5,
    read_grey_image,
    read_labels,
    read_name_list,
    read_optional,
    read_pixels,
    write_lab_h5,
)

logger = logging.getLogger(__name__)

NAME = "CK+48"
CK48_CLASSES: tuple[str, ...] = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
# Label order of CK_data.h5, written by the widely copied preprocess_CK+.py of
# github.com/WuJie1010/Facial-Expression-Recognition.Pytorch and read by its CK.py.
CK_DATA_CLASSES: tuple[str, ...] = ("anger", "disgust", "fear", "happy", "sadness", "surprise", "contempt")
IMAGE_SIZE = 48
DEFAULT_PATH = "data/CK+48/ck48.h5"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_NAME_PATTERN = re.compile(r"S(\d{3})_(\d{3})_(\d{8})")
_SUBJECT_PATTERN = re.compile(r"S?(\d+)")
_SEQUENCE_PATTERN = re.compile(r"(?:S?\d+_)?(\d+)")


def parse_ck_name(name: str) -> tuple[int, int, int]:
    """Parse a CK+ file name such as ``S010_004_00000017.png`` into (subject, sequence, frame).

    A leading folder (``anger/S010_...``) is ignored. Raises DatasetError when the name does
    not have the form ``S###_###_########`` followed by .png, .jpg or .jpeg.
    """
    base = Path(name).name
    stem, suffix = Path(base).stem, Path(base).suffix
    match = _NAME_PATTERN.fullmatch(stem)
    if match is None or suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(
            f"file name '{name}' is not a CK+ name; expected S###_###_########.png (subject, sequence, frame), "
            f"for example S010_004_00000017.png"
        )
    subject, sequence, frame = (int(part) for part in match.groups())
    return subject, sequence, frame


def prepare_command(out: str | Path = DEFAULT_PATH) -> str:
    """Return the shell command that writes a CK+48 h5 file to ``out`` from the class folders."""
    return f"python -m dataloader.prepare ck48 --folder CK+48 --out {out}"


# ---------------------------------------------------------------------------------------------
# Folder


def _class_folders(root: Path, errors: ErrorList) -> list[tuple[int, Path]]:
    """Return (label, folder) for every class folder under ``root``, in CK48_CLASSES order."""
    found: list[tuple[int, Path]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            logger.warning("skipping %s: expected only class folders in %s", entry, root)
            continue
        name = entry.name.lower()
        if name not in CK48_CLASSES:
            errors.add(f"{entry}: unknown class folder; expected one of {', '.join(CK48_CLASSES)}")
            continue
        found.append((CK48_CLASSES.index(name), entry))
    missing = sorted(set(CK48_CLASSES) - {CK48_CLASSES[label] for label, _ in found})
    if missing and found:
        logger.warning("%s has no folder for the class(es) %s", root, ", ".join(missing))
    return sorted(found)


def read_ck48_folder(root: str | Path) -> LabDataset:
    """Read CK+48 class folders into a LabDataset with labels in CK48_CLASSES order.

    Class folder names match case-insensitively. Files are read in sorted order within each
    class. Images must be 48x48 and are converted to grey. Raises DatasetError listing up to
    MAX_ERRORS problems, each naming its file or folder: unknown class folders, file names
    that do not parse, unreadable images, images of another size, a sequence found in two
    class folders, or no image at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CK+48 folder {root} not found; expected {root}/<class>/S###_###_########.png")
    errors = ErrorList(root)
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    subjects: list[int] = []
    sequences: list[int] = []
    files: list[str] = []
    sequence_files: dict[tuple[int, int], Path] = {}

    for label, folder in _class_folders(root, errors):
        for file in sorted(folder.iterdir()):
            if errors.full:
                break
            if file.name.startswith("."):
                continue
            if file.is_dir():
                logger.warning("skipping folder %s: expected only images in %s", file, folder)
                continue
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                logger.warning("skipping %s: not a .png, .jpg or .jpeg file", file)
                continue
            try:
                subject, sequence, _ = parse_ck_name(file.name)
            except DatasetError as error:
                errors.add(f"{file}: {error}")
                continue
            earlier = sequence_files.setdefault((subject, sequence), file)
            if earlier.parent != file.parent:
                sequence_id = f"S{subject:03d}_{sequence:03d}"
                errors.add(f"{file}: sequence {sequence_id} is also in the class folder {earlier.parent}")
                continue
            image, problem = read_grey_image(file)
            problem = problem or image_size_problem(image, (IMAGE_SIZE, IMAGE_SIZE))
            if problem:
                errors.add(f"{file}: {problem}")
                continue
            pixels.append(image)
            labels.append(label)
            subjects.append(subject)
            sequences.append(sequence)
            files.append(f"{folder.name}/{file.name}")

    if not pixels and not errors.full:
        errors.add(
            f"{root}: contains no CK+ images; expected class folders ({', '.join(CK48_CLASSES)}) "
            f"of S###_###_########.png files"
        )
    errors.raise_if_any()
    return LabDataset(
        name=NAME,
        pixels=torch.from_numpy(np.stack(pixels)),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=list(CK48_CLASSES),
        subjects=torch.tensor(subjects, dtype=torch.int64),
        sequences=torch.tensor(sequences, dtype=torch.int64),
        files=files,
        layout="folder",
        source=str(root),
    )


# ---------------------------------------------------------------------------------------------
# h5 files


def _parse_ids(values: np.ndarray, pattern: re.Pattern[str], path: Path, key: str) -> torch.Tensor:
    """Return int64 ids from integers or from strings such as 'S010' or 'S010_004'."""
    if np.issubdtype(values.dtype, np.integer):
        return torch.from_numpy(values.astype(np.int64))
    numbers = []
    for index, text in enumerate(decode_strings(values)):
        match = pattern.fullmatch(text.strip())
        if match is None:
            raise DatasetError(
                f"{path}: key '{key}' has value '{text}' at index {index}; expected a number or an id like S010_004"
            )
        numbers.append(int(match.group(1)))
    return torch.tensor(numbers, dtype=torch.int64)


def _file_classes(file: h5py.File, path: Path) -> tuple[list[str], str]:
    """Return the label order of an h5 file and its layout name."""
    classes = read_name_list(file, "classes")
    if classes is None:
        return list(CK_DATA_CLASSES), "CK_data"
    lowered = [name.lower() for name in classes]
    if sorted(lowered) != sorted(CK48_CLASSES):
        raise DatasetError(
            f"{path}: attribute 'classes' is {classes}; expected the CK+ classes {list(CK48_CLASSES)} in any order"
        )
    layout = "prepared" if file.attrs.get(LAYOUT_ATTRIBUTE) == PREPARED_LAYOUT else "h5"
    return lowered, layout


def read_ck48_h5(path: str | Path) -> LabDataset:
    """Read a CK+48 h5 file (see the module documentation for the layouts), keeping its label order."""
    path = Path(path)
    missing = f"CK+48 file {path} not found; write it from the class folders with\n  {prepare_command(path)}"
    with open_h5(path, missing) as file:
        stored_name = file.attrs.get("dataset")
        if stored_name is not None and stored_name != NAME:
            raise DatasetError(f"{path} contains the dataset {stored_name!r}, not {NAME}; read it with its own loader")
        classes, layout = _file_classes(file, path)
        pixels = read_pixels(file, path, "data_pixel", flat_shape=(IMAGE_SIZE, IMAGE_SIZE))
        if pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DatasetError(f"{path}: key 'data_pixel' has shape {pixels.shape}; expected (N, 48, 48)")
        count = pixels.shape[0]
        labels = read_labels(file, path, "data_label", count, len(classes))
        subject_values = read_optional(file, path, "data_subject", count)
        sequence_values = read_optional(file, path, "data_sequence", count)
        file_values = read_optional(file, path, "data_file", count)

    subjects = sequences = None
    if subject_values is not None:
        subjects = _parse_ids(subject_values, _SUBJECT_PATTERN, path, "data_subject")
    if sequence_values is not None:
        sequences = _parse_ids(sequence_values, _SEQUENCE_PATTERN, path, "data_sequence")
    logger.info("loaded %d CK+48 images (%s layout) from %s", count, layout, path)
    return LabDataset(
        name=NAME,
        pixels=torch.from_numpy(pixels),
        labels=torch.from_numpy(labels),
        classes=classes,
        subjects=subjects,
        sequences=sequences,
        files=None if file_values is None else decode_strings(file_values),
        layout=layout,
        source=str(path),
    )


def load_ck48(path: str | Path = DEFAULT_PATH, classes: Sequence[str] | None = CK48_CLASSES) -> LabDataset:
    """Read CK+48 from its class folders (a directory) or from an h5 file.

    Labels are renumbered by class name to index ``classes`` (by default CK48_CLASSES, the
    folder order), whatever order the source stores. With ``classes`` None the source's own
    order is kept. ``subjects``, ``sequences`` and ``files`` are None where the source lacks
    them, as in CK_data.h5, so subject-wise folds cannot be built from such a file.
    """
    path = Path(path)
    dataset = read_ck48_folder(path) if path.is_dir() else read_ck48_h5(path)
    if classes is not None and [name.lower() for name in classes] != dataset.classes:
        dataset = dataset.with_classes(classes)
    return dataset


def write_ck48_h5(dataset: LabDataset, out: str | Path = DEFAULT_PATH, *, overwrite: bool = False) -> Path:
    """Write a CK+48 dataset as the h5 layout that ``load_ck48`` reads, atomically."""
    if tuple(dataset.pixels.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(f"CK+48 images must be 48x48, got {tuple(dataset.pixels.shape[1:])}")
    return write_lab_h5(dataset, out, overwrite=overwrite)


def ckdata_order(dataset: LabDataset) -> np.ndarray:
    """Return the permutation that puts ``dataset`` into the image order of CK_data.h5.

    CK_data.h5 groups images by class in CK_DATA_CLASSES order and, within a class, sorts them
    by file name (preprocess_CK+.py sorts each folder's listing). ``dataset.pixels[order]``
    is then in that order. A dataset read from CK_data.h5 itself has no file names and is
    already in that order, so its identity permutation is returned after checking that its
    labels are grouped by class. Raises DatasetError for other datasets without file names.
    """
    lowered = [name.lower() for name in dataset.classes]
    if sorted(lowered) != sorted(CK_DATA_CLASSES):
        raise DatasetError(
            f"{dataset.source}: classes {dataset.classes} are not the CK+ classes {list(CK_DATA_CLASSES)}"
        )
    rank = np.array([CK_DATA_CLASSES.index(name) for name in lowered], dtype=np.int64)
    class_rank = rank[dataset.labels.numpy()]

    if dataset.files is None:
        if dataset.layout != "CK_data":
            raise DatasetError(
                f"{dataset.source}: no file names, so the CK_data.h5 order cannot be derived; "
                f"read the class folders or a file written by {prepare_command()}"
            )
        if np.any(np.diff(class_rank) < 0):
            raise DatasetError(
                f"{dataset.source}: images are not grouped by class in the order {list(CK_DATA_CLASSES)}"
            )
        return np.arange(len(dataset), dtype=np.int64)

    names = [Path(name).name for name in dataset.files]
    return np.array(sorted(range(len(dataset)), key=lambda i: (class_rank[i], names[i])), dtype=np.int64)
