"""JAFFE: 213 grey 256x256 faces of 10 Japanese women, read from its TIFF folder or an h5 file.

File names have the form ``KA.AN1.39.tiff``: subject KA, expression AN, take 1, image number
39. The seven expression codes AN, DI, FE, HA, SA, SU, NE are in FER2013's class order, so a
JAFFE label is the FER2013 label (0 Angry ... 6 Neutral) and ``LabDataset.classes`` is
``fer2013.CLASSES``. Some TIFFs are palette images with a grey palette, and they are decoded
through that palette.

The h5 layout (``python -m dataloader.prepare jaffe`` writes it) contains the full images:
``data_pixel`` (N, 256, 256) uint8, ``data_label`` (FER2013 order), ``data_subject`` (index
into the ``subjects`` attribute) and ``data_file``, plus a ``classes`` attribute. Files whose
``classes`` attribute lists the expression codes (AN, DI, ...) or other class words are read
too, with labels renumbered by name. ``load_jaffe`` crops a fixed face box and resizes it.
"""
from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dataloader.fer2013 import CLASSES, DatasetError
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

NAME = "JAFFE"
EXPRESSIONS: tuple[str, ...] = ("AN", "DI", "FE", "HA", "SA", "SU", "NE")  # index = FER2013 label
IMAGE_SIZE = 256
OUTPUT_SIZE = 48
DEFAULT_PATH = "data/JAFFE/jaffe.h5"
IMAGE_SUFFIXES = (".tiff", ".tif")
# Face box (left, top, size) in the 256x256 images: x 48..207, y 72..231. In all 213 images of
# the distributed JAFFE it spans forehead to chin and the full face width, about the framing of
# CK+48's crops. It was chosen by inspecting the box drawn on every image (save_crop_preview).
DEFAULT_CROP: tuple[int, int, int] = (48, 72, 160)

_NAME_PATTERN = re.compile(r"([A-Z]{2})\.([A-Z]{2})(\d)\.(\d+)")
# Class names accepted in an h5 file's 'classes' attribute, in FER2013 label order.
_CLASS_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("an", "angry", "anger"),
    ("di", "disgust", "disgusted"),
    ("fe", "fear", "fearful"),
    ("ha", "happy", "happiness"),
    ("sa", "sad", "sadness"),
    ("su", "surprise", "surprised"),
    ("ne", "neutral"),
)
_CLASS_WORDS: dict[str, int] = {word: label for label, words in enumerate(_CLASS_SYNONYMS) for word in words}


def parse_jaffe_name(name: str) -> tuple[str, str, int, int]:
    """Parse a JAFFE file name such as ``KA.AN1.39.tiff`` into (subject, expression, take, number).

    A leading folder is ignored. Raises DatasetError when the name is not two capital letters,
    a dot, an expression code (AN, DI, FE, HA, SA, SU, NE) with a one-digit take, a dot, the
    image number and .tiff or .tif.
    """
    base = Path(name).name
    stem, suffix = Path(base).stem, Path(base).suffix
    match = _NAME_PATTERN.fullmatch(stem)
    expected = "expected SUBJECT.EXPRESSIONtake.number.tiff, for example KA.AN1.39.tiff"
    if match is None or suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(f"file name '{name}' is not a JAFFE name; {expected}")
    subject, expression, take, number = match.groups()
    if expression not in EXPRESSIONS:
        raise DatasetError(
            f"file name '{name}' has the unknown expression code {expression}; "
            f"expected one of {', '.join(EXPRESSIONS)}"
        )
    return subject, expression, int(take), int(number)


def prepare_command(out: str | Path = DEFAULT_PATH) -> str:
    """Return the shell command that writes a JAFFE h5 file to ``out`` from the TIFF folder."""
    return f"python -m dataloader.prepare jaffe --folder jaffedbase --out {out}"


# ---------------------------------------------------------------------------------------------
# Reading full-size images


