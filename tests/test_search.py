"""End-to-end tests of train_search.py on tiny synthetic and real data."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import train_search
from dataloader.fer2013 import load_fer2013
from dataloader.splits import stratified_split, stratified_subset
from dataloader.synthetic import make_fer2013_h5
from NAS import genotypes
from NAS.model_search import UNDECIDED
from tests.conftest import real_file
from tools.checkpoint import load_checkpoint

# A search that makes all 16 decisions in 8 epochs: one decision per cell type and epoch.
TINY = ["--init_channels", "4", "--layers", "3", "--batch_size", "8", "--batch_increase", "2",
        "--warmup_dec_epoch", "0", "--decision_freq", "1", "--post_train", "0", "--no-progress",
        "--report_freq", "0", "--device", "cpu", "--arch_learning_rate", "3e-3", "--use_history"]


@pytest.fixture(scope="module")
def synthetic_h5(tmp_path_factory):
    return make_fer2013_h5(tmp_path_factory.mktemp("data") / "fer.h5", n_train=140, n_public=14, n_private=14)


def run_search(data, run_dir, *extra):
    args = train_search.get_args_parser().parse_args(["--data", str(data), "--save", str(run_dir), *TINY, *extra])
    return train_search.main(args)


def test_tiny_search_makes_all_decisions(synthetic_h5, tmp_path):
    run_dir = run_search(synthetic_h5, tmp_path / "run", "--subset", "42", "--post_val")
    result = json.loads((run_dir / "genotype.json").read_text())
    genotype = genotypes.validate(result["genotype"])
    assert result["undecided_edges"] == 0
    assert len(result["decisions"]) == 16
    assert sorted(d["cell_type"] for d in result["decisions"]) == ["normal"] * 8 + ["reduce"] * 8
    assert genotypes.load(run_dir / "genotype.json") == genotype

    with (run_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(r["epoch"]) for r in rows] == list(range(8))
    assert [int(r["batch_size"]) for r in rows] == [8 + 2 * k for k in range(8)]
    assert all(r["arch_eval_acc"] for r in rows)
    def reject_constant(name):
        raise ValueError(f"arch_weights.jsonl contains {name}, which is not valid JSON")

    lines = (run_dir / "arch_weights.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=reject_constant) for line in lines]
    assert len(records) == 8
    assert len(records[0]["weights"]["normal"]) == 14
    assert len(records[0]["scores"]["reduce"]) == 14
    assert all((run_dir / name).exists() for name in ("log.txt", "args.json", "last.pt"))

    checkpoint = load_checkpoint(run_dir / "last.pt", kind="search")
    assert checkpoint["epoch"] == 8
    assert UNDECIDED not in checkpoint["decisions"]["normal"]
    assert checkpoint["genotype"] == genotypes.to_dict(genotype)


def test_search_rejects_too_few_epochs(synthetic_h5, tmp_path):
    with pytest.raises(SystemExit, match="too short"):
        run_search(synthetic_h5, tmp_path / "run", "--epochs", "3")


def test_resumed_search_matches_uninterrupted(synthetic_h5, tmp_path, monkeypatch):
    straight = run_search(synthetic_h5, tmp_path / "straight", "--subset", "28")
    reference = load_checkpoint(straight / "last.pt")

    # Interrupt the second run during its fourth epoch, as Ctrl-C would.
    original = train_search.search_one_epoch
    calls = {"count": 0}

    def interrupted(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_search, "search_one_epoch", interrupted)
    with pytest.raises(SystemExit) as interrupt:
        run_search(synthetic_h5, tmp_path / "resumed", "--subset", "28")
    assert interrupt.value.code == 130
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 3
    hint = f"continue with: python train_search.py --resume {tmp_path / 'resumed'}"
    assert hint in (tmp_path / "resumed" / "log.txt").read_text()
    monkeypatch.setattr(train_search, "search_one_epoch", original)

    resume_args = train_search.get_args_parser().parse_args(
        ["--resume", str(tmp_path / "resumed"), "--data", str(synthetic_h5), "--no-progress", "--device", "cpu"])
    resumed = train_search.main(resume_args)
    assert "3 epochs done, continuing with epoch 3" in (resumed / "log.txt").read_text()
    final = load_checkpoint(resumed / "last.pt")
    for name, value in reference["model"].items():
        if name.startswith("alphas"):
            assert torch.equal(value, final["model"][name]), name
    assert final["decisions"] == reference["decisions"]
    assert final["genotype"] == reference["genotype"]
    with (resumed / "metrics.csv").open() as file:
        assert [int(r["epoch"]) for r in csv.DictReader(file)] == list(range(8))

    # Resuming the finished run trains no further epoch and logs why.
    train_search.main(resume_args)
    assert load_checkpoint(resumed / "last.pt")["epoch"] == 8
    assert "already finished all 8 epochs" in (resumed / "log.txt").read_text()


def test_search_split_never_touches_test_splits(synthetic_h5):
    data = load_fer2013(synthetic_h5)
    training = data["Training"]
    pool = stratified_subset(training.labels, 70, seed=2)
    weight_part, arch_part = stratified_split(training.labels[pool], 0.5, seed=2)
    searched = set(pool[weight_part].tolist()) | set(pool[arch_part].tolist())
    assert not set(pool[weight_part].tolist()) & set(pool[arch_part].tolist())
    # Indices refer to Training rows only; the images themselves must not be test images.
    train_bytes = {training.pixels[i].numpy().tobytes() for i in searched}
    for split in ("PublicTest", "PrivateTest"):
        test_bytes = {img.numpy().tobytes() for img in data[split].pixels}
        assert not train_bytes & test_bytes


def test_search_reads_only_training(synthetic_h5, tmp_path, monkeypatch):
    requested = []
    original = train_search.load_fer2013

    def spy(path, splits=("Training", "PublicTest", "PrivateTest")):
        requested.append(tuple(splits))
        return original(path, splits=splits)

    monkeypatch.setattr(train_search, "load_fer2013", spy)
    run_search(synthetic_h5, tmp_path / "run", "--subset", "21", "--warmup_dec_epoch", "0", "--epochs", "8")
    assert requested == [("Training",)]


def test_search_on_real_fer2013_subset(tmp_path):
    data = real_file("fer2013.h5")
    run_dir = run_search(data, tmp_path / "real", "--subset", "56")
    result = json.loads((run_dir / "genotype.json").read_text())
    assert result["undecided_edges"] == 0
    genotypes.validate(result["genotype"])
    log = (run_dir / "log.txt").read_text()
    assert "28709 images" in log or "56 Training images" in log


def test_recompute_leaves_search_unchanged(synthetic_h5, tmp_path):
    runs = {flag: run_search(synthetic_h5, tmp_path / flag, "--subset", "42", flag)
            for flag in ("--recompute", "--no-recompute")}
    assert json.loads((runs["--no-recompute"] / "args.json").read_text())["recompute"] is False
    states = {flag: load_checkpoint(run / "last.pt", kind="search") for flag, run in runs.items()}
    assert states["--recompute"]["decisions"] == states["--no-recompute"]["decisions"]
    for key, value in states["--recompute"]["model"].items():
        assert torch.allclose(value.float(), states["--no-recompute"]["model"][key].float(), atol=1e-4), key
