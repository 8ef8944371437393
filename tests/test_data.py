"""Tests of the dataloader package: h5 reading, the prepare command, batches, augmentation, splits."""
from __future__ import annotations

import ast
import csv
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, real_file
from dataloader import prepare
from dataloader.batches import (
    PIXEL_SCALE,
    PREPROCESSING,
    TensorBatches,
    augment_batch,
    center_crop,
    make_augment,
    to_float,
)
from dataloader.fer2013 import CLASSES, SPLITS, DatasetError, exact_duplicates, load_fer2013
from dataloader.prepare import read_fer2013_csv, read_fer2013_folders, write_fer2013_h5
from dataloader.splits import stratified_split, stratified_subset
from dataloader.synthetic import make_fer2013_csv, make_fer2013_h5

REAL_TRAINING_COUNTS = [3995, 436, 4097, 7215, 4830, 3171, 4965]


# ---------------------------------------------------------------------------------------------
# Helpers


def write_h5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as file:
        for key, value in arrays.items():
            file.create_dataset(key, data=value)
    return path


def valid_arrays(count: int = 14) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {}
    for name in SPLITS:
        arrays[f"{name}_pixel"] = rng.integers(0, 256, size=(count, 48, 48), dtype=np.uint8)
        arrays[f"{name}_label"] = np.arange(count, dtype=np.int64) % 7
    return arrays


def csv_rows(path: Path) -> list[dict[str, str]]:
    """Parse a CSV independently of the product: one dict per data row, names and values stripped."""
    with path.open(newline="") as stream:
        lines = [line.rstrip("\n") for line in stream if line.strip()]
    header = [name.strip() for name in lines[0].split(",")]
    return [dict(zip(header, (field.strip() for field in line.split(",")))) for line in lines[1:]]


