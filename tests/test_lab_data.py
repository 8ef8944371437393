"""Tests of the CK+48 and JAFFE readers, their prepare commands, the face crop and the fold builders."""
from __future__ import annotations

import json
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
from dataloader.ck48 import (
    CK48_CLASSES,
    CK_DATA_CLASSES,
    ckdata_order,
    load_ck48,
    parse_ck_name,
    read_ck48_folder,
)
from dataloader.fer2013 import CLASSES, DatasetError
from dataloader.folds import (
    PAPER_CLASS_COUNTS,
    PAPER_TEST_BLOCKS,
    Fold,
    FoldError,
    ck48_paper_folds,
    fold_coverage,
    folds_from_json,
    folds_to_json,
    loso_folds,
    paper_folds,
    stratified_folds,
    subject_folds,
)
from dataloader.jaffe import (
    DEFAULT_CROP,
    EXPRESSIONS,
    crop_faces,
    load_jaffe,
    parse_jaffe_name,
    read_jaffe_folder,
    save_crop_preview,
)
from dataloader.labdata import LabDataset
from dataloader.synthetic import make_ck48_folder, make_jaffe_folder, palette_tiff

CK_CLASS_COUNTS = [135, 54, 177, 75, 207, 84, 249]  # CK48_CLASSES order
JAFFE_CLASS_COUNTS = [30, 29, 32, 31, 31, 30, 30]  # FER2013 order


# ---------------------------------------------------------------------------------------------
# Helpers


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def save_grey(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def check_partition(folds: list[Fold], count: int) -> None:
    """Assert that every fold splits 0..count-1 into disjoint sorted parts and each image is tested once."""
    tested = np.concatenate([fold.test for fold in folds])
    assert sorted(tested.tolist()) == list(range(count))
    for fold in folds:
        assert fold.train.dtype == np.int64
        assert fold.test.dtype == np.int64
        assert np.array_equal(fold.train, np.sort(fold.train))
        assert np.array_equal(fold.test, np.sort(fold.test))
        assert np.intersect1d(fold.train, fold.test).size == 0
        assert len(fold.train) + len(fold.test) == count


def paper_labels() -> np.ndarray:
    """Labels in CK_data.h5 order: classes grouped in CK_DATA_CLASSES order with PAPER_CLASS_COUNTS images."""
    return np.repeat(np.arange(7), PAPER_CLASS_COUNTS)


def expect_prepare_failure(capsys: pytest.CaptureFixture[str], argv: list[str], culprit: Path, expected: str) -> None:
    out = Path(argv[argv.index("--out") + 1])
    with pytest.raises(SystemExit) as exited:
        prepare.main(argv)
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert str(culprit) in stderr
    assert expected in stderr
    assert not out.exists()
    assert [path.name for path in out.parent.iterdir() if path.name.startswith(".")] == []


# ---------------------------------------------------------------------------------------------
# File names


@pytest.mark.parametrize(
    "name, expected",
    [
        ("S010_004_00000017.png", (10, 4, 17)),
        ("anger/S999_001_00000001.PNG", (999, 1, 1)),
        ("S005_001_00000011.jpg", (5, 1, 11)),
    ],
)
def test_parse_ck_name_valid(name: str, expected: tuple[int, int, int]) -> None:
    assert parse_ck_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "S10_004_00000017.png",
        "S010_004_17.png",
        "S010_004_00000017.txt",
        "X010_004_00000017.png",
        "S010-004-00000017.png",
    ],
)
def test_parse_ck_name_invalid(name: str) -> None:
    with pytest.raises(DatasetError) as caught:
        parse_ck_name(name)
    assert name in str(caught.value)
    assert "S###_###_########.png" in str(caught.value)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("KA.AN1.39.tiff", ("KA", "AN", 1, 39)),
        ("YM.NE3.257.tif", ("YM", "NE", 3, 257)),
        ("jaffedbase/NA.SU2.220.TIFF", ("NA", "SU", 2, 220)),
    ],
)
def test_parse_jaffe_name_valid(name: str, expected: tuple[str, str, int, int]) -> None:
    assert parse_jaffe_name(name) == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("KA.XX1.39.tiff", "unknown expression code XX"),
        ("KA.AN.39.tiff", "KA.AN1.39.tiff"),
        ("ka.an1.39.tiff", "KA.AN1.39.tiff"),
        ("KA.AN1.39.png", "KA.AN1.39.tiff"),
        ("KAAN139.tiff", "KA.AN1.39.tiff"),
    ],
)
def test_parse_jaffe_name_invalid(name: str, expected: str) -> None:
    with pytest.raises(DatasetError) as caught:
        parse_jaffe_name(name)
    assert name in str(caught.value)
    assert expected in str(caught.value)