def read_jaffe_folder(root: str | Path) -> LabDataset:
    """Read the JAFFE TIFF folder into a LabDataset of full 256x256 grey images.

    Files are read in sorted name order. Subjects are numbered by their sorted two-letter
    codes, which ``subject_names`` lists. Files other than .tiff/.tif (such as
    DATASET_README.txt) are skipped. Raises DatasetError listing up to MAX_ERRORS problems,
    each naming its file: names that do not parse, unreadable images, images that are not
    256x256, or no TIFF at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"JAFFE folder {root} not found; expected {root}/KA.AN1.39.tiff and the other TIFFs")
    errors = ErrorList(root)
    rows: list[tuple[str, int, np.ndarray, str]] = []

    for file in sorted(root.iterdir()):
        if errors.full:
            break
        if file.name.startswith("."):
            continue
        if file.is_dir():
            logger.warning("skipping folder %s: expected only TIFF files in %s", file, root)
            continue
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            logger.info("skipping %s: not a .tiff or .tif file", file)
            continue
        try:
            subject, expression, _, _ = parse_jaffe_name(file.name)
        except DatasetError as error:
            errors.add(f"{file}: {error}")
            continue
        image, problem = read_grey_image(file)
        problem = problem or image_size_problem(image, (IMAGE_SIZE, IMAGE_SIZE))
        if problem:
            errors.add(f"{file}: {problem}")
            continue
        rows.append((subject, EXPRESSIONS.index(expression), image, file.name))

    if not rows and not errors.full:
        errors.add(f"{root}: contains no JAFFE images; expected TIFF files named like KA.AN1.39.tiff")
    errors.raise_if_any()

    subject_names = sorted({subject for subject, _, _, _ in rows})
    return LabDataset(
        name=NAME,
        pixels=torch.from_numpy(np.stack([image for _, _, image, _ in rows])),
        labels=torch.tensor([label for _, label, _, _ in rows], dtype=torch.int64),
        classes=list(CLASSES),
        subjects=torch.tensor([subject_names.index(subject) for subject, _, _, _ in rows], dtype=torch.int64),
        files=[name for _, _, _, name in rows],
        layout="folder",
        source=str(root),
        subject_names=subject_names,
    )


def _label_map(classes: list[str], path: Path) -> np.ndarray:
    """Map an h5 file's class names to FER2013 labels: result[file label] = FER2013 label."""
    mapped = [_CLASS_WORDS.get(name.strip().lower()) for name in classes]
    if None in mapped or sorted(mapped) != list(range(len(CLASSES))):
        raise DatasetError(
            f"{path}: attribute 'classes' is {classes}; expected the seven expressions as codes "
            f"({', '.join(EXPRESSIONS)}) or names ({', '.join(CLASSES)}) in any order"
        )
    return np.array(mapped, dtype=np.int64)


def _subjects_from_h5(
    values: np.ndarray | None, names: list[str] | None, path: Path
) -> tuple[torch.Tensor | None, list[str] | None]:
    """Return subject indices and names from integer indices (with names) or subject code strings."""
    if values is None:
        return None, names
    if np.issubdtype(values.dtype, np.integer):
        subjects = torch.from_numpy(values.astype(np.int64))
        if names is not None and len(subjects) and not 0 <= int(subjects.min()) <= int(subjects.max()) < len(names):
            raise DatasetError(
                f"{path}: key 'data_subject' indexes beyond the {len(names)} names of attribute 'subjects'"
            )
        return subjects, names
    codes = [code.strip() for code in decode_strings(values)]
    unique = sorted(set(codes))
    return torch.tensor([unique.index(code) for code in codes], dtype=torch.int64), unique


def read_jaffe_h5(path: str | Path) -> LabDataset:
    """Read a JAFFE h5 file of full images, with labels renumbered to FER2013 order."""
    path = Path(path)
    missing = f"JAFFE file {path} not found; write it from the TIFF folder with\n  {prepare_command(path)}"
    with open_h5(path, missing) as file:
        stored_name = file.attrs.get("dataset")
        if stored_name is not None and stored_name != NAME:
            raise DatasetError(f"{path} contains the dataset {stored_name!r}, not {NAME}; read it with its own loader")
        classes = read_name_list(file, "classes") or list(EXPRESSIONS)
        to_fer = _label_map(classes, path)
        layout = "prepared" if file.attrs.get(LAYOUT_ATTRIBUTE) == PREPARED_LAYOUT else "h5"
        pixels = read_pixels(file, path, "data_pixel")
        count = pixels.shape[0]
        labels = to_fer[read_labels(file, path, "data_label", count, len(classes))]
        subject_values = read_optional(file, path, "data_subject", count)
        subject_names = read_name_list(file, "subjects")
        file_values = read_optional(file, path, "data_file", count)

    subjects, subject_names = _subjects_from_h5(subject_values, subject_names, path)
    logger.info("loaded %d JAFFE images (%s layout) from %s", count, layout, path)
    return LabDataset(
        name=NAME,
        pixels=torch.from_numpy(pixels),
        labels=torch.from_numpy(labels),
        classes=list(CLASSES),
        subjects=subjects,
        files=None if file_values is None else decode_strings(file_values),
        layout=layout,
        source=str(path),
        subject_names=subject_names,
    )


def write_jaffe_h5(dataset: LabDataset, out: str | Path = DEFAULT_PATH, *, overwrite: bool = False) -> Path:
    """Write a JAFFE dataset of full images as the h5 layout that ``load_jaffe`` reads, atomically."""
    if [name.lower() for name in dataset.classes] != [name.lower() for name in CLASSES]:
        dataset = dataset.with_classes(CLASSES)
    codes = np.array(EXPRESSIONS, dtype=object)
    return write_lab_h5(dataset, out, overwrite=overwrite, attrs={"expression_codes": codes})


# ---------------------------------------------------------------------------------------------
# Cropping