def replace_csv_line(path: Path, line_number: int, column: str, value: str) -> None:
    """Set ``column`` of the 1-based ``line_number`` of a comma-separated file to ``value``."""
    lines = path.read_text().splitlines()
    header = [name.strip() for name in lines[0].split(",")]
    fields = lines[line_number - 1].split(",")
    fields[header.index(column)] = value
    lines[line_number - 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def save_image(path: Path, array: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def make_folder_tree(root: Path) -> dict[str, list[tuple[str, int, np.ndarray]]]:
    """Create train/ and test/ class folders of PNG images; return the expected (name, label, pixels) per split."""
    rng = np.random.default_rng(2)
    expected: dict[str, list[tuple[str, int, np.ndarray]]] = {name: [] for name in SPLITS}
    folders = {"angry": 0, "Happy": 3, "NEUTRAL": 6}
    for folder, label in folders.items():
        for index in (2, 1):  # written out of order, read back sorted
            image = rng.integers(0, 256, size=(48, 48), dtype=np.uint8)
            save_image(root / "train" / folder / f"Training_{index}.png", image)
            expected["Training"].append((f"Training_{index}.png", label, image))
        for split in ("PrivateTest", "PublicTest"):
            image = rng.integers(0, 256, size=(48, 48), dtype=np.uint8)
            save_image(root / "test" / folder / f"{split}_{label}.png", image)
            expected[split].append((f"{split}_{label}.png", label, image))
    for name in SPLITS:
        expected[name].sort(key=lambda item: (item[1], item[0]))
    return expected


# ---------------------------------------------------------------------------------------------
# Reading the h5 file


@pytest.mark.parametrize("flat", [False, True])
def test_load_h5_both_layouts(tmp_path: Path, flat: bool) -> None:
    path = make_fer2013_h5(tmp_path / "data.h5", n_train=21, n_public=14, n_private=7, seed=3, flat=flat)
    splits = load_fer2013(path)

    assert list(splits) == list(SPLITS)
    assert [len(splits[name]) for name in SPLITS] == [21, 14, 7]
    training = splits["Training"]
    assert training.pixels.dtype == torch.uint8
    assert training.pixels.shape == (21, 48, 48)
    assert training.labels.dtype == torch.int64
    assert torch.bincount(training.labels, minlength=7).tolist() == [3] * 7
    with h5py.File(path, "r") as file:
        stored = file["Training_pixel"][()]
    assert np.array_equal(training.pixels.numpy(), stored.reshape(21, 48, 48))


def test_load_only_requested_splits(tmp_path: Path) -> None:
    arrays = valid_arrays()
    arrays = {key: value for key, value in arrays.items() if key.startswith("Training")}
    arrays["Training_file"] = np.array([b"x"] * 14)  # extra keys are ignored
    path = write_h5(tmp_path / "train_only.h5", arrays)

    splits = load_fer2013(path, splits=("Training",))
    assert list(splits) == ["Training"]
    assert len(splits["Training"]) == 14
    with pytest.raises(DatasetError, match="PublicTest_pixel"):
        load_fer2013(path)


def test_load_accepts_wider_integer_pixels(tmp_path: Path) -> None:
    arrays = valid_arrays()
    arrays["Training_pixel"] = arrays["Training_pixel"].astype(np.int32)
    path = write_h5(tmp_path / "int32.h5", arrays)
    pixels = load_fer2013(path)["Training"].pixels
    assert pixels.dtype == torch.uint8
    assert np.array_equal(pixels.numpy(), arrays["Training_pixel"])


def _drop_key(arrays: dict[str, np.ndarray]) -> None:
    del arrays["PublicTest_label"]


def _wrong_shape(arrays: dict[str, np.ndarray]) -> None:
    arrays["Training_pixel"] = arrays["Training_pixel"][:, :, :47]


def _label_seven(arrays: dict[str, np.ndarray]) -> None:
    arrays["PrivateTest_label"][3] = 7


def _count_mismatch(arrays: dict[str, np.ndarray]) -> None:
    arrays["Training_label"] = arrays["Training_label"][:-1]


def _float_pixels(arrays: dict[str, np.ndarray]) -> None:
    arrays["Training_pixel"] = arrays["Training_pixel"].astype(np.float32)


def _pixel_300(arrays: dict[str, np.ndarray]) -> None:
    pixels = arrays["PublicTest_pixel"].astype(np.int16)
    pixels[0, 0, 0] = 300
    arrays["PublicTest_pixel"] = pixels


def _float_labels(arrays: dict[str, np.ndarray]) -> None:
    arrays["Training_label"] = arrays["Training_label"].astype(np.float64)


@pytest.mark.parametrize(
    "corrupt, key, expected",
    [
        (_drop_key, "PublicTest_label", "missing"),
        (_wrong_shape, "Training_pixel", "(N, 48, 48)"),
        (_label_seven, "PrivateTest_label", "label 7"),
        (_count_mismatch, "Training_label", "13 labels"),
        (_float_pixels, "Training_pixel", "float32"),
        (_pixel_300, "PublicTest_pixel", "0..300"),
        (_float_labels, "Training_label", "float64"),
    ],
    ids=["missing_key", "wrong_shape", "label_7", "count_mismatch", "float_pixels", "pixel_300", "float_labels"],
)
def test_load_rejects_invalid_file(tmp_path: Path, corrupt, key: str, expected: str) -> None:
    arrays = valid_arrays()
    corrupt(arrays)
    path = write_h5(tmp_path / "bad.h5", arrays)
    with pytest.raises(DatasetError) as caught:
        load_fer2013(path)
    message = str(caught.value)
    assert str(path) in message
    assert key in message
    assert expected in message


def test_load_missing_file_gives_prepare_command(tmp_path: Path) -> None:
    path = tmp_path / "data" / "FER_2013" / "data.h5"
    with pytest.raises(FileNotFoundError) as caught:
        load_fer2013(path)
    message = str(caught.value)
    assert f"python -m dataloader.prepare fer2013 --csv fer2013.csv --out {path}" in message
    assert "--folders" in message
    assert "Kaggle" in message


def test_load_rejects_non_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    path.write_text("emotion,pixels,Usage\n")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        load_fer2013(path)


def test_load_rejects_unknown_split_name(tmp_path: Path) -> None:
    path = make_fer2013_h5(tmp_path / "data.h5", 7, 7, 7)
    with pytest.raises(DatasetError, match="Validation"):
        load_fer2013(path, splits=("Validation",))


# ---------------------------------------------------------------------------------------------
# Exact duplicates


def test_exact_duplicates_counts_and_mask() -> None:
    images = torch.randint(0, 256, (6, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = torch.cat([images, images[:2], images[:1]])  # image 0 three times, image 1 twice
    assert exact_duplicates(a) == (3, 2)
    assert exact_duplicates(images) == (0, 0)
    assert exact_duplicates(images[:0]) == (0, 0)

    other = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    b = torch.cat([other[:1], images[4:5], other[1:], images[0:1]])
    mask = exact_duplicates(images, b)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [False, True, False, False, True]


# ---------------------------------------------------------------------------------------------
# Preparing from CSV


@pytest.mark.parametrize(
    "column_order, spaces",
    [
        (("emotion", "pixels", "Usage"), False),
        (("emotion", "Usage", "pixels"), False),
        (("emotion", "pixels", "Usage"), True),
        (("emotion", "Usage", "pixels"), True),
    ],
)
def test_csv_column_orders_and_spaces(tmp_path: Path, column_order: tuple[str, ...], spaces: bool) -> None:
    source = make_fer2013_csv(tmp_path / "fer2013.csv", 3, column_order=column_order, spaces=spaces)
    splits = read_fer2013_csv(source)

    rows = csv_rows(source)
    for name in SPLITS:
        expected = [row for row in rows if row["Usage"] == name]  # file order within the split
        pixels, labels = splits[name]
        assert pixels.dtype == np.uint8
        assert pixels.shape == (21, 48, 48)
        assert labels.dtype == np.int64
        assert labels.tolist() == [int(row["emotion"]) for row in expected]
        for image, row in zip(pixels, expected):
            assert image.reshape(-1).tolist() == [int(value) for value in row["pixels"].split()]


def test_csv_prepare_round_trip(tmp_path: Path) -> None:
    source = make_fer2013_csv(tmp_path / "fer2013.csv", 2)
    splits = read_fer2013_csv(source)
    out = write_fer2013_h5(splits, tmp_path / "out" / "nested" / "data.h5")

    loaded = load_fer2013(out)
    for name in SPLITS:
        assert np.array_equal(loaded[name].pixels.numpy(), splits[name][0])
        assert np.array_equal(loaded[name].labels.numpy(), splits[name][1])
    assert sorted(path.name for path in out.parent.iterdir()) == ["data.h5"]


def test_csv_empty_split_written_with_zero_rows(tmp_path: Path) -> None:
    source = make_fer2013_csv(tmp_path / "fer2013.csv", 1)
    lines = source.read_text().splitlines()
    source.write_text("\n".join(line for line in lines if not line.endswith("PrivateTest")) + "\n")

    out = tmp_path / "data.h5"
    assert prepare.main(["fer2013", "--csv", str(source), "--out", str(out)]) == 0
    with h5py.File(out, "r") as file:
        assert file["PrivateTest_pixel"].shape == (0, 48, 48)
        assert file["PrivateTest_label"].shape == (0,)
    assert len(load_fer2013(out)["PrivateTest"]) == 0


@pytest.mark.parametrize(
    "column, value, expected",
    [
        ("pixels", "1 2 3", "expected 2304 pixel values, found 3"),
        ("pixels", " ".join(["256"] + ["0"] * 2303), "pixel 0 is 256"),
        ("pixels", " ".join(["0"] * 2303 + ["x"]), "pixel 2303 is 'x'"),
        ("emotion", "9", "emotion 9 is unknown"),
        ("Usage", "Foo", "Usage 'Foo' is unknown"),
    ],
    ids=["pixel_count", "value_256", "non_integer", "label_9", "usage_foo"],
)
def test_csv_malformed_row_names_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, value: str, expected: str
) -> None:
    source = make_fer2013_csv(tmp_path / "fer2013.csv", 1)
    replace_csv_line(source, 5, column, value)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    with pytest.raises(DatasetError) as caught:
        read_fer2013_csv(source)
    assert len(caught.value.errors) == 1
    assert caught.value.errors[0].startswith(f"{source}, line 5: ")
    assert expected in caught.value.errors[0]

    with pytest.raises(SystemExit) as exited:
        prepare.main(["fer2013", "--csv", str(source), "--out", str(out_dir / "data.h5")])
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert f"{source}, line 5" in stderr
    assert expected in stderr
    assert list(out_dir.iterdir()) == []  # neither the output nor a temporary file


def test_csv_missing_column(tmp_path: Path) -> None:
    source = tmp_path / "fer2013.csv"
    source.write_text("emotion,pixels\n0," + " ".join(["0"] * 2304) + "\n")
    with pytest.raises(DatasetError) as caught:
        read_fer2013_csv(source)
    message = str(caught.value)
    assert f"{source}, line 1" in message
    assert "Usage" in message


def test_csv_stops_after_twenty_errors(tmp_path: Path) -> None:
    source = make_fer2013_csv(tmp_path / "fer2013.csv", 2)  # 42 data rows
    for line in range(2, 32):
        replace_csv_line(source, line, "emotion", "8")
    with pytest.raises(DatasetError) as caught:
        read_fer2013_csv(source)
    assert len(caught.value.errors) == 20
    assert caught.value.errors[0].startswith(f"{source}, line 2:")
    assert caught.value.errors[-1].startswith(f"{source}, line 21:")


def test_csv_header_only_is_rejected(tmp_path: Path) -> None:
    source = tmp_path / "fer2013.csv"
    source.write_text("emotion,pixels,Usage\n")
    with pytest.raises(DatasetError, match="no data rows"):
        read_fer2013_csv(source)


def test_prepare_refuses_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_fer2013_csv(tmp_path / "fer2013.csv", 1)
    out = tmp_path / "data.h5"
    out.write_bytes(b"old")

    with pytest.raises(SystemExit) as exited:
        prepare.main(["fer2013", "--csv", str(source), "--out", str(out)])
    assert exited.value.code == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"old"

    assert prepare.main(["fer2013", "--csv", str(source), "--out", str(out), "--force"]) == 0
    assert len(load_fer2013(out)["Training"]) == 7


def test_prepare_command_line(tmp_path: Path) -> None:
    source = make_fer2013_csv(tmp_path / "fer2013.csv", 2, column_order=("emotion", "Usage", "pixels"))
    out = tmp_path / "new" / "data.h5"
    result = subprocess.run(
        [sys.executable, "-m", "dataloader.prepare", "fer2013", "--csv", str(source), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in (*SPLITS, *CLASSES):
        assert name in result.stdout
    assert "also occur in Training" in result.stdout
    assert [len(split) for split in load_fer2013(out).values()] == [14, 14, 14]


# ---------------------------------------------------------------------------------------------
# Preparing from image folders


def test_folders_read_in_sorted_order(tmp_path: Path) -> None:
    expected = make_folder_tree(tmp_path / "fer")
    splits = read_fer2013_folders(tmp_path / "fer")

    for name in SPLITS:
        pixels, labels = splits[name]
        assert labels.tolist() == [label for _, label, _ in expected[name]]
        assert pixels.shape == (len(expected[name]), 48, 48)
        for image, (_, _, original) in zip(pixels, expected[name]):
            assert np.array_equal(image, original)


def test_folders_convert_colour_to_grey(tmp_path: Path) -> None:
    make_folder_tree(tmp_path / "fer")
    rgb = np.zeros((48, 48, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    save_image(tmp_path / "fer" / "train" / "sad" / "Training_9.jpg", rgb, mode="RGB")
    pixels, labels = read_fer2013_folders(tmp_path / "fer")["Training"]
    assert labels.tolist().count(4) == 1
    grey = pixels[labels == 4][0]
    assert abs(int(grey.mean()) - round(200 * 0.299)) <= 2  # ITU-R 601-2 luma of pure red


@pytest.mark.parametrize("case", ["unknown_class", "wrong_size", "bad_prefix", "unreadable"])
def test_folders_invalid_input_names_file(tmp_path: Path, case: str) -> None:
    root = tmp_path / "fer"
    make_folder_tree(root)
    if case == "unknown_class":
        culprit = root / "train" / "contempt"
        save_image(culprit / "Training_5.png", np.zeros((48, 48), dtype=np.uint8))
        expected = "unknown class folder"
    elif case == "wrong_size":
        culprit = root / "train" / "fear" / "Training_5.png"
        save_image(culprit, np.zeros((48, 40), dtype=np.uint8))
        expected = "40x48"
    elif case == "bad_prefix":
        culprit = root / "test" / "angry" / "Validation_5.png"
        save_image(culprit, np.zeros((48, 48), dtype=np.uint8))
        expected = "PublicTest_"
    else:
        culprit = root / "test" / "angry" / "PublicTest_5.jpg"
        culprit.write_bytes(b"not an image")
        expected = "cannot read image"

    with pytest.raises(DatasetError) as caught:
        read_fer2013_folders(root)
    assert len(caught.value.errors) == 1
    assert str(culprit) in caught.value.errors[0]
    assert expected in caught.value.errors[0]


def test_folders_without_images_rejected(tmp_path: Path) -> None:
    (tmp_path / "fer" / "train" / "angry").mkdir(parents=True)
    (tmp_path / "fer" / "test" / "angry").mkdir(parents=True)
    with pytest.raises(DatasetError) as caught:
        read_fer2013_folders(tmp_path / "fer")
    assert str(tmp_path / "fer" / "train") in str(caught.value)
    assert "no .jpg" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Real data (skipped when absent)


def test_real_sample_csv_counts(tmp_path: Path) -> None:
    source = real_file("raw/fer2013_sample.csv")
    out = write_fer2013_h5(read_fer2013_csv(source), tmp_path / "data.h5")
    for name, split in load_fer2013(out).items():
        assert torch.bincount(split.labels, minlength=7).tolist() == [20] * 7, name


def test_real_sample_folders_counts(tmp_path: Path) -> None:
    root = real_file("raw/fer2013_folders_sample")
    splits = read_fer2013_folders(root)
    counts = {name: np.bincount(labels, minlength=7).tolist() for name, (_, labels) in splits.items()}
    assert counts == {"Training": [12] * 7, "PublicTest": [4] * 7, "PrivateTest": [4] * 7}


@pytest.fixture(scope="module")
def real_fer2013() -> dict:
    return load_fer2013(real_file("fer2013.h5"))


def test_real_training_only() -> None:
    splits = load_fer2013(real_file("fer2013.h5"), splits=("Training",))
    assert list(splits) == ["Training"]
    training = splits["Training"]
    assert training.pixels.shape == (28709, 48, 48)
    assert torch.bincount(training.labels, minlength=7).tolist() == REAL_TRAINING_COUNTS


def test_real_duplicate_counts(real_fer2013: dict) -> None:
    training = real_fer2013["Training"].pixels
    duplicates, groups = exact_duplicates(training)
    assert groups == 1033
    assert duplicates > groups
    assert int(exact_duplicates(training, real_fer2013["PublicTest"].pixels).sum()) == 280
    assert int(exact_duplicates(training, real_fer2013["PrivateTest"].pixels).sum()) == 288


# ---------------------------------------------------------------------------------------------
# Scaling and augmentation


def test_to_float_scales_to_unit_range() -> None:
    pixels = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    out = to_float(pixels)
    assert out.dtype == torch.float32
    assert out.shape == (1, 1, 2, 2)
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 1.0, 0.2, 0.4]))
    assert to_float(pixels.unsqueeze(1)).shape == (1, 1, 2, 2)
    assert PREPROCESSING == {"scale": PIXEL_SCALE, "mean": 0.0, "std": 1.0}
    assert PIXEL_SCALE == pytest.approx(1 / 255)


def random_images(count: int = 16, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_augment_shape_and_range() -> None:
    x = random_images(32, 48)
    out = augment_batch(x, crop=44, brightness=0.5, contrast=0.5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (32, 1, 44, 44)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0


def test_augment_crop_is_window_of_input() -> None:
    x = random_images(16, 12)
    out = augment_batch(x, crop=8, flip=False, generator=torch.Generator().manual_seed(0))
    offsets = set()
    for image, original in zip(out, x):
        matches = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if torch.equal(image, original[:, top : top + 8, left : left + 8])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # offsets differ between images


def test_augment_flip_mirrors() -> None:
    x = random_images(32, 10)
    out = augment_batch(x, crop=10, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = 0
    for image, original in zip(out, x):
        if torch.equal(image, original):
            continue
        assert torch.equal(image, original.flip(-1))
        flipped += 1
    assert 0 < flipped < 32


def test_augment_full_crop_without_flip_is_identity() -> None:
    x = random_images(4, 10)
    assert torch.equal(augment_batch(x, crop=10, flip=False), x)


def test_augment_seeded_generator_is_deterministic() -> None:
    x = random_images(16, 48)
    settings = dict(crop=44, brightness=0.3, contrast=0.3)
    first = augment_batch(x, **settings, generator=torch.Generator().manual_seed(5))
    second = augment_batch(x, **settings, generator=torch.Generator().manual_seed(5))
    other = augment_batch(x, **settings, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_augment_brightness_and_contrast_factors() -> None:
    grey = torch.full((64, 1, 8, 8), 0.5)
    brighter = augment_batch(grey, crop=8, flip=False, brightness=0.2, generator=torch.Generator().manual_seed(0))
    assert float(brighter.min()) >= 0.4 - 1e-6
    assert float(brighter.max()) <= 0.6 + 1e-6
    assert float(brighter.std()) > 0.01

    # A uniform image equals its own mean, so contrast leaves it unchanged.
    unchanged = augment_batch(grey, crop=8, flip=False, contrast=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(unchanged, grey)

    halves = torch.zeros(64, 1, 8, 8)
    halves[..., 4:] = 1.0
    blended = augment_batch(halves, crop=8, flip=False, contrast=0.5, generator=torch.Generator().manual_seed(0))
    low = blended[..., 0, 0].flatten()  # 0.5 - 0.5 * factor, factor in [0.5, 1.5], then clamped
    assert float(low.min()) >= 0.0
    assert float(low.max()) <= 0.25 + 1e-6


def test_center_crop_matches_slicing() -> None:
    x = random_images(3, 48)
    assert torch.equal(center_crop(x, 44), x[:, :, 2:46, 2:46])
    assert torch.equal(center_crop(x, 48), x)


# ---------------------------------------------------------------------------------------------
# TensorBatches


def small_dataset(count: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 6, 6), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % 7
    return pixels, labels


def epoch_indices(batches: TensorBatches) -> list[int]:
    return [index for _, _, indices in batches for index in indices.tolist()]


def test_batches_cover_each_index_once() -> None:
    pixels, labels = small_dataset()
    batches = TensorBatches(pixels, labels, 8, shuffle=True, seed=1)
    assert len(batches) == 7

    seen = []
    for images, batch_labels, indices in batches:
        assert images.dtype == torch.float32
        assert images.shape[1:] == (1, 6, 6)
        assert indices.dtype == torch.int64
        assert indices.device.type == "cpu"
        assert torch.equal(batch_labels, labels[indices])
        assert torch.equal(images, to_float(pixels[indices]))
        seen.extend(indices.tolist())
    assert sorted(seen) == list(range(50))
    assert seen != list(range(50))

    second = epoch_indices(batches)
    assert sorted(second) == list(range(50))
    assert second != seen  # reshuffled every pass


def test_batches_without_shuffle_keep_order() -> None:
    pixels, labels = small_dataset()
    batches = TensorBatches(pixels, labels, 16, shuffle=False)
    assert epoch_indices(batches) == list(range(50))


def test_batches_honour_changed_batch_size() -> None:
    pixels, labels = small_dataset()
    batches = TensorBatches(pixels, labels, 8, shuffle=True)
    assert [len(indices) for _, _, indices in batches] == [8] * 6 + [2]

    batches.batch_size = 20
    assert len(batches) == 3
    assert [len(indices) for _, _, indices in batches] == [20, 20, 10]
    with pytest.raises(ValueError, match="batch_size"):
        batches.batch_size = 0


def test_batches_drop_last() -> None:
    pixels, labels = small_dataset()
    batches = TensorBatches(pixels, labels, 8, shuffle=True, drop_last=True)
    assert len(batches) == 6
    sizes = [len(indices) for _, _, indices in batches]
    assert sizes == [8] * 6


def test_batches_resume_same_order() -> None:
    pixels, labels = small_dataset()
    augment = make_augment(crop=4, brightness=0.2)
    original = TensorBatches(pixels, labels, 8, shuffle=True, seed=3, augment=augment)
    epoch_indices(original)
    state = original.state_dict()
    expected = [(images, indices) for images, _, indices in original]

    resumed = TensorBatches(pixels, labels, 8, shuffle=True, seed=3, augment=augment)
    resumed.load_state_dict(state)
    actual = [(images, indices) for images, _, indices in resumed]
    assert len(actual) == len(expected)
    for (images, indices), (expected_images, expected_indices) in zip(actual, expected):
        assert torch.equal(indices, expected_indices)
        assert torch.equal(images, expected_images)

    fresh = TensorBatches(pixels, labels, 8, shuffle=True, seed=3)
    assert epoch_indices(fresh) != [index for _, indices in expected for index in indices.tolist()]


def test_batches_subset_indices_and_channels_last() -> None:
    pixels, labels = small_dataset()
    subset = torch.tensor([3, 10, 11, 40, 49])
    batches = TensorBatches(
        pixels, labels, 2, shuffle=True, indices=subset, memory_format=torch.channels_last
    )
    assert len(batches) == 3
    seen = []
    for images, batch_labels, indices in batches:
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(batch_labels, labels[indices])
        seen.extend(indices.tolist())
    assert sorted(seen) == subset.tolist()


# ---------------------------------------------------------------------------------------------
# Splits


def imbalanced_labels() -> torch.Tensor:
    counts = [40, 4, 30, 2, 10, 1, 13]
    labels = torch.cat([torch.full((count,), label) for label, count in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def test_stratified_split_disjoint_and_proportional() -> None:
    labels = imbalanced_labels()
    first, second = stratified_split(labels, 0.25, seed=0)

    assert first.dtype == torch.int64
    assert torch.equal(first, torch.sort(first).values)
    assert torch.equal(second, torch.sort(second).values)
    assert set(first.tolist()).isdisjoint(second.tolist())
    assert sorted(first.tolist() + second.tolist()) == list(range(len(labels)))

    first_counts = torch.bincount(labels[first], minlength=7).tolist()
    second_counts = torch.bincount(labels[second], minlength=7).tolist()
    assert first_counts == [10, 1, 8, 1, 3, 0, 3]  # round(0.25 * n_c), at least one each side for n_c >= 2
    assert second_counts == [30, 3, 22, 1, 7, 1, 10]


def test_stratified_split_seeded() -> None:
    labels = imbalanced_labels()
    assert torch.equal(stratified_split(labels, 0.5, seed=4)[0], stratified_split(labels, 0.5, seed=4)[0])
    assert not torch.equal(stratified_split(labels, 0.5, seed=4)[0], stratified_split(labels, 0.5, seed=5)[0])


@pytest.mark.parametrize("portion", [0.0, 1.0, 1.5, -0.1])
def test_stratified_split_rejects_portion(portion: float) -> None:
    with pytest.raises(ValueError, match=str(portion)):
        stratified_split(imbalanced_labels(), portion, seed=0)


def test_stratified_subset_exact_and_proportional() -> None:
    labels = imbalanced_labels()  # 100 labels
    subset = stratified_subset(labels, 20, seed=0)
    assert len(subset) == 20
    assert len(set(subset.tolist())) == 20
    assert torch.equal(subset, torch.sort(subset).values)
    counts = torch.bincount(labels[subset], minlength=7).tolist()
    # Largest remainder gives [8, 1, 6, 0, 2, 0, 3]. The two empty classes then take one image
    # each from the classes furthest above their exact share (Neutral, then the largest class).
    assert counts == [7, 1, 6, 1, 2, 1, 2]

    counts = torch.bincount(labels[stratified_subset(labels, 50, seed=1)], minlength=7).tolist()
    assert sum(counts) == 50
    assert counts == [20, 2, 15, 1, 5, 1, 6]


def test_stratified_subset_limits() -> None:
    labels = imbalanced_labels()
    assert torch.equal(stratified_subset(labels, 100, seed=0), torch.arange(100))
    assert len(stratified_subset(labels, 0, seed=0)) == 0
    with pytest.raises(ValueError, match="101.*100"):
        stratified_subset(labels, 101, seed=0)


# ---------------------------------------------------------------------------------------------
# Package boundaries


def test_dataloader_imports_no_sibling_packages() -> None:
    for source in (ROOT / "dataloader").glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"NAS", "tools"}, f"{source.name} imports {name}"
