"""Classify the facial expression of image files with a trained checkpoint.

Every image is read with Pillow: the first frame, turned upright by its EXIF orientation. It is
made grey: colour by Pillow's ITU-R 601-2 luma, transparent pixels composited onto white, 16-bit
grey scaled to 8 bits. The grey image is cropped to its central square and resized with bicubic
resampling to the checkpoint's ``eval_size`` (48 for FER2013). Its pixels are then scaled as the
checkpoint's preprocessing record specifies. The plain prediction classifies that whole image, as training evaluated PublicTest and
PrivateTest. ``--tta tencrop`` averages the softmax of the ten ``train_size`` crops (corners,
centre and their mirror images) instead.

``--detect_face`` first crops the largest face that OpenCV's Haar cascade
(haarcascade_frontalface_default.xml, shipped with opencv-python-headless below version 5) finds
in the grey image. An image without a face gets a warning and is classified whole.

Usage::

    python tools/predict.py runs/retrain-EXP/best.pt photo.jpg faces/ --out predictions.csv
    python -m tools.predict best.pt faces/ --tta tencrop --detect_face

Folders are searched recursively for files with an image suffix (``IMAGE_SUFFIXES``); files
named on the command line are read whatever their suffix. Unreadable files are reported and
skipped, and the exit status is then 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as ``python tools/predict.py``: make the repository root importable.
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import argparse
import csv
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from tools.checkpoint import CheckpointError
from tools.engine import TTA_CHOICES, predict
from tools.modelio import load_network
from tools.runtime import configure_cpu, select_device

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                            ".pbm", ".pnm"})
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
OPENCV_INSTALL = "pip install 'opencv-python-headless<5'"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
FACE_FOUND, FACE_NOT_FOUND = "found", "not found"


class ImageReadError(ValueError):
    """An image file that cannot be read or decoded."""


@dataclass(frozen=True)
class Preprocessing:
    """The input preprocessing of a checkpoint: sizes and ``x = (pixel * scale - mean) / std``."""

    eval_size: int
    train_size: int
    scale: float
    mean: float
    std: float

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], source: str | Path) -> "Preprocessing":
        """Read the ``preprocessing`` entry of a checkpoint's network record."""
        record = checkpoint["network"].get("preprocessing")
        if not isinstance(record, dict):
            raise CheckpointError(f"{source}: the network record has no preprocessing entry")
        missing = [key for key in ("channels", "train_size", "eval_size", "scale", "mean", "std") if key not in record]
        if missing:
            raise CheckpointError(f"{source}: the preprocessing record is missing {', '.join(missing)}")
        if int(record["channels"]) != 1:
            raise CheckpointError(f"{source}: the network expects {record['channels']} input channels, but "
                                  "this tool feeds grey images (1 channel)")
        return cls(int(record["eval_size"]), int(record["train_size"]), float(record["scale"]),
                   float(record["mean"]), float(record["std"]))

    def to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack uint8 images (H, W) into a float batch (N, 1, H, W) as the network was trained on."""
        batch = torch.from_numpy(np.stack(images)).to(torch.float32).unsqueeze(1)
        return (batch * self.scale - self.mean) / self.std


@dataclass
class Prediction:
    """The class probabilities of one image and whether a face was cropped from it."""

    path: Path
    probabilities: list[float]
    face: str  # FACE_FOUND, FACE_NOT_FOUND, or "" without --detect_face


def find_images(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders (recursively, by suffix) into image paths, in sorted order per folder.

    Returns (images, missing) where ``missing`` lists (path, reason) for arguments that do not exist.
    """
    images: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(path for path in entry.rglob("*")
                           if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                logger.warning("folder %s contains no files with an image suffix (%s)", entry,
                               " ".join(sorted(IMAGE_SUFFIXES)))
            images.extend(found)
        elif entry.is_file():
            images.append(entry)
        else:
            missing.append((entry, "file or folder not found"))
    return images, missing


def to_grey(image: Image.Image) -> np.ndarray:
    """Convert a Pillow image of any mode to 8-bit grey pixels (H, W)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return (np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
    if image.mode in ("I", "F"):
        # NOTE: 32-bit integer and float images carry no range; values above 255 are taken as 16-bit.
        values = np.asarray(image, dtype=np.float64)
        if values.size and values.max() > 255:
            values = values / 257.0
        return values.round().clip(0, 255).astype(np.uint8)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_grey(path: Path) -> np.ndarray:
    """Read the first frame of an image file as 8-bit grey pixels (H, W), upright per its EXIF tag."""
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_grey(upright)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"cannot read {path} as an image ({type(error).__name__}: {error})") from None


class FaceDetector:
    """The largest frontal face in a grey image, by OpenCV's Haar cascade."""

    def __init__(self, margin: float = 0.0, min_size: int = 24) -> None:
        try:
            import cv2
        except ImportError:
            raise RuntimeError(f"--detect_face needs OpenCV, which is not installed: run {OPENCV_INSTALL}") from None
        haar_folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if haar_folder is None or not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError(f"OpenCV {cv2.__version__} ships no Haar cascades (OpenCV 5 moved them out); "
                               f"run {OPENCV_INSTALL}")
        cascade_path = os.path.join(haar_folder, HAAR_CASCADE)
        self.cascade = cv2.CascadeClassifier(cascade_path)
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV could not load the face cascade {cascade_path}; reinstall with "
                               f"{OPENCV_INSTALL}")
        self.margin = margin
        self.min_size = min_size

    def largest_face(self, grey: np.ndarray) -> tuple[int, int, int, int] | None:
        """Return (left, top, right, bottom) of the largest face, widened by ``margin`` of its size on
        each side and clipped to the image, or None when no face is found."""
        faces = self.cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(self.min_size, self.min_size))
        if len(faces) == 0:
            return None
        x, y, w, h = (int(v) for v in max(faces, key=lambda face: int(face[2]) * int(face[3])))
        pad_x, pad_y = int(round(self.margin * w)), int(round(self.margin * h))
        height, width = grey.shape
        return max(0, x - pad_x), max(0, y - pad_y), min(width, x + w + pad_x), min(height, y + h + pad_y)


