"""Tests of the CK+48 and JAFFE fine-tuning stage: train_CK48.py, train_JAFFE.py and tools/finetune.py."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import train_CK48
import train_FER2013
import train_JAFFE
from dataloader.batches import TensorBatches
from dataloader.ck48 import CK48_CLASSES, CK_DATA_CLASSES, DEFAULT_PATH as CK48_DEFAULT, read_ck48_folder
from dataloader.fer2013 import CLASSES
from dataloader.folds import PAPER_CLASS_COUNTS, folds_from_json
from dataloader.jaffe import DEFAULT_PATH as JAFFE_DEFAULT, load_jaffe
from dataloader.synthetic import make_ck48_folder, make_fer2013_h5, make_jaffe_folder, synthetic_images
from tests.conftest import real_file
from tools import finetune
from tools.checkpoint import atomic_save, load_checkpoint
from tools.engine import predict
from tools.modelio import load_network

FER_TINY = ["--init_channels", "4", "--layers", "3", "--batch_size", "16", "--device", "cpu", "--no-progress",
            "--report_freq", "0", "--eval_batch_size", "32", "--epochs", "1"]
FAST = ["--device", "cpu", "--threads", "1", "--no-progress", "--report_freq", "0", "--batch_size", "16",
        "--eval_batch_size", "64"]
RUN_FILES = ("log.txt", "args.json", "metrics.csv", "folds.json", "summary.json", "confusion.png")


@pytest.fixture(scope="module")
def fer_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fer")
    data = make_fer2013_h5(folder / "fer.h5", n_train=112, n_public=21, n_private=21)
    args = train_FER2013.get_args_parser().parse_args(["--data", str(data), "--save", str(folder / "run"), *FER_TINY])
    return train_FER2013.main(args) / "last.pt"


@pytest.fixture(scope="module")
def ck_folder(tmp_path_factory) -> Path:
    return make_ck48_folder(tmp_path_factory.mktemp("ck") / "CK+48", subjects=range(10, 20), frames=1)


@pytest.fixture(scope="module")
def jaffe_folder(tmp_path_factory) -> Path:
    return make_jaffe_folder(tmp_path_factory.mktemp("jaffe") / "jaffedbase", subjects=("KA", "KL", "KM"), takes=1)


@pytest.fixture(scope="module")
def ckdata_h5(tmp_path_factory) -> Path:
    """A synthetic CK_data.h5: data_pixel and data_label only, grouped by class in CK_DATA_CLASSES order."""
    labels = np.repeat(np.arange(len(CK_DATA_CLASSES)), PAPER_CLASS_COUNTS)
    path = tmp_path_factory.mktemp("ckdata") / "CK_data.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("data_pixel", data=synthetic_images(labels, np.random.default_rng(0)))
        file.create_dataset("data_label", data=labels)
    return path


def ck(checkpoint: Path | str, data: Path | str, run_dir: Path, *extra: str) -> Path:
    argv = ["--checkpoint", str(checkpoint), "--data", str(data), "--save", str(run_dir), *FAST, *extra]
    return train_CK48.main(train_CK48.get_args_parser().parse_args(argv))


def jaffe(checkpoint: Path | str, data: Path | str, run_dir: Path, *extra: str) -> Path:
    argv = ["--checkpoint", str(checkpoint), "--data", str(data), "--save", str(run_dir), *FAST, *extra]
    return train_JAFFE.main(train_JAFFE.get_args_parser().parse_args(argv))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def last_epoch_test_acc(rows: list[dict[str, str]], fold: int) -> float:
    fold_rows = [row for row in rows if int(row["fold"]) == fold]
    return float(max(fold_rows, key=lambda row: int(row["epoch"]))["test_acc"])


# ---------------------------------------------------------------------------------------------
# Options and the classifier head


def test_defaults_match_authors_code() -> None:
    args = train_CK48.get_args_parser().parse_args([])
    assert (args.epochs, args.learning_rate, args.batch_size) == (60, 0.01794073, 64)
    assert (args.momentum, args.weight_decay, args.grad_clip) == (0.9, 3e-4, 5.0)
    assert (args.auxiliary, args.auxiliary_weight, args.drop_path_prob) == (True, 0.4, 0.2)
    assert (args.folds, args.fold, args.keep_head, args.channels_last) == ("subject", -1, False, True)
    assert args.data == CK48_DEFAULT
    assert (args.report_best_epoch, args.save_fold_checkpoints) == (False, False)
    jaffe_args = train_JAFFE.get_args_parser().parse_args([])
    assert (jaffe_args.folds, jaffe_args.reset_head, jaffe_args.zero_shot) == ("loso", False, False)
    assert (jaffe_args.epochs, jaffe_args.learning_rate, jaffe_args.batch_size) == (60, 0.01794073, 64)
    assert jaffe_args.data == JAFFE_DEFAULT
    assert train_CK48.get_args_parser().parse_args(["--no-auxiliary"]).auxiliary is False


def test_reset_head_shape_and_body(fer_checkpoint: Path) -> None:
    source = finetune.load_source(str(fer_checkpoint))
    model = finetune.build_model(source, len(CK48_CLASSES), None, auxiliary=True)
    assert model.classifier.out_features == 7
    assert model.auxiliary_head.classifier.out_features == 7
    assert torch.equal(model.stem[0].weight, source.weights["stem.0.weight"])
    assert not torch.equal(model.classifier.weight, source.weights["classifier.weight"])
    six = finetune.build_model(source, 6, None, auxiliary=False)
    assert six.classifier.out_features == 6
    assert six.auxiliary_head is None


def test_keep_head_copies_rows_by_name(fer_checkpoint: Path) -> None:
    source = finetune.load_source(str(fer_checkpoint))
    assert finetune.match_classes(source.classes, CK48_CLASSES) == [0, None, 1, 2, 3, 4, 5]
    units = finetune.match_classes(source.classes, CK48_CLASSES, {"contempt": "neutral"})
    assert units == [0, 6, 1, 2, 3, 4, 5]
    model = finetune.build_model(source, len(CK48_CLASSES), units, auxiliary=True)
    fer_names = {"anger": "Angry", "contempt": "Neutral", "disgust": "Disgust", "fear": "Fear", "happy": "Happy",
                 "sadness": "Sad", "surprise": "Surprise"}
    for row, name in enumerate(CK48_CLASSES):
        unit = CLASSES.index(fer_names[name])
        for prefix, layer in (("classifier", model.classifier), ("auxiliary_head.classifier",
                                                                 model.auxiliary_head.classifier)):
            assert torch.equal(layer.weight[row], source.weights[f"{prefix}.weight"][unit]), (name, prefix)
            assert torch.equal(layer.bias[row], source.weights[f"{prefix}.bias"][unit]), (name, prefix)


def test_keep_head_contempt_needs_a_choice(fer_checkpoint: Path, ck_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="contempt has no output.*--exclude_contempt.*--contempt_from_neutral"):
        ck(fer_checkpoint, ck_folder, tmp_path / "run", "--keep_head")
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="only with --keep_head"):
        ck(fer_checkpoint, ck_folder, tmp_path / "run", "--contempt_from_neutral")


@pytest.mark.parametrize("choice, classes", [
    ("--contempt_from_neutral", list(CK48_CLASSES)),
    ("--exclude_contempt", [name for name in CK48_CLASSES if name != "contempt"]),
])
def test_keep_head_fold_checkpoint_classes(fer_checkpoint: Path, ck_folder: Path, tmp_path: Path, choice: str,
                                           classes: list[str]) -> None:
    run_dir = ck(fer_checkpoint, ck_folder, tmp_path / "run", "--keep_head", choice, "--fold", "0", "--epochs", "1",
                 "--save_fold_checkpoints", "--color_jitter")
    model, checkpoint = load_network(run_dir / "fold_00.pt")
    assert checkpoint["kind"] == "finetune"
    assert checkpoint["network"]["classes"] == classes
    assert model.classifier.out_features == len(classes)
    summary = read_json(run_dir / "summary.json")
    assert summary["classes"] == classes
    assert summary["head"].startswith("kept from the checkpoint")
    assert summary["summed_over_folds"]["plain"]["images"] == len(classes)  # one subject, one image per class


# ---------------------------------------------------------------------------------------------
# CK+48


def test_ck48_subject_folds_end_to_end(fer_checkpoint: Path, ck_folder: Path, tmp_path: Path) -> None:
    run_dir = ck(fer_checkpoint, ck_folder, tmp_path / "run", "--epochs", "1", "--tta", "tencrop",
                 "--save_fold_checkpoints")
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    for number in range(10):
        assert (run_dir / f"fold_{number:02d}.json").is_file()
        assert (run_dir / f"fold_{number:02d}.pt").is_file()
    assert not list(run_dir.glob("*_last.pt"))

    summary = read_json(run_dir / "summary.json")
    assert summary["complete"] is True
    assert summary["tested_images"] == {"distinct": 70, "tested_once": 70, "tested_more_than_once": 0, "of": 70}
    assert summary["summed_over_folds"]["plain"]["images"] == 70
    assert len(summary["summed_over_folds"]["plain"]["confusion"]) == 7
    assert set(summary["summed_over_folds"]["plain"]["per_class_accuracy"]) == set(CK48_CLASSES)
    assert "tencrop" in summary["summed_over_folds"]
    assert "best_epoch_selected_on_test" not in summary
    accuracies = [fold["accuracy"] for fold in summary["per_fold"]]
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))

    # No subject in two folds, every image tested once.
    dataset = read_ck48_folder(ck_folder)
    folds = folds_from_json(run_dir / "folds.json")
    tested = np.concatenate([fold.test for fold in folds])
    assert sorted(tested.tolist()) == list(range(70))
    subject_sets = [set(dataset.subjects[fold.test].tolist()) for fold in folds]
    assert sum(len(s) for s in subject_sets) == len(set().union(*subject_sets))

    # Each fold's accuracy is its last epoch's, made by the saved final network.
    rows = metric_rows(run_dir)
    assert [(int(r["fold"]), int(r["epoch"])) for r in rows] == [(number, 0) for number in range(10)]
    for number in (0, 9):
        result = read_json(run_dir / f"fold_{number:02d}.json")
        assert result["accuracy"] == pytest.approx(last_epoch_test_acc(rows, number), rel=1e-5)
        model, _ = load_network(run_dir / f"fold_{number:02d}.pt")
        batches = TensorBatches(dataset.pixels, dataset.labels, 64, shuffle=False,
                                indices=torch.tensor(result["predictions"]["plain"]["indices"]))
        probs = predict(model, batches).probs
        assert torch.allclose(probs, torch.tensor(result["predictions"]["plain"]["probs"]), atol=1e-5)
        assert load_network(run_dir / f"fold_{number:02d}.pt")[1]["network"]["classes"] == list(CK48_CLASSES)

    log = (run_dir / "log.txt").read_text()
    assert "re-initialised for the 7 classes" in log
    assert "standard deviation" in log
    assert "per-class acc" in log


def test_paper_folds_report_the_overlap(fer_checkpoint: Path, ckdata_h5: Path, tmp_path: Path) -> None:
    run_dir = ck(fer_checkpoint, ckdata_h5, tmp_path / "run", "--folds", "paper", "--fold", "0", "--epochs", "1",
                 "--batch_size", "64")
    summary = read_json(run_dir / "summary.json")
    assert summary["protocol"]["folds"] == "paper"
    assert summary["protocol"]["coverage_of_all_folds"]["untested"] == 24
    assert summary["protocol"]["coverage_of_all_folds"]["tested_more_than_once"] > 0
    notes = " ".join(summary["protocol"]["notes"])
    for words in ("overlap", "24 images are never tested", "subject-overlapping", "not subject-independent"):
        assert words in notes, words
    assert summary["folds_run"] == [0]
    assert summary["complete"] is False
    assert summary["summed_over_folds"]["plain"]["images"] == 12 + 18 + 9 + 21 + 9 + 24 + 6  # one block per class
    assert "subject-overlapping" in (run_dir / "log.txt").read_text()
    assert len(folds_from_json(run_dir / "folds.json")) == 10


def test_ckdata_layout_rejects_subject_folds(fer_checkpoint: Path, ckdata_h5: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        ck(fer_checkpoint, ckdata_h5, tmp_path / "run")
    message = str(caught.value)
    assert "--folds subject" in message
    assert "records no subject ids" in message
    assert "use --folds paper" in message
    assert "python -m dataloader.prepare ck48" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case, expected", [
    ("no checkpoint", "--checkpoint is required"),
    ("missing checkpoint", "--checkpoint .*missing.pt: file not found"),
    ("search checkpoint", "--checkpoint .*search.pt: .*stage 'search'.*train_FER2013.py"),
    ("junk checkpoint", "--checkpoint .*junk.pt: .*could not be read"),
    ("missing data", "--data .*nothing: no such file or folder"),
    ("fold out of range", "--fold 10 is out of range: CK\\+48 with --folds subject has 10 folds, numbered 0..9"),
])
def test_errors_name_the_flag(fer_checkpoint: Path, ck_folder: Path, tmp_path: Path, case: str,
                              expected: str) -> None:
    checkpoint, data, extra = str(fer_checkpoint), str(ck_folder), []
    if case == "no checkpoint":
        checkpoint = ""
    elif case == "missing checkpoint":
        checkpoint = str(tmp_path / "missing.pt")
    elif case == "search checkpoint":
        checkpoint = str(atomic_save({"kind": "search", "model": {}}, tmp_path / "search.pt"))
    elif case == "junk checkpoint":
        checkpoint = str(tmp_path / "junk.pt")
        Path(checkpoint).write_bytes(b"not a checkpoint")
    elif case == "missing data":
        data = str(tmp_path / "nothing")
    else:
        extra = ["--fold", "10"]
    with pytest.raises(SystemExit, match=expected):
        ck(checkpoint, data, tmp_path / "run", *extra)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# JAFFE


def test_zero_shot_jaffe(fer_checkpoint: Path, jaffe_folder: Path, tmp_path: Path) -> None:
    run_dir = jaffe(fer_checkpoint, jaffe_folder, tmp_path / "run", "--zero_shot", "--tta", "tencrop")
    for name in ("log.txt", "args.json", "summary.json", "confusion.png"):
        assert (run_dir / name).is_file(), name
    summary = read_json(run_dir / "summary.json")
    assert summary["plain"]["images"] == 21
    assert set(summary["plain"]["per_class_accuracy"]) == set(CLASSES)
    assert len(summary["tencrop"]["confusion"]) == 7
    model, _ = load_network(fer_checkpoint)
    dataset = load_jaffe(jaffe_folder)
    expected = predict(model, TensorBatches(dataset.pixels, dataset.labels, 64, shuffle=False))
    assert summary["plain"]["accuracy"] == pytest.approx(expected.accuracy)
    assert not (run_dir / "metrics.csv").exists()


def test_jaffe_loso_end_to_end(fer_checkpoint: Path, jaffe_folder: Path, tmp_path: Path) -> None:
    run_dir = jaffe(fer_checkpoint, jaffe_folder, tmp_path / "run", "--epochs", "2", "--report_best_epoch")
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    summary = read_json(run_dir / "summary.json")
    assert summary["protocol"]["folds"] == "loso"
    assert summary["tested_images"]["tested_once"] == 21
    assert summary["head"].startswith("kept from the checkpoint")
    assert summary["best_epoch_selected_on_test"]["warning"].startswith("the epoch is selected on the test images")
    dataset = load_jaffe(jaffe_folder)
    rows = metric_rows(run_dir)
    assert len(rows) == 3 * 2
    for number, fold in enumerate(folds_from_json(run_dir / "folds.json")):
        assert set(dataset.subjects[fold.test].tolist()) == {number}
        result = read_json(run_dir / f"fold_{number:02d}.json")
        assert result["accuracy"] == pytest.approx(last_epoch_test_acc(rows, number), rel=1e-5)
        assert result["best_epoch_selected_on_test"]["epoch"] in (0, 1)
    assert "SELECTED ON TEST" in (run_dir / "log.txt").read_text()


def test_jaffe_stratified_folds_with_reset_head(fer_checkpoint: Path, jaffe_folder: Path, tmp_path: Path) -> None:
    # 21 images give at most 3 per class, fewer than 10 folds need: the error names the flag.
    with pytest.raises(SystemExit, match="--folds 10: cannot build 10 stratified folds"):
        jaffe(fer_checkpoint, jaffe_folder, tmp_path / "run", "--folds", "10", "--reset_head")


def test_resume_skips_finished_folds(fer_checkpoint: Path, jaffe_folder: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    whole = jaffe(fer_checkpoint, jaffe_folder, tmp_path / "whole", "--epochs", "2")

    original = finetune.train_one_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # fold 1, epoch 1
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(finetune, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        jaffe(fer_checkpoint, jaffe_folder, tmp_path / "parts", "--epochs", "2")
    parts = tmp_path / "parts"
    assert (parts / "fold_00.json").is_file()
    assert not (parts / "fold_01.json").exists()
    assert load_checkpoint(parts / "fold_01_last.pt")["epoch"] == 1

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    calls["n"] = 0
    monkeypatch.setattr(finetune, "train_one_epoch", counted)
    args = train_JAFFE.get_args_parser().parse_args(["--resume", str(parts), "--no-progress"])
    resumed = train_JAFFE.main(args)
    assert resumed == parts
    assert calls["n"] == 3  # fold 1 epoch 1, fold 2 epochs 0 and 1
    assert read_json(resumed / "summary.json") == read_json(whole / "summary.json")
    assert [r["train_loss"] for r in metric_rows(resumed)] == [r["train_loss"] for r in metric_rows(whole)]
    assert not list(resumed.glob("*_last.pt"))
    assert "fold 0: finished earlier" in (resumed / "log.txt").read_text()


def test_new_run_rejects_used_directory(fer_checkpoint: Path, jaffe_folder: Path, tmp_path: Path) -> None:
    jaffe(fer_checkpoint, jaffe_folder, tmp_path / "run", "--fold", "0", "--epochs", "1")
    with pytest.raises(SystemExit, match="already contains a cross-validation run; pass --resume"):
        jaffe(fer_checkpoint, jaffe_folder, tmp_path / "run", "--fold", "1", "--epochs", "1")


def test_resume_rejects_another_scripts_run(fer_checkpoint: Path, jaffe_folder: Path, tmp_path: Path) -> None:
    run_dir = jaffe(fer_checkpoint, jaffe_folder, tmp_path / "run", "--zero_shot")
    args = train_CK48.get_args_parser().parse_args(["--resume", str(run_dir)])
    with pytest.raises(SystemExit, match="another script"):
        train_CK48.main(args)


# ---------------------------------------------------------------------------------------------
# Real data (skipped when absent)


def test_real_ck48_single_fold(fer_checkpoint: Path, tmp_path: Path) -> None:
    data = real_file("ck48.h5")
    run_dir = ck(fer_checkpoint, data, tmp_path / "run", "--fold", "0", "--epochs", "1", "--batch_size", "64")
    folds = folds_from_json(run_dir / "folds.json")
    assert sorted(np.concatenate([fold.test for fold in folds]).tolist()) == list(range(981))
    summary = read_json(run_dir / "summary.json")
    assert summary["summed_over_folds"]["plain"]["images"] == len(folds[0].test)
    assert summary["classes"] == list(CK48_CLASSES)


def test_real_jaffe_single_fold(fer_checkpoint: Path, tmp_path: Path) -> None:
    data = real_file("jaffe.h5")
    run_dir = jaffe(fer_checkpoint, data, tmp_path / "run", "--fold", "0", "--epochs", "1")
    folds = folds_from_json(run_dir / "folds.json")
    assert len(folds) == 10
    assert sum(len(fold.test) for fold in folds) == 213
    summary = read_json(run_dir / "summary.json")
    assert summary["summed_over_folds"]["plain"]["images"] == len(folds[0].test)


def test_real_raw_folders(fer_checkpoint: Path, tmp_path: Path) -> None:
    ck_root = real_file("raw/CK+48")
    jaffe_root = real_file("raw/jaffedbase")
    run_dir = ck(fer_checkpoint, ck_root, tmp_path / "ck", "--folds", "paper", "--fold", "9", "--epochs", "1",
                 "--batch_size", "64")
    summary = read_json(run_dir / "summary.json")
    assert summary["protocol"]["coverage_of_all_folds"]["untested"] == 24
    assert summary["protocol"]["subject_overlapping_folds"] == 10
    run_dir = jaffe(fer_checkpoint, jaffe_root, tmp_path / "jaffe", "--folds", "10", "--reset_head", "--fold", "0",
                    "--epochs", "1")
    summary = read_json(run_dir / "summary.json")
    assert summary["head"].startswith("re-initialised")
    assert "not subject-independent" in " ".join(summary["protocol"]["notes"])
    assert summary["protocol"]["coverage_of_all_folds"]["tested_once"] == 213
