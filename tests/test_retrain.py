"""Tests of the evaluation network, the shared training engine and train_FER2013.py."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import train_FER2013
from dataloader.synthetic import make_fer2013_h5
from NAS import genotypes
from NAS.model import AuxiliaryHead, NetworkFER, drop_path, multiply_adds
from tests.conftest import real_file
from tools import fer_training
from tools.checkpoint import CheckpointError, atomic_save, load_checkpoint
from tools.engine import Predictions, predict, ten_crop
from tools.modelio import load_network

GENOTYPES = [genotypes.Auto_FERNet, genotypes.DARTS_V2]
TINY = ["--init_channels", "4", "--layers", "3", "--batch_size", "16", "--device", "cpu", "--no-progress",
        "--report_freq", "0", "--eval_batch_size", "32"]


@pytest.fixture(scope="module")
def synthetic_h5(tmp_path_factory):
    return make_fer2013_h5(tmp_path_factory.mktemp("data") / "fer.h5", n_train=112, n_public=21, n_private=21)


def run(data, run_dir, *extra):
    args = train_FER2013.get_args_parser().parse_args(["--data", str(data), "--save", str(run_dir), *TINY, *extra])
    return train_FER2013.main(args)


# The network.

@pytest.mark.parametrize("genotype", GENOTYPES)
@pytest.mark.parametrize("layers", [3, 5, 6])
@pytest.mark.parametrize("size", [44, 48])
@pytest.mark.parametrize("auxiliary", [True, False])
def test_network_output_shapes(genotype, layers, size, auxiliary):
    model = NetworkFER(genotype, C=4, num_classes=5, layers=layers, auxiliary=auxiliary)
    x = torch.rand(2, 1, size, size)
    model.train()
    out = model(x)
    if auxiliary:
        logits, logits_aux = out
        assert logits_aux.shape == (2, 5)
    else:
        logits = out
    assert logits.shape == (2, 5)
    model.eval()
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize("size, expected", [(44, 11), (48, 12)])
def test_auxiliary_head_reads_the_second_reduction_output(size, expected):
    model = NetworkFER(genotypes.Auto_FERNet, C=4, layers=6)
    seen = []
    model.auxiliary_head.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[-1]))
    model.train()
    model(torch.rand(2, 1, size, size))
    assert seen == [expected]


def test_auxiliary_head_rejects_tiny_maps():
    with pytest.raises(ValueError, match="at least 6x6"):
        AuxiliaryHead(8, 7)(torch.rand(2, 8, 4, 4))


def test_published_cell_has_the_papers_parameter_count():
    model = NetworkFER(genotypes.Auto_FERNet, C=36, num_classes=7, layers=12, auxiliary=True)
    assert 2.05e6 < model.parameter_count() < 2.2e6
    assert model.parameter_count(auxiliary=True) > model.parameter_count()


def test_multiply_adds_of_a_single_convolution():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 10 * 10, 3))
    assert multiply_adds(model, 10) == 4 * 10 * 10 * 9 + 400 * 3


@pytest.mark.parametrize("bad", [{"layers": 2}, {"C": 3}, {"num_classes": 1}])
def test_network_rejects_bad_shapes(bad):
    kwargs = {"C": 4, "num_classes": 7, "layers": 3, **bad}
    with pytest.raises(ValueError):
        NetworkFER(genotypes.Auto_FERNet, **kwargs)


def test_drop_path_mean_and_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(20000, 2, 3, 3)
    y = drop_path(x, 0.2)
    assert abs(float(y.mean()) - 1.0) < 0.02
    per_sample = y.reshape(20000, -1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 1.25).all(1))
    assert drop_path(x, 0.0) is x


def test_drop_path_training_mode_only():
    model = NetworkFER(genotypes.Auto_FERNet, C=4, layers=3, auxiliary=False)
    model.drop_path_prob = 0.5
    x = torch.rand(4, 1, 44, 44)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(first, model(x))


def test_reset_classifier_changes_the_class_count():
    model = NetworkFER(genotypes.Auto_FERNet, C=4, layers=3, num_classes=7)
    model.reset_classifier(8)
    model.train()
    logits, logits_aux = model(torch.rand(2, 1, 44, 44))
    assert logits.shape == logits_aux.shape == (2, 8)


# Ten-crop and prediction.

def test_ten_crop_covers_corners_centre_and_mirrors():
    x = torch.arange(48 * 48, dtype=torch.float32).reshape(1, 1, 48, 48)
    crops = ten_crop(x, 44)
    assert len(crops) == 10 and all(c.shape == (1, 1, 44, 44) for c in crops)
    expected_origins = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
    for crop, (row, column) in zip(crops[:5], expected_origins):
        assert crop[0, 0, 0, 0] == row * 48 + column
        assert torch.equal(crop, x[..., row:row + 44, column:column + 44])
    for plain, mirrored in zip(crops[:5], crops[5:]):
        assert torch.equal(mirrored, plain.flip(-1))
    with pytest.raises(ValueError, match="ten-crop size"):
        ten_crop(x, 50)


def test_tencrop_prediction_averages_the_softmax_of_the_views():
    model = NetworkFER(genotypes.DARTS_V2, C=4, layers=3, auxiliary=False).eval()
    x = torch.rand(3, 1, 48, 48)
    batches = [(x, torch.tensor([0, 1, 2]), torch.arange(3))]
    result = predict(model, batches, tta="tencrop", crop=44)
    with torch.no_grad():
        manual = torch.stack([torch.softmax(model(view), 1) for view in ten_crop(x, 44)]).mean(0)
    assert torch.allclose(result.probs, manual, atol=1e-6)
    assert torch.allclose(result.probs.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="tta"):
        predict(model, batches, tta="fivecrop")


# Checkpoints.

def test_checkpoint_rebuilds_identical_network(synthetic_h5, tmp_path):
    run_dir = run(synthetic_h5, tmp_path / "run", "--epochs", "1", "--arch", "DARTS_V2", "--no-auxiliary")
    checkpoint = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    network = checkpoint["network"]
    assert network["genotype"] == genotypes.to_dict(genotypes.DARTS_V2)
    assert (network["init_channels"], network["layers"], network["auxiliary"]) == (4, 3, False)
    assert network["classes"] == ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    assert network["preprocessing"]["train_size"] == 44
    assert network["preprocessing"]["eval_size"] == 48
    for field in ("optimizer", "scheduler", "scaler", "rng", "metrics", "args", "epoch", "train_batches"):
        assert field in checkpoint
    model, _ = load_network(run_dir / "last.pt")
    reference = NetworkFER(genotypes.DARTS_V2, 4, 7, 3, auxiliary=False)
    reference.load_state_dict(checkpoint["model"])
    reference.eval()
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_load_network_rejects_other_stages_and_bad_records(tmp_path):
    atomic_save({"kind": "search", "model": {}}, tmp_path / "search.pt")
    with pytest.raises(CheckpointError, match="search"):
        load_network(tmp_path / "search.pt")
    atomic_save({"kind": "retrain", "model": {}, "network": {"layers": 3}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        load_network(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_network(tmp_path / "junk.pt")


# The training stage.

def test_tiny_run_writes_every_promised_file(synthetic_h5, tmp_path):
    run_dir = run(synthetic_h5, tmp_path / "run", "--epochs", "2", "--tta", "tencrop", "--snapshot_train_acc", "1",
                  "100", "--color_jitter")
    for name in ("args.json", "log.txt", "metrics.csv", "last.pt", "best.pt", "train_acc_1.pt", "results.json",
                 "confusion_test.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "train_acc_100.pt").exists()
    for name in ("last.pt", "best.pt", "train_acc_1.pt"):
        load_checkpoint(run_dir / name, kind="retrain", required=["network", "model"])
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    results = json.loads((run_dir / "results.json").read_text())
    for tag in ("best", "last"):
        for split in ("PublicTest", "PrivateTest", "PrivateTest_not_in_Training"):
            assert set(results[tag][split]) == {"plain", "tencrop"}
            summary = results[tag][split]["plain"]
            assert len(summary["confusion"]) == 7
            assert 0.0 <= summary["macro_f1"] <= 1.0
    assert results["best"]["PrivateTest"]["plain"]["images"] == 21
    log = (run_dir / "log.txt").read_text()
    assert "multiply-adds" in log
    assert "M parameters without the auxiliary head" in log
    assert (run_dir / "confusion_test.png").stat().st_size > 1000


def test_original_command_line_parses():
    args = train_FER2013.get_args_parser().parse_args(
        "--batch_size 24 --learning_rate 0.025 --layers 12 --auxiliary_weight 0.4".split())
    assert (args.batch_size, args.learning_rate, args.layers, args.auxiliary_weight) == (24, 0.025, 12, 0.4)
    assert (args.epochs, args.init_channels, args.auxiliary, args.arch) == (600, 36, True, "Auto_FERNet")
    assert train_FER2013.get_args_parser().parse_args(["--auxiliary", "False"]).auxiliary is False
    assert train_FER2013.get_args_parser().parse_args(["--no-auxiliary"]).auxiliary is False


def test_searched_genotype_file_is_accepted(synthetic_h5, tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps({"genotype": genotypes.to_dict(genotypes.DARTS_V2), "epochs": 3}))
    run_dir = run(synthetic_h5, tmp_path / "run", "--epochs", "1", "--genotype", str(path))
    checkpoint = load_checkpoint(run_dir / "best.pt")
    assert checkpoint["network"]["genotype"] == genotypes.to_dict(genotypes.DARTS_V2)


def test_resume_after_an_interruption_matches_an_uninterrupted_run(synthetic_h5, tmp_path, monkeypatch):
    whole = run(synthetic_h5, tmp_path / "whole", "--epochs", "3")

    calls = {"n": 0}
    original = fer_training.train_one_epoch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(fer_training, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(synthetic_h5, tmp_path / "parts", "--epochs", "3")
    monkeypatch.setattr(fer_training, "train_one_epoch", original)
    assert load_checkpoint(tmp_path / "parts" / "last.pt")["epoch"] == 2
    args = train_FER2013.get_args_parser().parse_args(["--resume", str(tmp_path / "parts"), "--no-progress"])
    resumed = train_FER2013.main(args)

    a = load_checkpoint(whole / "last.pt")
    b = load_checkpoint(resumed / "last.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    rows_a = list(csv.DictReader((whole / "metrics.csv").open()))
    rows_b = list(csv.DictReader((resumed / "metrics.csv").open()))
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]


def test_best_checkpoint_selected_on_validation(synthetic_h5, tmp_path, monkeypatch):
    # Validation peaks at epoch 1, test at epoch 2: best.pt must come from epoch 1.
    accuracy = {"PublicTest": [0.2, 0.9, 0.5], "PrivateTest": [0.1, 0.3, 0.95]}
    seen = {"PublicTest": 0, "PrivateTest": 0}
    original = fer_training.predict

    def scripted(model, batches, **kwargs):
        name = "PublicTest" if batches is data_holder["data"].evaluation["PublicTest"] else "PrivateTest"
        real = original(model, batches, **kwargs)
        epoch = seen[name]
        seen[name] += 1
        if epoch >= len(accuracy[name]):  # the final report after training
            return real
        n = len(real.labels)
        correct = round(accuracy[name][epoch] * n)
        probs = torch.zeros(n, 7)
        probs[torch.arange(n), real.labels] = 1.0
        probs[correct:] = torch.roll(probs[correct:], 1, dims=1)
        return Predictions(probs, real.labels, real.indices)

    data_holder = {}
    original_load = fer_training.load_fer_data

    def capture(*args, **kwargs):
        data_holder["data"] = original_load(*args, **kwargs)
        return data_holder["data"]

    monkeypatch.setattr(train_FER2013, "load_fer_data", capture)
    monkeypatch.setattr(fer_training, "predict", scripted)
    run_dir = run(synthetic_h5, tmp_path / "run", "--epochs", "3")
    best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] == 2
    assert best["state"]["best_epoch"] == 1
    log = (run_dir / "log.txt").read_text()
    assert "best PublicTest accuracy 90.48% at epoch 1" in log


def test_evaluate_only_reports_a_checkpoint(synthetic_h5, tmp_path):
    trained = run(synthetic_h5, tmp_path / "run", "--epochs", "1")
    out = run(synthetic_h5, tmp_path / "eval", "--evaluate", str(trained / "best.pt"), "--tta", "tencrop")
    results = json.loads((out / "results.json").read_text())
    assert results["evaluated"]["epoch"] == 0
    assert set(results["evaluated"]["PrivateTest"]) == {"plain", "tencrop"}
    assert not (out / "last.pt").exists()


def test_bf16_autocast_trains_on_the_cpu(synthetic_h5, tmp_path):
    run_dir = run(synthetic_h5, tmp_path / "run", "--epochs", "1", "--amp", "bf16", "--no-channels_last")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert float(rows[0]["train_loss"]) > 0


def test_real_fer2013_tiny_run(tmp_path):
    data = real_file("fer2013.h5")
    run_dir = run(data, tmp_path / "run", "--epochs", "1", "--subset", "140", "--no-test_every_epoch")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["best"]["PrivateTest"]["plain"]["images"] == 3589
    assert results["test_images_in_training"] > 0
    fresh = results["best"]["PrivateTest_not_in_Training"]["plain"]["images"]
    assert fresh == 3589 - results["test_images_in_training"]


@pytest.mark.parametrize("flag, value, message", [
    ("--genotype", "missing.json", "--genotype .*missing.json: genotype file .* not found"),
    ("--arch", "NoSuchCell", "--arch NoSuchCell: unknown genotype"),
    ("--evaluate", "missing.pt", "--evaluate: checkpoint .*missing.pt not found"),
])
def test_bad_cell_or_checkpoint_flag_is_named(synthetic_h5, tmp_path, flag, value, message):
    if value.endswith((".json", ".pt")):
        value = str(tmp_path / value)
    with pytest.raises(SystemExit, match=message):
        run(synthetic_h5, tmp_path / "run", "--epochs", "1", flag, value)
    assert not (tmp_path / "run").exists()