def _check_crop(crop: Sequence[int], height: int, width: int, source: str) -> tuple[int, int, int]:
    if len(crop) != 3:
        raise ValueError(f"crop must be (left, top, size), got {tuple(crop)}")
    left, top, size = (int(value) for value in crop)
    if size <= 0 or left < 0 or top < 0 or left + size > width or top + size > height:
        raise ValueError(
            f"crop box (left={left}, top={top}, size={size}) does not fit the {width}x{height} images of {source}; "
            f"pass a box inside the image, or crop=None for images that are already cropped"
        )
    return left, top, size


def crop_faces(
    pixels: torch.Tensor,
    crop: Sequence[int] | None = DEFAULT_CROP,
    size: int | None = OUTPUT_SIZE,
    source: str = "the dataset",
) -> torch.Tensor:
    """Cut the square ``crop`` box (left, top, size) out of uint8 images (N, H, W) and resize it.

    The resize to ``size`` x ``size`` averages over the covered area (``torch`` "area"
    interpolation) and rounds to uint8. ``crop`` None keeps the whole image, and ``size``
    None keeps the cropped size. Raises ValueError when the box does not fit the images.
    """
    if crop is not None:
        left, top, box = _check_crop(crop, pixels.shape[1], pixels.shape[2], source)
        pixels = pixels[:, top : top + box, left : left + box]
    if size is None or tuple(pixels.shape[1:]) == (size, size):
        return pixels.contiguous()
    if size <= 0:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    resized = F.interpolate(pixels.unsqueeze(1).float(), size=(size, size), mode="area")
    return resized.squeeze(1).round().clamp(0, 255).to(torch.uint8)


def load_jaffe(
    path: str | Path = DEFAULT_PATH, size: int | None = OUTPUT_SIZE, crop: Sequence[int] | None = DEFAULT_CROP
) -> LabDataset:
    """Read JAFFE from its TIFF folder (a directory) or an h5 file, crop the face box and resize.

    ``crop`` is (left, top, size) in pixels of the 256x256 originals, DEFAULT_CROP by default.
    Images come back ``size`` x ``size`` (48 by default, as FER2013). Labels are FER2013
    labels and ``classes`` is FER2013's class list. ``crop=None, size=None`` returns the full
    images.
    """
    path = Path(path)
    dataset = read_jaffe_folder(path) if path.is_dir() else read_jaffe_h5(path)
    return replace(dataset, pixels=crop_faces(dataset.pixels, crop, size, dataset.source))


def save_crop_preview(
    source: str | Path | LabDataset, out_png: str | Path, crop: Sequence[int] = DEFAULT_CROP, count: int = 10
) -> Path:
    """Draw ``count`` full images with the crop box (top row) and their 48x48 crops (bottom row) into a PNG.

    ``source`` is a JAFFE folder or h5 file, or a LabDataset of full-size images. One image
    per subject is shown while subjects last, then further images. The PNG is written under a
    temporary name and then renamed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    dataset = source if isinstance(source, LabDataset) else load_jaffe(source, size=None, crop=None)
    left, top, box = _check_crop(crop, dataset.pixels.shape[1], dataset.pixels.shape[2], dataset.source)
    chosen = _preview_indices(dataset, count)
    crops = crop_faces(dataset.pixels[chosen], crop, OUTPUT_SIZE, dataset.source)

    figure = Figure(figsize=(1.6 * len(chosen), 3.6))
    FigureCanvasAgg(figure)
    for column, index in enumerate(chosen.tolist()):
        title = dataset.files[index] if dataset.files is not None else f"image {index}"
        axes = figure.add_subplot(2, len(chosen), column + 1)
        axes.imshow(dataset.pixels[index].numpy(), cmap="gray", vmin=0, vmax=255)
        axes.add_patch(Rectangle((left - 0.5, top - 0.5), box, box, fill=False, edgecolor="lime", linewidth=1))
        axes.set_title(title, fontsize=6)
        axes.axis("off")
        axes = figure.add_subplot(2, len(chosen), len(chosen) + column + 1)
        axes.imshow(crops[column].numpy(), cmap="gray", vmin=0, vmax=255)
        axes.axis("off")
    figure.suptitle(f"crop box left={left}, top={top}, size={box}", fontsize=8)
    figure.tight_layout()

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.stem}.{uuid.uuid4().hex}.tmp.png"
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return out


def _preview_indices(dataset: LabDataset, count: int) -> torch.Tensor:
    """Pick up to ``count`` image indices: the first image of each subject, then the next images."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    if dataset.subjects is None:
        return torch.arange(min(count, len(dataset)))
    first = [int(torch.nonzero(dataset.subjects == subject)[0]) for subject in torch.unique(dataset.subjects).tolist()]
    first_set = set(first)
    rest = [index for index in range(len(dataset)) if index not in first_set]
    return torch.tensor((first + rest)[:count], dtype=torch.int64)
