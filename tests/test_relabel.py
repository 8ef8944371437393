"""Tests of train_relabel.py, ensemble.py and tools/threshold_analysis.py on tiny networks."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import ensemble
import train_FER2013
import train_relabel
from dataloader.fer2013 import CLASSES
from dataloader.synthetic import make_fer2013_h5
from NAS import genotypes
from NAS.model import NetworkFER
from tests.conftest import ROOT, real_file
from tools import fer_training, threshold_analysis
from tools.checkpoint import atomic_save, load_checkpoint
from tools.engine import Predictions, predict, train_one_epoch
from tools.fes import PUBLISHED_FES, save_fes
from tools.modelio import load_network

TRAIN_IMAGES = 112
RETRAIN_TINY = ["--init_channels", "4", "--layers", "3", "--batch_size", "16", "--device", "cpu", "--no-progress",
                "--report_freq", "0", "--eval_batch_size", "32"]
RELABEL_TINY = ["--batch_size", "16", "--device", "cpu", "--no-progress", "--report_freq", "0",
                "--eval_batch_size", "32"]
SAD, NEUTRAL = CLASSES.index("Sad"), CLASSES.index("Neutral")


@pytest.fixture(scope="module")
def synthetic_h5(tmp_path_factory):
    return make_fer2013_h5(tmp_path_factory.mktemp("data") / "fer.h5", n_train=TRAIN_IMAGES, n_public=21,
                           n_private=21)


def retrain(data, run_dir, *extra):
    args = train_FER2013.get_args_parser().parse_args(["--data", str(data), "--save", str(run_dir), *RETRAIN_TINY,
                                                       *extra])
    return train_FER2013.main(args)


def relabel(data, run_dir, checkpoint, *extra):
    args = train_relabel.get_args_parser().parse_args(["--data", str(data), "--save", str(run_dir), "--checkpoint",
                                                       str(checkpoint), *RELABEL_TINY, *extra])
    return train_relabel.main(args)


def metrics(run_dir):
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


@pytest.fixture(scope="module")
def retrained(synthetic_h5, tmp_path_factory):
    """Two tiny retrain runs with different cells, widths and depths; only the first has an auxiliary head."""
    root = tmp_path_factory.mktemp("retrain")
    auto = retrain(synthetic_h5, root / "auto", "--arch", "Auto_FERNet", "--epochs", "2", "--drop_path_prob", "0.2",
                   "--snapshot_train_acc", "1")
    darts = retrain(synthetic_h5, root / "darts", "--arch", "DARTS_V2", "--init_channels", "2", "--layers", "4",
                    "--epochs", "1", "--no-auxiliary")
    paths = {"snapshot": auto / "train_acc_1.pt", "auto_last": auto / "last.pt", "darts": darts / "best.pt"}
    assert load_checkpoint(paths["snapshot"])["epoch"] == 1
    return paths


@pytest.fixture(scope="module")
def relabel_run(synthetic_h5, retrained, tmp_path_factory):
    """A 2-epoch relabel run that relabels every misclassified sample from epoch 1 on (gap < 1, no FES),
    and the training data it used."""
    captured = {}
    original = train_relabel.load_fer_data

    def capture(*args, **kwargs):
        captured["data"] = original(*args, **kwargs)
        return captured["data"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_relabel, "load_fer_data", capture)
        run_dir = relabel(synthetic_h5, tmp_path_factory.mktemp("relabel") / "run", retrained["snapshot"],
                          "--epochs", "2", "--relabel_threshold", "1.0", "--no-fes")
    return run_dir, captured["data"]


# train_relabel.py: the run.

def test_relabel_run_writes_every_file(relabel_run, retrained):
    run_dir, _ = relabel_run
    for name in ("args.json", "log.txt", "metrics.csv", "last.pt", "best.pt", "results.json", "confusion_test.png"):
        assert (run_dir / name).is_file(), name
    for name in ("last.pt", "best.pt"):
        model, checkpoint = load_network(run_dir / name)
        assert checkpoint["kind"] == "relabel"
        assert checkpoint["network"]["genotype"] == genotypes.to_dict(genotypes.Auto_FERNet)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["start"]["checkpoint"] == str(retrained["snapshot"])
    assert results["start"]["epoch"] == 0
    assert results["start"]["PrivateTest"]["plain"]["images"] == 21
    assert 0.0 <= results["start"]["PrivateTest"]["plain"]["accuracy"] <= 100.0
    for tag in ("best", "last"):
        assert set(results[tag]) >= {"PublicTest", "PrivateTest", "PrivateTest_not_in_Training"}
    assert results["relabel"]["threshold"] == 1.0
    assert results["relabel"]["fes"] == {"used": False}
    log = (run_dir / "log.txt").read_text()
    assert "from \\ to" in log
    assert "relabelled samples:" in log
    assert "PrivateTest (plain): start" in log


def test_relabel_counts_misclassified_samples(relabel_run):
    # With a gap threshold of 1 and no FES gate, every sample whose prediction differs from its label
    # is relabeled, so the count equals the errors that the training accuracy (against labels) reports.
    run_dir, _ = relabel_run
    rows = metrics(run_dir)
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert int(rows[0]["relabeled"]) == 0
    errors = TRAIN_IMAGES - round(float(rows[1]["train_acc"]) * TRAIN_IMAGES / 100)
    assert int(rows[1]["relabeled"]) == errors
    assert errors > 0
    log = (run_dir / "log.txt").read_text()
    assert f"epoch 1: relabeled {errors} of {TRAIN_IMAGES} training samples" in log
    assert "epoch 0: no relabeling" in log


def test_relabel_keeps_stored_labels(relabel_run, synthetic_h5):
    _, data = relabel_run
    with h5py.File(synthetic_h5, "r") as file:
        labels = torch.from_numpy(file["Training_label"][()]).long()
    seen = 0
    for _, y, indices in data.train:
        assert torch.equal(y.cpu(), labels[indices])
        seen += len(y)
    assert seen == TRAIN_IMAGES


def test_drop_path_continues_retrain_schedule(relabel_run):
    # The snapshot was saved after epoch 0 of a 2-epoch retrain run with drop_path_prob 0.2.
    run_dir, _ = relabel_run
    assert [float(row["drop_path_prob"]) for row in metrics(run_dir)] == [0.1, 0.2]
    assert "p(epoch) = min(0.2, 0.2 * (1 + epoch) / 2)" in (run_dir / "log.txt").read_text()
    schedule = {"max_prob": 0.2, "retrain_epochs": 10, "completed_epochs": 8}
    values = [train_relabel.drop_path_continued(schedule, epoch) for epoch in range(5)]
    assert values == pytest.approx([0.16, 0.18, 0.2, 0.2, 0.2])


def test_relabel_schedule_skips_epoch_zero():
    schedule = train_relabel.RelabelSchedule(1.0, None, 0.03, list(CLASSES), start_epoch=1, train_samples=4)
    assert schedule.target_fn(0) is None
    assert schedule.epoch_end(0) == {"relabeled": 0}
    target_fn = schedule.target_fn(1)
    logits = torch.tensor([[2.0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 2.0]])
    labels = torch.tensor([0, 1])
    assert target_fn(logits, labels, torch.arange(2)).tolist() == [0, 6]
    assert labels.tolist() == [0, 1]
    assert schedule.epoch_end(1) == {"relabeled": 1}


def test_train_accuracy_uses_labels_not_targets(synthetic_h5):
    data = fer_training.load_fer_data(str(synthetic_h5), batch_size=16, device=torch.device("cpu"),
                                      memory_format=torch.contiguous_format)
    model = NetworkFER(genotypes.Auto_FERNet, C=4, num_classes=7, layers=3, auxiliary=True)
    counts = {"labels": 0, "targets": 0, "images": 0}

    def shift_every_target(logits, labels, indices):
        targets = (labels + 1) % 7
        predicted = logits.argmax(1)
        counts["labels"] += int((predicted == labels).sum())
        counts["targets"] += int((predicted == targets).sum())
        counts["images"] += len(labels)
        return targets

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_one_epoch(model, data.train, optimizer, epoch=0, aux_weight=0.4, target_fn=shift_every_target,
                             report_freq=0, progress=False)
    assert counts["images"] == TRAIN_IMAGES
    assert result.acc == pytest.approx(100.0 * counts["labels"] / TRAIN_IMAGES)
    if counts["labels"] != counts["targets"]:
        assert result.acc != pytest.approx(100.0 * counts["targets"] / TRAIN_IMAGES)


# train_relabel.py: options and the FES gate.

@pytest.mark.parametrize("argv, expected", [
    ([], True), (["--fes"], True), (["--fes", "True"], True), (["--fes", "False"], False), (["--no-fes"], False),
])
def test_fes_flag_parsing(argv, expected):
    assert train_relabel.get_args_parser().parse_args(argv).fes is expected


def test_original_command_needs_checkpoint(tmp_path):
    argv = "--batch_size 64 --learning_rate 0.02272721 --relabel_threshold 0.2 --fes True --fes_threshold 0.03"
    args = train_relabel.get_args_parser().parse_args([*argv.split(), "--save", str(tmp_path / "run")])
    assert (args.batch_size, args.learning_rate, args.relabel_threshold, args.fes, args.fes_threshold) == \
        (64, 0.02272721, 0.2, True, 0.03)
    assert (args.epochs, args.momentum, args.weight_decay, args.grad_clip, args.auxiliary_weight) == \
        (100, 0.9, 3e-4, 5.0, 0.4)
    with pytest.raises(SystemExit) as exited:
        train_relabel.main(args)
    assert "--checkpoint is missing" in str(exited.value)
    assert "train_acc_<N>.pt" in str(exited.value)
    assert not (tmp_path / "run").exists()


def test_relabel_rejects_other_checkpoints(synthetic_h5, relabel_run, tmp_path):
    run_dir, _ = relabel_run
    for path, expected in [(tmp_path / "absent.pt", "not found"), (run_dir / "best.pt", "'relabel'")]:
        with pytest.raises(SystemExit) as exited:
            relabel(synthetic_h5, tmp_path / "run", path, "--epochs", "1")
        assert str(path) in str(exited.value)
        assert expected in str(exited.value)
    assert not (tmp_path / "run").exists()


def test_fes_false_ignores_the_matrix(tmp_path):
    identity = save_fes(np.eye(7), tmp_path / "fes.json", source="test", rows="training")
    parser = train_relabel.get_args_parser()
    off = parser.parse_args(["--fes", "False", "--fes_matrix", str(identity)])
    assert train_relabel.load_fes_matrix(off) == (None, {"used": False})
    on = parser.parse_args(["--fes_matrix", str(identity)])
    matrix, info = train_relabel.load_fes_matrix(on)
    assert torch.equal(matrix, torch.eye(7, dtype=torch.float64))
    assert info["source"] == str(identity)

    logits = torch.tensor([[0.0, 0, 0, 0, 0, 0, 1.0]])  # predicts Neutral, labeled Sad
    labels = torch.tensor([SAD])
    gated = train_relabel.RelabelTargets(1.0, matrix, 0.03, list(CLASSES))
    assert gated(logits, labels, torch.arange(1)).tolist() == [SAD]
    ungated = train_relabel.RelabelTargets(1.0, None, 0.03, list(CLASSES))
    assert ungated(logits, labels, torch.arange(1)).tolist() == [NEUTRAL]


def test_fes_gate_blocks_relabeling_end_to_end(synthetic_h5, retrained, relabel_run, tmp_path):
    # The same run as relabel_run, but with an FES matrix that is 0 off the diagonal: nothing passes.
    identity = save_fes(np.eye(7), tmp_path / "fes.json", source="test", rows="training")
    run_dir = relabel(synthetic_h5, tmp_path / "run", retrained["snapshot"], "--epochs", "2", "--relabel_threshold",
                      "1.0", "--fes", "True", "--fes_matrix", str(identity), "--no-test_every_epoch")
    assert [int(row["relabeled"]) for row in metrics(run_dir)] == [0, 0]
    assert int(metrics(relabel_run[0])[1]["relabeled"]) > 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["relabel"]["fes"]["source"] == str(identity)
    assert results["relabel"]["fes_threshold"] == 0.03


def test_fes_sources(tmp_path):
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    votes = tmp_path / "votes.csv"
    votes.write_text(header + "Training,a.png,5,0,0,5,0,0,0,0,0,0\n"  # Sad and Neutral
                              "PublicTest,b.png,0,5,0,0,5,0,0,0,0,0\n")  # Angry and Happy: not used
    parser = train_relabel.get_args_parser()
    matrix, info = train_relabel.load_fes_matrix(parser.parse_args(["--fes_votes", str(votes)]))
    assert (info["source"], info["rows"]) == (str(votes), "training")
    assert float(matrix[SAD, NEUTRAL]) == 1.0
    assert float(matrix[0, 3]) == 0.0

    matrix, info = train_relabel.load_fes_matrix(parser.parse_args([]))
    assert info["source"] == "published"
    assert np.array_equal(matrix.numpy(), PUBLISHED_FES)
    with pytest.raises(SystemExit, match="absent.json"):
        train_relabel.load_fes_matrix(parser.parse_args(["--fes_matrix", str(tmp_path / "absent.json")]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--fes_matrix", "a.json", "--fes_votes", "b.csv"])


def test_resume_matches_an_uninterrupted_run(synthetic_h5, retrained, tmp_path, monkeypatch):
    # Starts from the end of the retrain run, so drop path stays at its maximum. The default FES is the published one.
    whole = relabel(synthetic_h5, tmp_path / "whole", retrained["auto_last"], "--epochs", "2", "--no-test_every_epoch")
    assert [float(row["drop_path_prob"]) for row in metrics(whole)] == [0.2, 0.2]
    assert "WARNING using the published FES matrix" in (whole / "log.txt").read_text()

    calls = {"n": 0}
    original = fer_training.train_one_epoch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(fer_training, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        relabel(synthetic_h5, tmp_path / "parts", retrained["auto_last"], "--epochs", "2", "--no-test_every_epoch")
    monkeypatch.setattr(fer_training, "train_one_epoch", original)
    args = train_relabel.get_args_parser().parse_args(["--resume", str(tmp_path / "parts"), "--no-progress"])
    resumed = train_relabel.main(args)

    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(resumed / "last.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    rows_a, rows_b = metrics(whole), metrics(resumed)
    assert [(r["train_loss"], r["relabeled"]) for r in rows_a] == [(r["train_loss"], r["relabeled"]) for r in rows_b]
    results = json.loads((resumed / "results.json").read_text())
    assert results["start"]["checkpoint"] == str(retrained["auto_last"])


# ensemble.py

def ensemble_args(tmp_path, *argv):
    return ensemble.get_args_parser().parse_args([*argv, "--save", str(tmp_path / "ensemble"), "--device", "cpu",
                                                  "--eval_batch_size", "32"])


def test_ensemble_equals_manual_average(synthetic_h5, retrained, tmp_path):
    paths = [retrained["snapshot"], retrained["darts"]]
    # Contiguous tensors as in the manual predictions below, so both compute the same floats.
    run_dir = ensemble.main(ensemble_args(tmp_path, "--checkpoints", *map(str, paths), "--data", str(synthetic_h5),
                                          "--out", str(tmp_path / "out" / "results.json"), "--no-channels_last"))
    for name in ("log.txt", "args.json", "results.json", "confusion_test.png", "confusion_test.txt"):
        assert (run_dir / name).is_file(), name
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results == json.loads((run_dir / "results.json").read_text())

    data = fer_training.load_fer_data(str(synthetic_h5), batch_size=16, device=torch.device("cpu"),
                                      memory_format=torch.contiguous_format, eval_batch_size=32)
    models = [load_network(path)[0] for path in paths]
    for split in ("PublicTest", "PrivateTest"):
        for view, tta in (("plain", "none"), ("tencrop", "tencrop")):
            outputs = [predict(model, data.evaluation[split], tta=tta, crop=44) for model in models]
            manual = Predictions((outputs[0].probs + outputs[1].probs) / 2, outputs[0].labels, outputs[0].indices)
            assert results["ensemble"][split][view]["accuracy"] == pytest.approx(manual.accuracy)
            for member, output in zip(results["members"], outputs):
                assert member[split][view]["accuracy"] == pytest.approx(output.accuracy)
    assert [(member["init_channels"], member["layers"]) for member in results["members"]] == [(4, 3), (2, 4)]

    members = ensemble.load_members(paths, torch.device("cpu"))
    outputs = [ensemble.member_predictions(member, data, ["plain"], logits=False) for member in members]
    combined = ensemble.combine([output["PrivateTest/plain"] for output in outputs], [0.5, 0.5], "softmax")
    plain = [predict(model, data.evaluation["PrivateTest"]) for model in models]
    assert torch.allclose(combined.probs, (plain[0].probs + plain[1].probs) / 2, atol=1e-6)

    logits = [predict(model, data.evaluation["PrivateTest"], logits=True) for model in models]
    weighted = ensemble.combine(logits, [3.0, 1.0], "logits")
    expected = torch.softmax((3 * logits[0].probs + logits[1].probs) / 4, dim=1)
    assert torch.allclose(weighted.probs, expected, atol=1e-6)


def test_greedy_selection_reads_only_public_test(synthetic_h5, retrained, tmp_path, monkeypatch):
    # Scripted outputs: the 4-layer member is right on PublicTest and wrong on PrivateTest, the 3-layer
    # member the reverse. Selection on PublicTest must choose the 4-layer member alone.
    holder = {}
    original_load = ensemble.load_fer_data

    def capture(*args, **kwargs):
        holder["data"] = original_load(*args, **kwargs)
        return holder["data"]

    calls = []
    state = {"selecting": False}

    def scripted(model, batches, **kwargs):
        split = "PublicTest" if batches is holder["data"].evaluation["PublicTest"] else "PrivateTest"
        calls.append((split, state["selecting"]))
        real = predict(model, batches, **kwargs)
        right = (model.layers == 4) == (split == "PublicTest")
        probs = torch.nn.functional.one_hot(real.labels if right else (real.labels + 1) % 7, 7).float()
        return Predictions(probs, real.labels, real.indices)

    original_select = ensemble.greedy_select
    seen = {}

    def recording_select(member_probs, labels, max_members=None):
        state["selecting"] = True
        seen["labels"] = labels.clone()
        seen["probs"] = [probs.clone() for probs in member_probs]
        try:
            return original_select(member_probs, labels, max_members)
        finally:
            state["selecting"] = False

    monkeypatch.setattr(ensemble, "load_fer_data", capture)
    monkeypatch.setattr(ensemble, "predict", scripted)
    monkeypatch.setattr(ensemble, "greedy_select", recording_select)
    paths = [retrained["snapshot"], retrained["darts"]]
    run_dir = ensemble.main(ensemble_args(tmp_path, "--checkpoints", *map(str, paths), "--data", str(synthetic_h5),
                                          "--tta", "none", "--select", "greedy"))

    public = holder["data"].evaluation["PublicTest"]
    public_labels = torch.cat([y for _, y, _ in public])
    assert torch.equal(seen["labels"], public_labels)
    assert torch.equal(seen["probs"][1].argmax(1), public_labels)
    assert calls and not any(selecting for _, selecting in calls)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["selected"]["members"] == [1]
    assert results["selected"]["checkpoints"] == [str(retrained["darts"])]
    assert results["selected"]["PublicTest"]["plain"]["accuracy"] == 100.0
    assert results["selected"]["PrivateTest"]["plain"]["accuracy"] == 0.0
    assert (run_dir / "confusion_test_selected.png").is_file()


def test_ensemble_rejects_mismatched_classes(synthetic_h5, retrained, tmp_path):
    checkpoint = load_checkpoint(retrained["darts"])
    checkpoint["network"]["classes"] = list(reversed(checkpoint["network"]["classes"]))
    checkpoint.pop("format_version")
    other = atomic_save(checkpoint, tmp_path / "other_classes.pt")
    args = ensemble_args(tmp_path, "--checkpoints", str(retrained["snapshot"]), str(other), "--data",
                         str(synthetic_h5))
    with pytest.raises(SystemExit) as exited:
        ensemble.main(args)
    assert str(other) in str(exited.value)
    assert "classes" in str(exited.value)
    assert not (tmp_path / "ensemble").exists()


@pytest.mark.parametrize("problem", ["missing", "junk", "truncated"])
def test_ensemble_rejects_unreadable_checkpoints(synthetic_h5, retrained, tmp_path, problem):
    bad = tmp_path / f"{problem}.pt"
    if problem == "junk":
        bad.write_bytes(b"not a checkpoint")
    elif problem == "truncated":
        content = retrained["darts"].read_bytes()
        bad.write_bytes(content[: len(content) // 2])
    args = ensemble_args(tmp_path, "--checkpoints", str(retrained["snapshot"]), str(bad), "--data", str(synthetic_h5))
    with pytest.raises(SystemExit) as exited:
        ensemble.main(args)
    assert str(bad) in str(exited.value)
    assert not (tmp_path / "ensemble").exists()


def test_ensemble_rejects_bad_weights(synthetic_h5, retrained, tmp_path):
    paths = [str(retrained["snapshot"]), str(retrained["darts"])]
    for extra, expected in [(["--weights", "1"], "1 values for 2"), (["--weights", "1", "-1"], "non-negative"),
                            (["--weights", "1", "2", "--select", "greedy"], "cannot be combined")]:
        with pytest.raises(SystemExit) as exited:
            ensemble.main(ensemble_args(tmp_path, "--checkpoints", *paths, "--data", str(synthetic_h5), *extra))
        assert expected in str(exited.value)


# tools/threshold_analysis.py

def test_threshold_analysis_run_then_collect(synthetic_h5, retrained, tmp_path):
    prefix = tmp_path / "grid" / "thresholds"
    assert threshold_analysis.main(["run", "--checkpoint", str(retrained["snapshot"]), "--relabel_thresholds", "0.1",
                                    "0.5", "--fes_thresholds", "off", "--epochs", "1", "--out", str(prefix),
                                    "--data", str(synthetic_h5), *RELABEL_TINY, "--no-test_every_epoch"]) == 0
    run_dirs = sorted(Path(f"{prefix}-runs").iterdir())
    assert [path.name for path in run_dirs] == ["relabel0.1-fesoff", "relabel0.5-fesoff"]
    assert json.loads((run_dirs[1] / "args.json").read_text())["fes"] is False
    assert Path(f"{prefix}.png").read_bytes()[:4] == b"\x89PNG"

    # The command line, from the repository root, with one unfinished directory among the runs.
    (tmp_path / "unfinished").mkdir()
    out = tmp_path / "collected" / "grid"
    result = subprocess.run([sys.executable, "tools/threshold_analysis.py", "collect", *map(str, run_dirs),
                             str(tmp_path / "unfinished"), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout
    assert Path(f"{out}.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(Path(f"{out}.csv").open()))
    assert [(row["relabel_threshold"], row["fes_threshold"]) for row in rows] == [("0.1", "off"), ("0.5", "off")]
    for row, run_dir in zip(rows, run_dirs):
        results = json.loads((run_dir / "results.json").read_text())
        assert float(row["test_acc"]) == pytest.approx(results["best"]["PrivateTest"]["plain"]["accuracy"])
        assert float(row["val_acc"]) == pytest.approx(results["best"]["PublicTest"]["plain"]["accuracy"])
        assert float(row["start_test_acc"]) == pytest.approx(results["start"]["PrivateTest"]["plain"]["accuracy"])


def test_threshold_analysis_rejects_bad_input(tmp_path):
    with pytest.raises(SystemExit) as exited:
        threshold_analysis.main(["collect", str(tmp_path), "--out", str(tmp_path / "grid")])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        threshold_analysis.main(["run", "--checkpoint", "x.pt", "--relabel_thresholds", "0.2", "--fes_thresholds",
                                 "0.03", "--epochs", "1", "--out", str(tmp_path / "grid"), "--fes_threshold", "0.1"])
    assert exited.value.code == 2
    assert not (tmp_path / "grid-runs").exists()


def test_threshold_grid_averages_repeated_cells(tmp_path):
    def grid_run(relabel_threshold, fes_threshold, val_acc):
        return threshold_analysis.GridRun(tmp_path, relabel_threshold, fes_threshold, val_acc, 50.0, 50.0, None,
                                          None, 0, 1, "plain")

    runs = [grid_run(0.2, 0.03, 60.0), grid_run(0.2, 0.03, 62.0), grid_run(0.1, None, 55.0)]
    assert threshold_analysis.grid_axes(runs) == ([0.1, 0.2], [None, 0.03])
    means, count = threshold_analysis.grid_means(runs, "val_acc")
    assert count.tolist() == [[1, 0], [0, 2]]
    assert means[0, 0] == 55.0
    assert np.isnan(means[0, 1])
    assert means[1, 1] == 61.0


# Real data.

def test_real_fer2013_relabel_epoch(retrained, tmp_path):
    # The smaller network (C=2, without an auxiliary head) keeps the five passes over 3589 images short.
    data = real_file("fer2013.h5")
    run_dir = relabel(data, tmp_path / "run", retrained["darts"], "--epochs", "1", "--subset", "140",
                      "--no-test_every_epoch", "--eval_batch_size", "64")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["start"]["PrivateTest"]["plain"]["images"] == 3589
    assert results["best"]["PrivateTest"]["plain"]["images"] == 3589
    assert results["test_images_in_training"] > 0
    assert [int(row["relabeled"]) for row in metrics(run_dir)] == [0]
