"""Convert raw FER2013, CK+48 and JAFFE downloads into the project's h5 layouts.

Usage::

    python -m dataloader.prepare fer2013 --csv fer2013.csv --out data/FER_2013/data.h5
    python -m dataloader.prepare fer2013 --folders DIR --out data/FER_2013/data.h5
    python -m dataloader.prepare ck48 --folder CK+48 --out data/CK+48/ck48.h5
    python -m dataloader.prepare jaffe --folder jaffedbase --out data/JAFFE/jaffe.h5 --preview crop.png

The CSV is Kaggle's ``fer2013.csv`` (columns emotion, pixels, Usage). The folder copy has
``train/<class>/*.jpg`` and ``test/<class>/PublicTest_*.jpg`` / ``PrivateTest_*.jpg``.
CK+48 is its class folders of ``S###_###_########.png`` files, JAFFE its folder of
``KA.AN1.39.tiff`` files (see ``dataloader.ck48`` and ``dataloader.jaffe`` for the layouts).
Nothing is written unless the whole input is valid.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from dataloader import ck48, jaffe
from dataloader.fer2013 import CLASSES, DEFAULT_PATH, IMAGE_SIZE, SPLITS, DatasetError, exact_duplicates
from dataloader.labdata import ErrorList, format_counts

logger = logging.getLogger(__name__)

PIXEL_COUNT = IMAGE_SIZE * IMAGE_SIZE
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FOLDER_CLASSES = {name.lower(): index for index, name in enumerate(CLASSES)}
CSV_COLUMNS = ("emotion", "pixels", "Usage")

SplitArrays = dict[str, tuple[np.ndarray, np.ndarray]]


def _stack(pixel_rows: list[np.ndarray], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    if pixel_rows:
        pixels = np.stack(pixel_rows).reshape(-1, IMAGE_SIZE, IMAGE_SIZE).astype(np.uint8)
    else:
        pixels = np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    return pixels, np.asarray(labels, dtype=np.int64).reshape(-1)


# ---------------------------------------------------------------------------------------------
# CSV


def _find_columns(header: list[str], path: Path) -> dict[str, int]:
    """Map each of CSV_COLUMNS to its position in the header (names compared case-insensitively)."""
    positions = {name.strip().lower(): index for index, name in enumerate(header)}
    missing = [name for name in CSV_COLUMNS if name.lower() not in positions]
    if missing:
        raise DatasetError(
            f"{path}, line 1: column(s) {missing} missing from header {header}; "
            f"expected the columns {list(CSV_COLUMNS)} in any order"
        )
    return {name: positions[name.lower()] for name in CSV_COLUMNS}


def _parse_pixels(text: str) -> tuple[np.ndarray | None, str | None]:
    """Parse 2304 space-separated integers 0..255. Return (pixels, None) or (None, problem)."""
    tokens = text.split()
    if len(tokens) != PIXEL_COUNT:
        return None, f"expected {PIXEL_COUNT} pixel values, found {len(tokens)}"
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        for position, token in enumerate(tokens):
            if not token.lstrip("+-").isdigit():
                return None, f"pixel {position} is '{token}', expected an integer 0..255"
        return None, "pixels are not all integers"
    out_of_range = np.flatnonzero((values < 0) | (values > 255))
    if out_of_range.size:
        position = int(out_of_range[0])
        return None, f"pixel {position} is {int(values[position])}, expected 0..255"
    return values.astype(np.uint8), None


def _parse_label(text: str) -> tuple[int | None, str | None]:
    try:
        label = int(text)
    except ValueError:
        return None, f"emotion '{text}' is not an integer; expected 0..{len(CLASSES) - 1}"
    if not 0 <= label < len(CLASSES):
        return None, f"emotion {label} is unknown; expected 0..{len(CLASSES) - 1}"
    return label, None


def _parse_row(
    row: list[str], columns: dict[str, int], width: int
) -> tuple[tuple[str, int, np.ndarray] | None, str | None]:
    """Validate one CSV row. Return ((usage, label, pixels), None) or (None, problem)."""
    if len(row) != width:
        return None, f"expected {width} fields as in the header, found {len(row)}"
    usage = row[columns["Usage"]].strip()
    label, label_problem = _parse_label(row[columns["emotion"]].strip())
    pixels, pixel_problem = _parse_pixels(row[columns["pixels"]])
    problems = [problem for problem in (label_problem, pixel_problem) if problem]
    if usage not in SPLITS:
        problems.append(f"Usage '{usage}' is unknown; expected one of {', '.join(SPLITS)}")
    if problems:
        return None, "; ".join(problems)
    return (usage, label, pixels), None


def read_fer2013_csv(path: str | Path) -> SplitArrays:
    """Read Kaggle's fer2013.csv into ``{split: (pixels (N, 48, 48) uint8, labels (N,) int64)}``.

    Columns are found by header name, so any column order works, and whitespace around
    fields is ignored. Rows keep their file order within each split. Raises DatasetError
    listing up to MAX_ERRORS invalid rows, each with its 1-based line number (the header is
    line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FER2013 CSV {path} not found; download fer2013.csv from Kaggle")

    pixel_rows: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    labels: dict[str, list[int]] = {name: [] for name in SPLITS}
    errors = ErrorList(path)
    rows_read = 0

    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream, skipinitialspace=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DatasetError(
                    f"{path} is empty; expected a header line 'emotion,pixels,Usage' and one row per image"
                )
            columns = _find_columns(header, path)

            for row in reader:
                if not any(field.strip() for field in row):
                    continue  # blank line
                rows_read += 1
                parsed, problem = _parse_row(row, columns, len(header))
                if problem:
                    errors.add(f"{path}, line {reader.line_num}: {problem}")
                    if errors.full:
                        break
                    continue
                usage, label, pixels = parsed
                pixel_rows[usage].append(pixels)
                labels[usage].append(label)
        except csv.Error as error:
            raise DatasetError(f"{path}, line {reader.line_num}: invalid CSV ({error})") from error
        except UnicodeDecodeError as error:
            # The file is decoded in blocks, so the line number is only approximate.
            raise DatasetError(
                f"{path}: not UTF-8 text near line {reader.line_num + 1} ({error}); expected Kaggle's fer2013.csv"
            ) from error

    errors.raise_if_any()
    if rows_read == 0:
        raise DatasetError(f"{path} contains no data rows after the header; expected one row per image")
    return {name: _stack(pixel_rows[name], labels[name]) for name in SPLITS}


# ---------------------------------------------------------------------------------------------
# Image folders


def _split_of_test_file(name: str) -> str | None:
    for split in ("PublicTest", "PrivateTest"):
        if name.startswith(split + "_"):
            return split
    return None


def _load_grey_image(path: Path) -> tuple[np.ndarray | None, str | None]:
    """Load an image as 8-bit grey. Return (pixels, None) or (None, problem)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = image.convert("L")
    except (UnidentifiedImageError, OSError) as error:
        return None, f"cannot read image: {error}"
    if grey.size != (IMAGE_SIZE, IMAGE_SIZE):
        width, height = grey.size
        return None, f"image is {width}x{height}; expected {IMAGE_SIZE}x{IMAGE_SIZE}"
    return np.asarray(grey, dtype=np.uint8), None


def _class_folders(part: Path, errors: ErrorList) -> list[tuple[int, Path]]:
    """Return (label, folder) for every class folder in ``part``, in label order."""
    found: list[tuple[int, Path]] = []
    for entry in sorted(part.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            logger.warning("skipping %s: expected only class folders in %s", entry, part)
            continue
        label = FOLDER_CLASSES.get(entry.name.lower())
        if label is None:
            errors.add(f"{entry}: unknown class folder; expected one of {', '.join(FOLDER_CLASSES)}")
            continue
        found.append((label, entry))
    return sorted(found)


def _read_folder_part(
    part: Path,
    split_of: Callable[[Path], str | None],
    pixel_rows: dict[str, list[np.ndarray]],
    labels: dict[str, list[int]],
    errors: ErrorList,
) -> int:
    """Read the images under ``part`` (train or test) and return how many images were found."""
    found = 0
    for label, folder in _class_folders(part, errors):
        for file in sorted(folder.iterdir()):
            if errors.full:
                return found
            if file.name.startswith(".") or file.is_dir():
                continue
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                logger.warning("skipping %s: not a .jpg, .jpeg or .png file", file)
                continue
            found += 1
            split = split_of(file)
            if split is None:
                errors.add(f"{file}: test image name must start with 'PublicTest_' or 'PrivateTest_'")
                continue
            pixels, problem = _load_grey_image(file)
            if problem:
                errors.add(f"{file}: {problem}")
                continue
            pixel_rows[split].append(pixels)
            labels[split].append(label)
    return found


def read_fer2013_folders(root: str | Path) -> SplitArrays:
    """Read the image-folder copy of FER2013 into ``{split: (pixels, labels)}``.

    ``root/train/<class>/*`` becomes Training. ``root/test/<class>/PublicTest_*`` and
    ``PrivateTest_*`` become PublicTest and PrivateTest. Class folder names (angry, disgust,
    fear, happy, sad, surprise, neutral) match case-insensitively. Images are converted to
    grey and must be 48x48. Files are read in sorted order. Raises DatasetError listing up to
    MAX_ERRORS problems, each naming its file or folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"FER2013 image folder {root} not found; expected {root}/train and {root}/test")
    parts = {"train": root / "train", "test": root / "test"}
    missing = [str(folder) for folder in parts.values() if not folder.is_dir()]
    if missing:
        raise DatasetError(f"{root}: folder(s) {missing} missing; expected train/<class>/ and test/<class>/")

    pixel_rows: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    labels: dict[str, list[int]] = {name: [] for name in SPLITS}
    errors = ErrorList(root)

    train_count = _read_folder_part(parts["train"], lambda file: "Training", pixel_rows, labels, errors)
    test_count = 0
    if not errors.full:
        test_count = _read_folder_part(
            parts["test"], lambda file: _split_of_test_file(file.name), pixel_rows, labels, errors
        )
    for name, count in (("train", train_count), ("test", test_count)):
        if count == 0 and not errors.full:
            errors.add(f"{parts[name]}: contains no .jpg, .jpeg or .png images in class folders")

    errors.raise_if_any()
    return {name: _stack(pixel_rows[name], labels[name]) for name in SPLITS}


# ---------------------------------------------------------------------------------------------
# Output


def _validate_arrays(splits: SplitArrays) -> None:
    unknown = [name for name in splits if name not in SPLITS]
    if unknown:
        raise DatasetError(f"unknown split(s) {unknown}; expected names from {list(SPLITS)}")
    for name, (pixels, labels) in splits.items():
        if pixels.dtype != np.uint8 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DatasetError(f"{name} pixels are {pixels.dtype} {pixels.shape}; expected uint8 (N, 48, 48)")
        if labels.shape != (pixels.shape[0],):
            raise DatasetError(f"{name} labels have shape {labels.shape}; expected ({pixels.shape[0]},)")
        if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
            raise DatasetError(f"{name} labels must be 0..{len(CLASSES) - 1}, found {labels.min()}..{labels.max()}")


def write_fer2013_h5(splits: SplitArrays, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``{split: (pixels, labels)}`` as ``<S>_pixel`` / ``<S>_label`` keys of an h5 file.

    Every split in SPLITS is written, with N=0 where ``splits`` lacks it. The file is written
    to a temporary name in the output folder and then renamed, so ``out`` is never left
    half-written. Raises FileExistsError when ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    _validate_arrays(splits)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --force (overwrite=True) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)

    # A fresh name in the output folder, so os.replace is an atomic rename on the same file system.
    temporary = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    try:
        with h5py.File(temporary, "x") as file:
            for name in SPLITS:
                pixels, labels = splits.get(name, _stack([], []))
                file.create_dataset(f"{name}_pixel", data=np.ascontiguousarray(pixels, dtype=np.uint8))
                file.create_dataset(f"{name}_label", data=np.asarray(labels, dtype=np.int64))
            file.attrs["classes"] = list(CLASSES)
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.info("wrote %s", out)
    return out


def format_summary(splits: SplitArrays) -> str:
    """Return a table of per-split, per-class counts and the exact duplicate counts."""
    name_width = max(len(name) for name in SPLITS)
    columns = [*CLASSES, "Total"]
    widths = [max(len(column), 6) for column in columns]
    lines = [" ".join([" " * name_width, *(column.rjust(width) for column, width in zip(columns, widths))])]
    for name in SPLITS:
        labels = splits[name][1]
        counts = [*np.bincount(labels, minlength=len(CLASSES)).tolist(), int(labels.size)]
        lines.append(" ".join([name.ljust(name_width), *(str(count).rjust(width) for count, width in zip(counts, widths))]))

    lines.append("")
    tensors = {name: torch.from_numpy(splits[name][0]) for name in SPLITS}
    for name in SPLITS:
        duplicates, groups = exact_duplicates(tensors[name])
        lines.append(f"{name}: {duplicates} exact duplicate images in {groups} groups")
    for name in ("PublicTest", "PrivateTest"):
        found = int(exact_duplicates(tensors["Training"], tensors[name]).sum())
        lines.append(f"{name}: {found} of {len(tensors[name])} images also occur in Training")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def _run_fer2013(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    splits = read_fer2013_csv(args.csv) if args.csv else read_fer2013_folders(args.folders)
    write_fer2013_h5(splits, out, overwrite=args.force)
    print(format_summary(splits))
    print(f"wrote {out}")


def _run_ck48(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    dataset = ck48.read_ck48_folder(args.folder)
    ck48.write_ck48_h5(dataset, out, overwrite=args.force)
    sequences = len(set(zip(dataset.subjects.tolist(), dataset.sequences.tolist())))
    print(format_counts(dataset))
    print(f"{sequences} sequences")
    print(f"wrote {out}")


def _run_jaffe(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    dataset = jaffe.read_jaffe_folder(args.folder)
    jaffe.write_jaffe_h5(dataset, out, overwrite=args.force)
    print(format_counts(dataset))
    print(f"wrote {out}")
    if args.preview is not None:
        jaffe.save_crop_preview(dataset, args.preview)
        print(f"wrote the crop preview {args.preview} (box left, top, size = {jaffe.DEFAULT_CROP})")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser, with one subcommand and its own options per dataset."""
    parser = argparse.ArgumentParser(prog="python -m dataloader.prepare", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    fer = commands.add_parser("fer2013", help="convert Kaggle's fer2013.csv or the image-folder copy")
    source = fer.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, metavar="FILE", help="Kaggle fer2013.csv (emotion, pixels, Usage)")
    source.add_argument(
        "--folders", type=Path, metavar="DIR", help="folder with train/<class>/ and test/<class>/ images"
    )
    fer.add_argument("--out", type=Path, default=Path(DEFAULT_PATH), help=f"output h5 file (default: {DEFAULT_PATH})")
    fer.add_argument("--force", action="store_true", help="replace the output file if it exists")
    fer.set_defaults(run=_run_fer2013)

    ck48_command = commands.add_parser(
        "ck48", help="convert the CK+48 class folders (anger/, contempt/, ... of S###_###_########.png files)"
    )
    ck48_command.add_argument(
        "--folder", type=Path, required=True, metavar="DIR", help="folder with one subfolder per class"
    )
    ck48_command.add_argument(
        "--out", type=Path, default=Path(ck48.DEFAULT_PATH), help=f"output h5 file (default: {ck48.DEFAULT_PATH})"
    )
    ck48_command.add_argument("--force", action="store_true", help="replace the output file if it exists")
    ck48_command.set_defaults(run=_run_ck48)

    jaffe_command = commands.add_parser(
        "jaffe", help="convert the JAFFE folder of KA.AN1.39.tiff files (stores the full 256x256 images)"
    )
    jaffe_command.add_argument(
        "--folder", type=Path, required=True, metavar="DIR", help="folder with the JAFFE .tiff files"
    )
    jaffe_command.add_argument(
        "--out", type=Path, default=Path(jaffe.DEFAULT_PATH), help=f"output h5 file (default: {jaffe.DEFAULT_PATH})"
    )
    jaffe_command.add_argument("--force", action="store_true", help="replace the output file if it exists")
    jaffe_command.add_argument(
        "--preview",
        type=Path,
        metavar="PNG",
        help="also write a PNG that shows one image per subject with the default face crop box and the crop",
    )
    jaffe_command.set_defaults(run=_run_jaffe)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; invalid input exits with status 2 after printing every error."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except DatasetError as error:
        parser.exit(2, f"error: {error}\n")
    except (FileNotFoundError, FileExistsError) as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