def centre_square(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Return the largest square centred in ``box`` (left, top, right, bottom)."""
    left, top, right, bottom = box
    side = min(right - left, bottom - top)
    left += (right - left - side) // 2
    top += (bottom - top - side) // 2
    return left, top, left + side, top + side


def prepare_image(grey: np.ndarray, size: int, detector: FaceDetector | None = None) -> tuple[np.ndarray, str]:
    """Crop (the largest face, or the whole image) to its central square and resize to ``size`` x ``size``.

    Returns (pixels uint8 (size, size), face status).
    """
    height, width = grey.shape
    box = (0, 0, width, height)
    status = ""
    if detector is not None:
        face = detector.largest_face(grey)
        status = FACE_FOUND if face is not None else FACE_NOT_FOUND
        box = face or box
    square = centre_square(box)
    resized = Image.fromarray(grey).resize((size, size), Image.Resampling.BICUBIC, box=square)
    return np.asarray(resized, dtype=np.uint8), status


def classify(model: torch.nn.Module, preprocessing: Preprocessing, images: Sequence[Path], *,
             device: torch.device, tta: str = "none", batch_size: int = 64,
             detector: FaceDetector | None = None) -> Iterator[Prediction | tuple[Path, str]]:
    """Yield a ``Prediction`` for each readable image and (path, reason) for each unreadable one.

    Predictions come in input order. An unreadable image is yielded as soon as it is read, so it
    can come before the predictions of earlier images that wait in the same batch.
    """
    pending: list[tuple[Path, np.ndarray, str]] = []

    def flush() -> Iterator[Prediction]:
        batch = preprocessing.to_tensor([pixels for _, pixels, _ in pending]).to(device)
        indices = torch.arange(len(pending))
        result = predict(model, [(batch, torch.zeros_like(indices), indices)], tta=tta,
                         crop=preprocessing.train_size)
        for (path, _, face), probabilities in zip(pending, result.probs.tolist()):
            yield Prediction(path, probabilities, face)
        pending.clear()

    for path in images:
        try:
            grey = read_grey(path)
        except ImageReadError as error:
            yield path, str(error)
            continue
        if grey.size == 0:
            yield path, f"{path} has no pixels"
            continue
        pixels, face = prepare_image(grey, preprocessing.eval_size, detector)
        if face == FACE_NOT_FOUND:
            logger.warning("no face found in %s; classifying the whole image", path)
        pending.append((path, pixels, face))
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def format_prediction(prediction: Prediction, classes: Sequence[str]) -> str:
    """Return one output line: the path, the predicted class and every class probability."""
    best = int(np.argmax(prediction.probabilities))
    details = ", ".join(f"{name} {p:.3f}" for name, p in zip(classes, prediction.probabilities))
    face = f" [face {prediction.face}]" if prediction.face else ""
    return f"{prediction.path}: {classes[best]} {prediction.probabilities[best]:.3f}{face} ({details})"


def csv_header(classes: Sequence[str]) -> list[str]:
    """Return the columns of the predictions CSV file."""
    return ["path", "prediction", "probability", *[f"p_{name}" for name in classes], "face"]


def csv_row(prediction: Prediction, classes: Sequence[str]) -> list[str]:
    """Return one row of the predictions CSV file."""
    best = int(np.argmax(prediction.probabilities))
    return [str(prediction.path), classes[best], f"{prediction.probabilities[best]:.6f}",
            *[f"{p:.6f}" for p in prediction.probabilities], prediction.face]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python tools/predict.py``."""
    parser = argparse.ArgumentParser(
        prog="python tools/predict.py",
        description="Classify the facial expression in image files with a trained checkpoint "
                    "(from retraining, relabeling or fine-tuning).")
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="checkpoint file, such as best.pt")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"),
                        help="CSV file of the predictions (default: predictions.csv)")
    parser.add_argument("--tta", default="none", choices=TTA_CHOICES,
                        help="tencrop: average the softmax of ten train_size crops of the eval_size image "
                             "(default: none, the whole eval_size image)")
    parser.add_argument("--detect_face", action="store_true",
                        help="crop the largest face found by OpenCV's Haar cascade first (needs "
                             "opencv-python-headless below version 5)")
    parser.add_argument("--face_margin", type=float, default=0.0,
                        help="with --detect_face, widen the face box by this fraction of its size on each "
                             "side (default: 0)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (default: 0, PyTorch's choice)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line. Returns 0 when every image was classified and 1 when any failed.

    Exits with status 2 on a bad checkpoint, a missing OpenCV or when no image was found.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.face_margin < 0:
        parser.error(f"--face_margin must be >= 0, got {args.face_margin}")
    try:
        detector = FaceDetector(args.face_margin) if args.detect_face else None
        device = select_device(args.device)
        configure_cpu(args.threads)
        model, checkpoint = load_network(args.checkpoint, device)
        preprocessing = Preprocessing.from_checkpoint(checkpoint, args.checkpoint)
    except (RuntimeError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    classes = list(checkpoint["network"]["classes"])

    images, failures = find_images(args.paths)
    for path, reason in failures:
        print(f"error: {path}: {reason}", file=sys.stderr)
    if not images:
        parser.exit(2, "error: no image files found in the given paths\n")

    classified = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(csv_header(classes))
        for result in classify(model, preprocessing, images, device=device, tta=args.tta,
                               batch_size=args.batch_size, detector=detector):
            if isinstance(result, Prediction):
                print(format_prediction(result, classes))
                writer.writerow(csv_row(result, classes))
                classified += 1
            else:
                failures.append(result)
                print(f"error: {result[1]} (skipped)", file=sys.stderr)
    print(f"classified {classified} image(s), {len(failures)} failed; wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