# ---------------------------------------------------------------------------------------------
# CK+48


def test_ck48_folder_read_in_sorted_order(tmp_path: Path) -> None:
    root = make_ck48_folder(tmp_path / "CK+48", subjects=(12, 10), frames=2)
    dataset = read_ck48_folder(root)

    expected_files = sorted(
        (CK48_CLASSES.index(path.parent.name), f"{path.parent.name}/{path.name}") for path in root.glob("*/*.png")
    )
    assert dataset.files == [name for _, name in expected_files]
    assert dataset.labels.tolist() == [label for label, _ in expected_files]
    assert dataset.classes == list(CK48_CLASSES)
    assert dataset.pixels.dtype == torch.uint8
    assert dataset.pixels.shape == (28, 48, 48)
    assert dataset.subjects.tolist() == [int(name.split("/")[1][1:4]) for name in dataset.files]
    assert dataset.sequences.tolist() == [int(name.split("/")[1][5:8]) for name in dataset.files]
    for image, name in zip(dataset.pixels, dataset.files):
        assert np.array_equal(image.numpy(), read_png(root / name))


def test_ck48_prepare_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_ck48_folder(tmp_path / "CK+48")
    out = tmp_path / "out" / "ck48.h5"
    assert prepare.main(["ck48", "--folder", str(root), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "126 images, 6 subjects" in stdout
    assert "42 sequences" in stdout

    with h5py.File(out, "r") as file:
        assert file["data_pixel"].dtype == np.uint8
        assert file["data_pixel"].shape == (126, 48, 48)
        assert file["data_label"].dtype == np.int64
        assert file["data_subject"].dtype == np.int64
        assert file["data_sequence"].dtype == np.int64
        assert file["data_file"].shape == (126,)
        assert [str(name) for name in file.attrs["classes"]] == list(CK48_CLASSES)

    original = read_ck48_folder(root)
    loaded = load_ck48(out)
    assert loaded.layout == "prepared"
    assert torch.equal(loaded.pixels, original.pixels)
    assert torch.equal(loaded.labels, original.labels)
    assert torch.equal(loaded.subjects, original.subjects)
    assert torch.equal(loaded.sequences, original.sequences)
    assert loaded.files == original.files
    assert loaded.classes == list(CK48_CLASSES)
    assert sorted(path.name for path in out.parent.iterdir()) == ["ck48.h5"]


def test_ck48_prepare_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_ck48_folder(tmp_path / "CK+48", subjects=(10,), frames=1)
    out = tmp_path / "ck48.h5"
    out.write_bytes(b"old")
    with pytest.raises(SystemExit) as exited:
        prepare.main(["ck48", "--folder", str(root), "--out", str(out)])
    assert exited.value.code == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"old"

    assert prepare.main(["ck48", "--folder", str(root), "--out", str(out), "--force"]) == 0
    assert len(load_ck48(out)) == 7


@pytest.mark.parametrize("case", ["unknown_class", "bad_name", "unreadable", "wrong_size", "sequence_in_two_classes"])
def test_ck48_invalid_folder_names_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    root = make_ck48_folder(tmp_path / "CK+48", subjects=(10, 11), frames=1)
    if case == "unknown_class":
        culprit = root / "neutral"
        save_grey(culprit / "S010_009_00000001.png", np.zeros((48, 48)))
        expected = "unknown class folder"
    elif case == "bad_name":
        culprit = root / "happy" / "S010_05_00000010.png"
        save_grey(culprit, np.zeros((48, 48)))
        expected = "S###_###_########.png"
    elif case == "unreadable":
        culprit = root / "fear" / "S020_001_00000001.png"
        culprit.write_bytes(b"not an image")
        expected = "cannot read image"
    elif case == "wrong_size":
        culprit = root / "fear" / "S020_001_00000001.png"
        save_grey(culprit, np.zeros((64, 48)))
        expected = "48x64"
    else:
        culprit = root / "surprise" / "S010_001_00000020.png"  # S010_001 is an anger sequence
        save_grey(culprit, np.zeros((48, 48)))
        expected = "also in the class folder"

    with pytest.raises(DatasetError) as caught:
        read_ck48_folder(root)
    assert len(caught.value.errors) == 1
    assert str(culprit) in caught.value.errors[0]
    assert expected in caught.value.errors[0]

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["ck48", "--folder", str(root), "--out", str(out_dir / "ck48.h5")]
    expect_prepare_failure(capsys, argv, culprit, expected)


@pytest.mark.parametrize("layout", ["no_folders", "empty_folders"])
def test_ck48_empty_folder_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str) -> None:
    root = tmp_path / "CK+48"
    root.mkdir()
    if layout == "empty_folders":
        for name in CK48_CLASSES:
            (root / name).mkdir()
    with pytest.raises(DatasetError, match="contains no CK\\+ images") as caught:
        read_ck48_folder(root)
    assert str(root) in str(caught.value)
    argv = ["ck48", "--folder", str(root), "--out", str(tmp_path / "ck48.h5")]
    expect_prepare_failure(capsys, argv, root, "no CK+ images")


def test_ck48_skips_hidden_and_other_files(tmp_path: Path) -> None:
    root = make_ck48_folder(tmp_path / "CK+48", subjects=(10,), frames=1)
    (root / "README.txt").write_text("notes")
    (root / "anger" / ".DS_Store").write_bytes(b"\0")
    (root / "anger" / "Thumbs.db").write_bytes(b"\0")
    assert len(read_ck48_folder(root)) == 7


def test_ck48_missing_file_gives_prepare_command(tmp_path: Path) -> None:
    path = tmp_path / "data" / "ck48.h5"
    with pytest.raises(FileNotFoundError) as caught:
        load_ck48(path)
    assert f"python -m dataloader.prepare ck48 --folder CK+48 --out {path}" in str(caught.value)


def test_ck48_string_ids_and_other_class_order(tmp_path: Path) -> None:
    folder = read_ck48_folder(make_ck48_folder(tmp_path / "CK+48", subjects=(10, 11), frames=2))
    rank = torch.tensor([CK_DATA_CLASSES.index(name) for name in CK48_CLASSES])
    path = tmp_path / "string_ids.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("data_pixel", data=folder.pixels.numpy())
        file.create_dataset("data_label", data=rank[folder.labels].numpy())
        subjects = [f"S{subject:03d}" for subject in folder.subjects.tolist()]
        sequences = [f"{subject}_{sequence:03d}" for subject, sequence in zip(subjects, folder.sequences.tolist())]
        file.create_dataset("data_subject", data=np.array(subjects, dtype=object), dtype=h5py.string_dtype())
        file.create_dataset("data_sequence", data=np.array(sequences, dtype=object), dtype=h5py.string_dtype())
        file.create_dataset("data_file", data=np.array(folder.files, dtype=object), dtype=h5py.string_dtype())
        file.attrs["classes"] = ",".join(CK_DATA_CLASSES)

    loaded = load_ck48(path)
    assert loaded.layout == "h5"
    assert loaded.classes == list(CK48_CLASSES)
    assert torch.equal(loaded.labels, folder.labels)
    assert torch.equal(loaded.subjects, folder.subjects)
    assert torch.equal(loaded.sequences, folder.sequences)

    stored_order = load_ck48(path, classes=None)
    assert stored_order.classes == list(CK_DATA_CLASSES)
    assert torch.equal(stored_order.labels, rank[folder.labels])


def test_ck48_ckdata_layout_has_no_subjects(tmp_path: Path) -> None:
    folder = read_ck48_folder(make_ck48_folder(tmp_path / "CK+48", subjects=(10, 11), frames=2))
    order = ckdata_order(folder)
    rank = torch.tensor([CK_DATA_CLASSES.index(name) for name in CK48_CLASSES])
    path = tmp_path / "CK_data.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("data_pixel", data=folder.pixels.numpy()[order])
        file.create_dataset("data_label", data=rank[folder.labels].numpy()[order])

    loaded = load_ck48(path)
    assert loaded.layout == "CK_data"
    assert loaded.subjects is None
    assert loaded.sequences is None
    assert loaded.files is None
    assert loaded.classes == list(CK48_CLASSES)
    assert torch.equal(loaded.pixels, folder.pixels[order])
    assert torch.equal(loaded.labels, folder.labels[order])
    assert np.array_equal(ckdata_order(loaded), np.arange(len(loaded)))
    with pytest.raises(FoldError, match="subject id"):
        subject_folds(loaded.labels, loaded.subjects)


def test_ckdata_order_sorts_class_then_name(tmp_path: Path) -> None:
    dataset = read_ck48_folder(make_ck48_folder(tmp_path / "CK+48", subjects=(11, 10), frames=2))
    reordered = dataset.select(ckdata_order(dataset))
    ranks = [CK_DATA_CLASSES.index(reordered.classes[label]) for label in reordered.labels.tolist()]
    assert ranks == sorted(ranks)
    assert reordered.files[:4] == [
        "anger/S010_001_00000010.png",
        "anger/S010_001_00000011.png",
        "anger/S011_001_00000010.png",
        "anger/S011_001_00000011.png",
    ]
    assert reordered.files[-1] == "contempt/S011_002_00000011.png"


def test_load_ck48_rejects_jaffe_file(tmp_path: Path) -> None:
    root = make_jaffe_folder(tmp_path / "jaffe", subjects=("KA",), takes=1)
    out = tmp_path / "jaffe.h5"
    assert prepare.main(["jaffe", "--folder", str(root), "--out", str(out)]) == 0
    with pytest.raises(DatasetError, match="JAFFE"):
        load_ck48(out)


def test_with_classes_rejects_other_names() -> None:
    dataset = LabDataset("tiny", torch.zeros(2, 1, 1, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    assert dataset.with_classes(["B", "A"]).labels.tolist() == [1, 0]
    with pytest.raises(DatasetError, match="names differ"):
        dataset.with_classes(["a", "c"])


# ---------------------------------------------------------------------------------------------
# JAFFE


def test_jaffe_prepare_round_trip_with_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_jaffe_folder(tmp_path / "jaffedbase")
    (root / "DATASET_README.txt").write_text("terms")
    out = tmp_path / "out" / "jaffe.h5"
    preview = tmp_path / "out" / "crop.png"
    assert prepare.main(["jaffe", "--folder", str(root), "--out", str(out), "--preview", str(preview)]) == 0
    assert "42 images, 3 subjects" in capsys.readouterr().out

    with h5py.File(out, "r") as file:
        assert file["data_pixel"].dtype == np.uint8
        assert file["data_pixel"].shape == (42, 256, 256)
        assert [str(name) for name in file.attrs["classes"]] == list(CLASSES)
        assert [str(name) for name in file.attrs["subjects"]] == ["KA", "KL", "KM"]

    original = read_jaffe_folder(root)
    full = load_jaffe(out, size=None, crop=None)
    assert full.layout == "prepared"
    assert torch.equal(full.pixels, original.pixels)
    assert torch.equal(full.labels, original.labels)
    assert torch.equal(full.subjects, original.subjects)
    assert full.files == original.files
    assert full.labels.tolist() == [EXPRESSIONS.index(parse_jaffe_name(name)[1]) for name in full.files]

    cropped = load_jaffe(out)
    assert cropped.pixels.shape == (42, 48, 48)
    assert cropped.classes == list(CLASSES)
    assert torch.equal(cropped.pixels, load_jaffe(root).pixels)

    with Image.open(preview) as image:
        assert image.format == "PNG"
        assert image.size[0] > image.size[1] > 100
    assert sorted(path.name for path in out.parent.iterdir()) == ["crop.png", "jaffe.h5"]


def test_jaffe_fixture_bars_survive_crop(tmp_path: Path) -> None:
    dataset = load_jaffe(make_jaffe_folder(tmp_path / "jaffe", subjects=("KA",), takes=1))
    for image, label in zip(dataset.pixels.float(), dataset.labels.tolist()):
        row_means = image[:, 6:-6].mean(dim=1)
        top = 3 + 6 * label  # synthetic.BAR_SPACING rows per class
        assert float(row_means[top : top + 4].mean()) > float(row_means.mean()) + 20


def test_jaffe_palette_tiff_decoded_through_palette(tmp_path: Path) -> None:
    root = tmp_path / "jaffe"
    root.mkdir()
    grey = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    palette_tiff(root / "KA.AN1.39.tiff", grey)
    save_grey(root / "KA.AN2.40.tiff", grey)
    with Image.open(root / "KA.AN1.39.tiff") as image:
        assert image.mode == "P"
        assert np.asarray(image)[0, 10] == 245  # the stored index, not the grey value

    dataset = read_jaffe_folder(root)
    assert np.array_equal(dataset.pixels[0].numpy(), grey)
    assert np.array_equal(dataset.pixels[1].numpy(), grey)


def test_jaffe_fixture_mixes_palette_and_grey(tmp_path: Path) -> None:
    root = make_jaffe_folder(tmp_path / "jaffe", subjects=("KA",), takes=1, palette_every=2)
    modes = []
    for path in sorted(root.glob("*.tiff")):
        with Image.open(path) as image:
            modes.append(image.mode)
            assert image.size == (256, 256)
    assert modes.count("P") == 4
    assert modes.count("L") == 3


@pytest.mark.parametrize("case", ["bad_name", "unknown_code", "unreadable", "wrong_size"])
def test_jaffe_invalid_folder_names_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    root = make_jaffe_folder(tmp_path / "jaffe", subjects=("KA",), takes=1)
    if case == "bad_name":
        culprit = root / "KA_AN1_99.tiff"
        save_grey(culprit, np.zeros((256, 256)))
        expected = "KA.AN1.39.tiff"
    elif case == "unknown_code":
        culprit = root / "KA.XX1.99.tiff"
        save_grey(culprit, np.zeros((256, 256)))
        expected = "unknown expression code XX"
    elif case == "unreadable":
        culprit = root / "KA.HA3.99.tiff"
        culprit.write_bytes(b"not an image")
        expected = "cannot read image"
    else:
        culprit = root / "KA.HA3.99.tiff"
        save_grey(culprit, np.zeros((128, 128)))
        expected = "128x128"

    with pytest.raises(DatasetError) as caught:
        read_jaffe_folder(root)
    assert len(caught.value.errors) == 1
    assert str(culprit) in caught.value.errors[0]
    assert expected in caught.value.errors[0]

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["jaffe", "--folder", str(root), "--out", str(out_dir / "jaffe.h5")]
    expect_prepare_failure(capsys, argv, culprit, expected)


def test_jaffe_empty_folder_rejected(tmp_path: Path) -> None:
    root = tmp_path / "jaffedbase"
    root.mkdir()
    (root / "DATASET_README.txt").write_text("terms")
    with pytest.raises(DatasetError, match="contains no JAFFE images") as caught:
        read_jaffe_folder(root)
    assert str(root) in str(caught.value)


def test_crop_faces_area_resize() -> None:
    small = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    full = torch.full((3, 256, 256), 7, dtype=torch.uint8)
    full[:, 50:146, 20:116] = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)

    out = crop_faces(full, crop=(20, 50, 96), size=48)
    assert out.dtype == torch.uint8
    assert out.shape == (3, 48, 48)
    assert torch.equal(out, small)  # each output pixel averages one 2x2 block

    assert crop_faces(full, crop=DEFAULT_CROP).shape == (3, 48, 48)
    assert torch.equal(crop_faces(full, crop=None, size=None), full)
    assert crop_faces(full, crop=(0, 0, 256), size=64).shape == (3, 64, 64)


@pytest.mark.parametrize("crop", [(100, 100, 160), (-1, 0, 10), (0, 0, 0), (0, 0)])
def test_crop_faces_rejects_bad_box(crop: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="crop"):
        crop_faces(torch.zeros(1, 256, 256, dtype=torch.uint8), crop=crop)


def test_crop_preview_from_dataset(tmp_path: Path) -> None:
    dataset = read_jaffe_folder(make_jaffe_folder(tmp_path / "jaffe", subjects=("KA", "KL"), takes=1))
    out = save_crop_preview(dataset, tmp_path / "preview.png", count=4)
    with Image.open(out) as image:
        assert image.format == "PNG"
    with pytest.raises(ValueError, match="crop"):
        save_crop_preview(load_jaffe(tmp_path / "jaffe"), tmp_path / "small.png")


def test_prepare_jaffe_command_line(tmp_path: Path) -> None:
    root = make_jaffe_folder(tmp_path / "jaffe", subjects=("KA",), takes=1)
    out = tmp_path / "jaffe.h5"
    result = subprocess.run(
        [sys.executable, "-m", "dataloader.prepare", "jaffe", "--folder", str(root), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert len(load_jaffe(out)) == 7


# ---------------------------------------------------------------------------------------------
# Folds


def grouped_labels(subject_count: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return labels and subjects: every subject has 2 to 5 images of random classes."""
    rng = np.random.default_rng(seed)
    labels, subjects = [], []
    for subject in range(subject_count):
        count = int(rng.integers(2, 6))
        labels.extend(rng.integers(0, 7, size=count).tolist())
        subjects.extend([subject * 3 + 100] * count)  # ids need not be 0..S-1
    return np.array(labels), np.array(subjects)


def test_subject_folds_group_and_cover() -> None:
    labels, subjects = grouped_labels()
    folds = subject_folds(torch.from_numpy(labels), torch.from_numpy(subjects), k=5, seed=1)

    assert len(folds) == 5
    check_partition(folds, len(labels))
    test_subjects = [set(subjects[fold.test].tolist()) for fold in folds]
    for first in range(5):
        for second in range(first + 1, 5):
            assert test_subjects[first].isdisjoint(test_subjects[second])
    for fold in folds:
        assert set(labels[fold.train].tolist()) == set(range(7))


def test_subject_folds_seeded() -> None:
    labels, subjects = grouped_labels()
    first = subject_folds(labels, subjects, k=5, seed=3)
    again = subject_folds(labels, subjects, k=5, seed=3)
    other = subject_folds(labels, subjects, k=5, seed=4)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(first, again))
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(first, other))


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
def test_subject_folds_reject_impossible() -> None:
    labels, subjects = grouped_labels(subject_count=6)
    with pytest.raises(FoldError, match="6 subjects"):
        subject_folds(labels, subjects, k=10)

    owners = np.repeat(np.arange(8), 6)
    single = np.tile([0, 0, 1, 1, 2, 2], 8)
    single[-1] = 3  # class 3 only in subject 7, so the fold that tests subject 7 cannot train on it
    with pytest.raises(FoldError, match="no training image of class"):
        subject_folds(single, owners, k=4)


def test_loso_folds_one_subject_each() -> None:
    labels, subjects = grouped_labels(subject_count=8)
    folds = loso_folds(subjects, labels=None)
    assert len(folds) == 8
    check_partition(folds, len(labels))
    for fold, subject in zip(folds, np.unique(subjects)):
        assert set(subjects[fold.test].tolist()) == {subject}
        assert subject not in subjects[fold.train]

    with pytest.raises(FoldError, match="class"):
        loso_folds(np.array([0, 0, 1, 1]), labels=np.array([0, 1, 0, 2]))


def test_stratified_folds_balanced() -> None:
    labels = np.repeat(np.arange(7), [20, 30, 10, 40, 50, 25, 15])
    folds = stratified_folds(labels, k=5, seed=0)
    check_partition(folds, len(labels))
    for fold in folds:
        counts = np.bincount(labels[fold.test], minlength=7)
        assert np.all(np.abs(counts - np.array([4, 6, 2, 8, 10, 5, 3])) <= 1)


def test_paper_folds_block_arithmetic() -> None:
    folds = paper_folds(paper_labels())
    assert len(folds) == 10
    starts = np.concatenate([[0], np.cumsum(PAPER_CLASS_COUNTS)])

    first_blocks = [np.arange(start, start + block) for start, block in zip(starts, PAPER_TEST_BLOCKS)]
    expected_first = np.concatenate(first_blocks)
    assert np.array_equal(folds[0].test, expected_first)
    assert folds[0].test[:13].tolist() == list(range(12)) + [135]

    last_blocks = [np.arange(end - block, end) for end, block in zip(starts[1:], PAPER_TEST_BLOCKS)]
    expected_last = np.concatenate(last_blocks)
    assert np.array_equal(folds[9].test, expected_last)
    assert folds[9].test[:12].tolist() == list(range(123, 135))
    assert folds[9].test[-6:].tolist() == list(range(975, 981))

    for fold in folds:
        assert len(fold.test) == sum(PAPER_TEST_BLOCKS)
        assert np.array_equal(fold.train, np.setdiff1d(np.arange(981), fold.test))


def test_paper_folds_overlap_and_gaps() -> None:
    folds = paper_folds(paper_labels())
    # Fold 8's fear block (images 312 + 72 ... 312 + 80) runs 6 images into happy (387...392).
    assert folds[8].test[(folds[8].test >= 384) & (folds[8].test < 393)].tolist() == list(range(384, 393))
    coverage = fold_coverage(folds, 981)
    # Untested: anger 108..122 (15) and surprise 216..224 (9). Tested twice: 3 disgust,
    # 9 fear, 6 + 3 happy, 6 sadness and 6 contempt images.
    assert coverage.untested == 24
    assert coverage.tested_more_than_once == 33
    assert coverage.tested_once == 981 - 24 - 33


@pytest.mark.parametrize("case", ["shuffled", "wrong_counts", "negative"])
def test_paper_folds_reject_other_labels(case: str) -> None:
    labels = paper_labels()
    if case == "shuffled":
        labels = np.random.default_rng(0).permutation(labels)
    elif case == "wrong_counts":
        labels = labels[1:]
    else:
        labels = labels - 1
    with pytest.raises(FoldError, match="grouped by class"):
        paper_folds(labels)


def test_ck48_paper_folds_map_back() -> None:
    # A dataset in CK_data order with unique file names, then shuffled and relabelled in folder order.
    labels = paper_labels()
    files = [
        f"{CK_DATA_CLASSES[label]}/S{index // 6:03d}_{label + 1:03d}_{index:08d}.png"
        for index, label in enumerate(labels)
    ]
    rank = torch.tensor([CK_DATA_CLASSES.index(name) for name in CK48_CLASSES])
    to_folder = torch.argsort(rank)  # CK_data label -> folder label
    pixels = torch.arange(981, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(981, 1, 1)
    ordered = LabDataset("CK+48", pixels, to_folder[torch.from_numpy(labels)], list(CK48_CLASSES), files=files)
    permutation = np.random.default_rng(0).permutation(981)
    shuffled = ordered.select(permutation)

    folds = ck48_paper_folds(shuffled)
    expected = paper_folds(labels)
    for fold, reference in zip(folds, expected):
        assert np.array_equal(np.sort(permutation[fold.test]), reference.test)
        assert np.array_equal(np.sort(permutation[fold.train]), reference.train)


def test_folds_json_round_trip(tmp_path: Path) -> None:
    folds = paper_folds(paper_labels())
    path = folds_to_json(folds, tmp_path / "run" / "folds.json", protocol="paper", seed=0)
    document = json.loads(path.read_text())
    assert document["protocol"] == "paper"
    assert len(document["folds"]) == 10
    assert document["folds"][0]["test"][:3] == [0, 1, 2]

    loaded = folds_from_json(path)
    for fold, original in zip(loaded, folds):
        assert np.array_equal(fold.train, original.train)
        assert np.array_equal(fold.test, original.test)
    assert sorted(p.name for p in path.parent.iterdir()) == ["folds.json"]

    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(FoldError, match="bad.json"):
        folds_from_json(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------
# Real data (skipped when absent)


@pytest.fixture(scope="module")
def real_ck48() -> LabDataset:
    return load_ck48(real_file("ck48.h5"))


@pytest.fixture(scope="module")
def real_jaffe_full() -> LabDataset:
    return load_jaffe(real_file("jaffe.h5"), size=None, crop=None)


def test_real_ck48_counts(real_ck48: LabDataset) -> None:
    assert real_ck48.pixels.shape == (981, 48, 48)
    assert real_ck48.class_counts() == CK_CLASS_COUNTS
    assert len(torch.unique(real_ck48.subjects)) == 118
    assert len(set(zip(real_ck48.subjects.tolist(), real_ck48.sequences.tolist()))) == 327


def test_real_ck48_folder_equals_h5(real_ck48: LabDataset, tmp_path: Path) -> None:
    root = real_file("raw/CK+48")
    out = tmp_path / "ck48.h5"
    assert prepare.main(["ck48", "--folder", str(root), "--out", str(out)]) == 0
    prepared = load_ck48(out)
    assert torch.equal(prepared.pixels, real_ck48.pixels)
    assert torch.equal(prepared.labels, real_ck48.labels)
    assert torch.equal(prepared.subjects, real_ck48.subjects)
    assert torch.equal(prepared.sequences, real_ck48.sequences)
    assert prepared.files == real_ck48.files


def test_real_ck48_subject_folds(real_ck48: LabDataset) -> None:
    folds = subject_folds(real_ck48.labels, real_ck48.subjects, k=10, seed=0)
    check_partition(folds, 981)
    subjects = real_ck48.subjects.numpy()
    seen: set[int] = set()
    for fold in folds:
        fold_subjects = set(subjects[fold.test].tolist())
        assert seen.isdisjoint(fold_subjects)
        seen |= fold_subjects
        assert set(real_ck48.labels[fold.train].tolist()) == set(range(7))
    assert len(seen) == 118


def test_real_ck48_ckdata_order(real_ck48: LabDataset) -> None:
    path = real_file("ck48.h5")
    with h5py.File(path, "r") as file:
        reference_order = file["wujie_order"][()]
        reference_labels = file["data_label_wujie"][()]
    order = ckdata_order(real_ck48)
    assert np.array_equal(order, reference_order)

    folds = ck48_paper_folds(real_ck48)
    expected = paper_folds(reference_labels[reference_order])
    for fold, reference in zip(folds, expected):
        assert np.array_equal(fold.test, np.sort(order[reference.test]))
    assert fold_coverage(folds, 981).untested == 24


def test_real_jaffe_counts(real_jaffe_full: LabDataset) -> None:
    assert real_jaffe_full.pixels.shape == (213, 256, 256)
    assert real_jaffe_full.class_counts() == JAFFE_CLASS_COUNTS
    assert real_jaffe_full.subject_names == ["KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM"]
    assert len(torch.unique(real_jaffe_full.subjects)) == 10

    folds = loso_folds(real_jaffe_full.subjects, real_jaffe_full.labels)
    assert len(folds) == 10
    check_partition(folds, 213)


def test_real_jaffe_folder_equals_h5(real_jaffe_full: LabDataset, tmp_path: Path) -> None:
    root = real_file("raw/jaffedbase")
    palette_files = 0
    for path in root.glob("*.tiff"):
        with Image.open(path) as image:
            palette_files += image.mode == "P"
    assert palette_files == 23

    out = tmp_path / "jaffe.h5"
    assert prepare.main(["jaffe", "--folder", str(root), "--out", str(out)]) == 0
    prepared = load_jaffe(out, size=None, crop=None)
    assert torch.equal(prepared.pixels, real_jaffe_full.pixels)
    assert torch.equal(prepared.labels, real_jaffe_full.labels)
    assert torch.equal(prepared.subjects, real_jaffe_full.subjects)
    assert prepared.files == real_jaffe_full.files


def test_real_jaffe_crop(real_jaffe_full: LabDataset, tmp_path: Path) -> None:
    cropped = load_jaffe(real_file("jaffe.h5"))
    assert cropped.pixels.shape == (213, 48, 48)
    assert torch.equal(cropped.pixels, crop_faces(real_jaffe_full.pixels))
    out = save_crop_preview(real_jaffe_full, tmp_path / "preview.png")
    with Image.open(out) as image:
        assert image.format == "PNG"
