"""Tests of the analysis and visualisation tools: vis_cell, plot_search, plot_curves, correlation,
predict and compare_seeds."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train_FER2013
import train_search
from dataloader.synthetic import make_fer2013_h5
from NAS import genotypes
from NAS.model_search import EDGES, PRUNED, UNDECIDED
from NAS.operations import PRIMITIVES
from tests.conftest import ROOT, real_file
from tools import compare_seeds, correlation, plot_curves, plot_search, predict, vis_cell
from tools.engine import ten_crop
from tools.experiment import MetricsCSV, write_json
from tools.fer_training import METRIC_FIELDS as RETRAIN_FIELDS
from tools.modelio import load_network

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]


def run_tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a tool as a user would, with one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# Fixture writers: run directories in the formats train_search.py and train_FER2013.py write.

# (epoch, cell type, edge, state): the decisions of the fixture search, pruned edges included.
SEARCH_DECISIONS = [
    (2, "normal", 0, 4),  # node 0 <- c_{k-2}: sep_conv_3x3
    (3, "normal", 1, 9),  # node 0 <- c_{k-1}: conv_1x1
    (3, "reduce", 5, 1),  # node 2 <- c_{k-2}: max_pool_3x3
    (4, "normal", 2, 8),  # node 1 <- c_{k-2}: ghost
    (5, "normal", 4, 3),  # node 1 <- node 0: skip_connect; prunes edge 3
    (5, "normal", 3, PRUNED),
]


def write_search_run(run_dir: Path, epochs: int = 7, arch_acc: float = 30.0) -> Path:
    """Write arch_weights.jsonl, metrics.csv and genotype.json as train_search.py does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    decisions = {cell: [UNDECIDED] * EDGES for cell in ("normal", "reduce")}
    lines = []
    metrics = MetricsCSV(run_dir / "metrics.csv", train_search.METRIC_FIELDS)
    for epoch in range(epochs):
        record = {"epoch": epoch, "weights": {}, "scores": {}, "decisions": {}, "distance_from_uniform": {}}
        for cell in ("normal", "reduce"):
            logits = rng.normal(0, 0.05 * (epoch + 1), size=(EDGES, len(PRIMITIVES)))
            weights = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            record["weights"][cell] = weights.tolist()
            record["scores"][cell] = rng.random(EDGES).tolist()
            undecided = [e for e in range(EDGES) if decisions[cell][e] == UNDECIDED]
            record["distance_from_uniform"][cell] = (
                {"max_weight": float(weights[undecided].max()), "mean_l1_from_uniform": 0.01} if undecided
                else {"max_weight": None, "mean_l1_from_uniform": None})
            for decision_epoch, decision_cell, edge, state in SEARCH_DECISIONS:
                if decision_epoch == epoch and decision_cell == cell:
                    decisions[cell][edge] = state
            record["decisions"][cell] = list(decisions[cell])
        record["genotype"] = genotypes.to_dict(genotypes.DARTS_V2)
        lines.append(json.dumps(record))
        metrics.append({"epoch": epoch, "lr": 0.025 * (1 - epoch / epochs), "batch_size": 32, "train_loss": 1.9,
                        "train_acc": 20.0 + epoch, "arch_loss": 1.95, "arch_acc": arch_acc - epochs + 1 + epoch,
                        "arch_eval_acc": "", "decisions": "", "seconds": 1.0, "images_per_second": 10.0})
    (run_dir / "arch_weights.jsonl").write_text("".join(line + "\n" for line in lines))
    write_json({"genotype": genotypes.to_dict(genotypes.DARTS_V2), "decisions": [], "epochs": epochs,
                "undecided_edges": 0, "args": {}}, run_dir / "genotype.json")
    return run_dir


def write_retrain_run(run_dir: Path, val: list[float], test: list[float | str], *, results: dict | None = None,
                      args: dict | None = None) -> Path:
    """Write metrics.csv (and results.json, args.json when given) as train_FER2013.py does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsCSV(run_dir / "metrics.csv", RETRAIN_FIELDS)
    for epoch, (val_acc, test_acc) in enumerate(zip(val, test)):
        metrics.append({"epoch": epoch, "lr": 0.025 / (epoch + 1), "drop_path_prob": 0.0, "train_loss": 2.0 - 0.1 * epoch,
                        "train_acc": 30.0 + 5 * epoch, "val_acc": val_acc, "test_acc": test_acc,
                        "seconds": 1.0, "images_per_second": 100.0})
    if results is not None:
        write_json(results, run_dir / "results.json")
    if args is not None:
        write_json(args, run_dir / "args.json")
    return run_dir


def results_json(private: float, public: float, tencrop: tuple[float, float] | None = None, epoch: int = 3) -> dict:
    """Return a results.json body with the best checkpoint's accuracies."""
    entry = {"checkpoint": "best.pt", "epoch": epoch,
             "PublicTest": {"plain": {"accuracy": public}}, "PrivateTest": {"plain": {"accuracy": private}}}
    if tencrop is not None:
        entry["PrivateTest"]["tencrop"] = {"accuracy": tencrop[0]}
        entry["PublicTest"]["tencrop"] = {"accuracy": tencrop[1]}
    return {"protocol": "checkpoint selected on PublicTest accuracy; PrivateTest is the test set", "best": entry}


# vis_cell

@pytest.mark.parametrize("name", genotypes.names())
def test_vis_cell_draws_every_named_genotype(name, tmp_path):
    written = vis_cell.draw_genotype(genotypes.load(name), tmp_path / name, name)
    expected = {tmp_path / f"{name}_{cell}.{ext}" for cell in ("normal", "reduce") for ext in ("png", "pdf")}
    assert set(written) == expected
    for path in expected:
        assert path.stat().st_size > 5000, path
    assert (tmp_path / f"{name}_normal.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / f"{name}_reduce.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("name", genotypes.names())
def test_vis_cell_labels_overlap_nothing(name):
    genotype = genotypes.load(name)
    for cell in ("normal", "reduce"):
        drawing = vis_cell.draw_cell(getattr(genotype, cell), getattr(genotype, f"{cell}_concat"), name)
        assert len(drawing.labels) == 8
        assert vis_cell.overlaps(drawing) == []


# Every node reads the same input twice, or every edge leaves the same node.
CROWDED_CELLS = {
    "all_from_c_k-1_twice": [(op, 1) for op in ("sep_conv_3x3", "skip_connect", "sep_conv_5x5", "dil_conv_3x3",
                                                "conv_1x1", "max_pool_3x3", "ghost", "avg_pool_3x3")],
    "all_from_c_k-2": [("sep_conv_3x3", 0), ("dil_conv_5x5", 0), ("conv_3x3", 0), ("ghost", 0),
                       ("max_pool_3x3", 0), ("avg_pool_3x3", 0), ("skip_connect", 0), ("conv_1x1", 0)],
    "node_0_fans_out": [("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("sep_conv_5x5", 2), ("dil_conv_3x3", 2),
                        ("conv_1x1", 2), ("max_pool_3x3", 2), ("ghost", 2), ("avg_pool_3x3", 2)],
}


@pytest.mark.parametrize("case", sorted(CROWDED_CELLS))
def test_vis_cell_crowded_cells_stay_readable(case):
    drawing = vis_cell.draw_cell(CROWDED_CELLS[case], [2, 3, 4, 5], case)
    assert sorted(text.get_text() for text in drawing.labels) == sorted(op for op, _ in CROWDED_CELLS[case])
    assert vis_cell.overlaps(drawing) == []


def test_vis_cell_parallel_edges_curve_apart():
    edges = vis_cell.cell_edges(CROWDED_CELLS["all_from_c_k-1_twice"], [2, 3, 4, 5])
    into_node_0 = [edge.rad for edge in edges if edge.target == 2]
    assert len(into_node_0) == 2
    assert into_node_0[0] * into_node_0[1] < 0


def test_vis_cell_rejects_an_invalid_genotype(tmp_path):
    bad = genotypes.to_dict(genotypes.DARTS_V2)
    bad["normal"][3] = ["sep_conv_9x9", 1]
    with pytest.raises(genotypes.GenotypeError, match="sep_conv_9x9"):
        vis_cell.draw_genotype(bad, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []

    path = tmp_path / "genotype.json"
    write_json({"genotype": bad}, path)
    result = run_tool("tools/vis_cell.py", str(path), "--out", str(tmp_path / "cell"))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "sep_conv_9x9" in result.stderr
    assert not (tmp_path / "cell_normal.png").exists()


def test_vis_cell_combined_stacks_both_cells(tmp_path):
    import matplotlib.image

    genotype = genotypes.Auto_FERNet
    written = vis_cell.draw_genotype(genotype, tmp_path / "cell", "Auto_FERNet", ["png"])
    combined = vis_cell.draw_combined(genotype, tmp_path / "cells.png", "Auto_FERNet")
    heights = [matplotlib.image.imread(path).shape[0] for path in written]
    image = matplotlib.image.imread(combined)
    assert image.shape[0] == sum(heights)
    assert image.shape[1] == max(matplotlib.image.imread(path).shape[1] for path in written)


def test_vis_cell_module_command_reads_genotype_json(tmp_path):
    run_dir = write_search_run(tmp_path / "search-x")
    result = run_tool("-m", "tools.vis_cell", str(run_dir / "genotype.json"), "--out", str(tmp_path / "cell"),
                      "--formats", "png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cell_normal.png").stat().st_size > 5000
    assert (tmp_path / "cell_reduce.png").stat().st_size > 5000
    assert not (tmp_path / "cell_normal.pdf").exists()


# plot_search

def test_search_history_reads_weights_and_decisions(tmp_path):
    history = plot_search.read_search_history(write_search_run(tmp_path / "search"))
    assert history.epochs == list(range(7))
    assert history.operations == list(PRIMITIVES)
    assert history.weights["normal"].shape == (7, EDGES, len(PRIMITIVES))
    assert np.allclose(history.weights["reduce"].sum(-1), 1.0)
    normal = history.decision_epochs("normal")
    assert normal[0] == (2, 4)
    assert normal[1] == (3, 9)
    assert normal[2] == (4, 8)
    assert normal[3] == (5, PRUNED)
    assert normal[4] == (5, 3)
    assert normal[5:] == [None] * (EDGES - 5)
    reduce = history.decision_epochs("reduce")
    assert reduce[5] == (3, 1)
    assert sum(d is not None for d in reduce) == 1


def test_plot_search_writes_png(tmp_path):
    run_dir = write_search_run(tmp_path / "search")
    result = run_tool("tools/plot_search.py", str(run_dir), "--out", str(tmp_path / "weights.png"))
    assert result.returncode == 0, result.stderr
    assert "7 epochs" in result.stdout
    data = (tmp_path / "weights.png").read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 50_000


def test_search_history_skips_unfinished_last_line(tmp_path, caplog):
    run_dir = write_search_run(tmp_path / "search", epochs=3)
    with (run_dir / "arch_weights.jsonl").open("a") as file:
        file.write('{"epoch": 3, "weights": {"normal": [[0.1, 0.')
    history = plot_search.read_search_history(run_dir / "arch_weights.jsonl")
    assert history.epochs == [0, 1, 2]
    assert "unfinished last line" in caplog.text


def test_search_history_reads_nan_distances(tmp_path):
    # Older train_search.py versions wrote NaN, not null, once every edge was decided.
    run_dir = write_search_run(tmp_path / "search", epochs=2)
    path = run_dir / "arch_weights.jsonl"
    path.write_text(path.read_text().replace('"mean_l1_from_uniform": 0.01', '"mean_l1_from_uniform": NaN'))
    assert plot_search.read_search_history(run_dir).epochs == [0, 1]


def test_search_history_rejects_bad_files(tmp_path):
    with pytest.raises(plot_search.SearchLogError, match="not found"):
        plot_search.read_search_history(tmp_path)
    run_dir = write_search_run(tmp_path / "search", epochs=3)
    path = run_dir / "arch_weights.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{broken", lines[2]]) + "\n")
    with pytest.raises(plot_search.SearchLogError, match="line 2 is not valid JSON"):
        plot_search.read_search_history(run_dir)
    record = json.loads(lines[0])
    record["weights"]["normal"] = record["weights"]["normal"][:5]
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(plot_search.SearchLogError, match="line 1: normal weights must be 14 rows"):
        plot_search.read_search_history(run_dir)
    path.write_text("")
    with pytest.raises(plot_search.SearchLogError, match="no records yet"):
        plot_search.read_search_history(run_dir)


# plot_curves

def test_read_metrics_drops_empty_cells(tmp_path):
    run_dir = write_retrain_run(tmp_path / "retrain", val=[40.0, 45.0, 44.0], test=[39.0, "", 43.0])
    metrics = plot_curves.read_metrics(run_dir)
    assert metrics.name == "retrain"
    assert metrics.series("val_acc") == ([0.0, 1.0, 2.0], [40.0, 45.0, 44.0])
    assert metrics.series("test_acc") == ([0.0, 2.0], [39.0, 43.0])
    assert metrics.series("relabeled") == ([], [])
    assert metrics.series("arch_acc") == ([], [])


def test_plot_curves_panels_follow_the_columns(tmp_path):
    search = plot_curves.read_metrics(write_search_run(tmp_path / "search"))
    retrain = plot_curves.read_metrics(write_retrain_run(tmp_path / "retrain", [40.0], [""]))
    panels = plot_curves.panel_columns([search, retrain])
    assert set(panels["accuracy (%)"]) == {"train_acc", "arch_acc", "val_acc"}
    assert set(panels["loss"]) == {"train_loss", "arch_loss"}
    assert panels["learning rate"] == ["lr"]


def test_plot_curves_draws_search_and_retrain_runs(tmp_path):
    search = write_search_run(tmp_path / "a" / "run")
    retrain = write_retrain_run(tmp_path / "b" / "run", val=[40.0, 45.0], test=["", ""])
    result = run_tool("-m", "tools.plot_curves", str(search), str(retrain / "metrics.csv"),
                      "--out", str(tmp_path / "curves.png"))
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 30_000


def test_plot_curves_many_runs_legend_outside(tmp_path):
    runs = [plot_curves.read_metrics(write_retrain_run(tmp_path / f"r{i}", [40.0, 41.0], [39.0, 40.0]))
            for i in range(3)]
    narrow = plot_curves.plot_curves(runs[:1], tmp_path / "one.png")
    wide = plot_curves.plot_curves(runs, tmp_path / "three.png")
    # A PNG header stores the width as a 4-byte big-endian integer at offset 16.
    width = lambda path: int.from_bytes(path.read_bytes()[16:20], "big")
    assert width(wide) > width(narrow)


def test_plot_curves_names_runs_apart():
    assert plot_curves.unique_names(["/x/a/run", "/x/b/run"]) == ["a/run", "b/run"]
    assert plot_curves.unique_names(["/x/a", "/x/b"]) == ["a", "b"]


def test_plot_curves_reports_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_curves.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.png")])
    assert exit_info.value.code == 2
    assert "nowhere" in capsys.readouterr().err


# correlation

def test_correlation_of_identical_rankings():
    result = correlation.rank_correlation([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert result.kendall_tau == pytest.approx(1.0)
    assert result.spearman_rho == pytest.approx(1.0)
    # Exact two-sided Kendall test: only 1 of the 5! orders is as extreme in each direction.
    assert result.kendall_p == pytest.approx(2 / 120)
    assert result.spearman_p == pytest.approx(0.0, abs=1e-9)


def test_correlation_of_reversed_rankings():
    result = correlation.rank_correlation([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert result.kendall_tau == pytest.approx(-1.0)
    assert result.spearman_rho == pytest.approx(-1.0)
    assert result.kendall_p == pytest.approx(2 / 120)


def test_correlation_with_a_tie_by_hand():
    # Of the 10 pairs, 8 are concordant, (B, C) is discordant and (D, E) is tied in y only,
    # so tau-b = (8 - 1) / sqrt(10 * 9).
    # Spearman ranks y as 1, 3, 2, 4.5, 4.5. Against x ranks 1..5, the deviations from the mean 3
    # give sum(dx dy) = 8.5, sum(dx^2) = 10 and sum(dy^2) = 9.5, so rho = 8.5 / sqrt(95).
    result = correlation.rank_correlation([1, 2, 3, 4, 5], [1, 3, 2, 4, 4])
    assert result.kendall_tau == pytest.approx(7 / math.sqrt(90))
    assert result.spearman_rho == pytest.approx(8.5 / math.sqrt(95))
    assert 0.0 < result.kendall_p < 1.0
    assert 0.0 < result.spearman_p < 1.0


@pytest.mark.parametrize("x, y, message", [
    ([1, 2], [1, 2], "at least 3 pairs"),
    ([1, 2, 3], [4, 4, 4], "constant"),
    ([1, 2, 3], [1, 2], "x has 3 values but y has 2"),
    ([1, 2, float("nan")], [1, 2, 3], "finite"),
])
def test_correlation_rejects_unusable_input(x, y, message):
    with pytest.raises(correlation.CorrelationError, match=message):
        correlation.rank_correlation(x, y)


def test_correlation_command_reads_csv(tmp_path):
    path = tmp_path / "archs.csv"
    path.write_text("arch,search,test\nA,1,1\nB,2,3\nC,3,2\nD,4,4\nE,5,4\nF,,7\n")
    result = run_tool("tools/correlation.py", "--csv", str(path), "--x", "search", "--y", "test", "--name", "arch")
    assert result.returncode == 0, result.stderr
    assert "line 7: search empty; row skipped" in result.stderr
    out = result.stdout
    assert "n = 5" in out
    assert f"Kendall tau-b = +{7 / math.sqrt(90):.4f} (p = " in out
    assert f"Spearman rho  = +{8.5 / math.sqrt(95):.4f} (p = " in out
    assert "\nB " in out


def test_correlation_command_rejects_bad_csv(tmp_path, capsys):
    path = tmp_path / "archs.csv"
    path.write_text("arch,search,test\nA,1,1\nB,two,3\nC,3,2\n")
    with pytest.raises(SystemExit) as exit_info:
        correlation.main(["--csv", str(path), "--x", "search", "--y", "test"])
    assert exit_info.value.code == 2
    assert "line 3: search = 'two' is not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        correlation.main(["--csv", str(path), "--x", "search", "--y", "missing"])
    assert "no column 'missing'" in capsys.readouterr().err


def test_correlation_reads_run_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = []
    for index, (search_acc, private, public) in enumerate([(30.0, 60.0, 61.0), (32.0, 58.0, 59.5),
                                                             (34.0, 65.0, 64.0)]):
        search = write_search_run(Path(f"runs/search-{index}"), arch_acc=search_acc)
        runs.append(write_retrain_run(Path(f"runs/retrain-{index}"), val=[50.0, 55.0], test=[49.0, 54.0],
                                      results=results_json(private, public, tencrop=(private + 1, public + 1)),
                                      args={"arch": "Auto_FERNet", "genotype": str(search / "genotype.json")}))
    assert correlation.run_measure(runs[0], "search_acc") == 30.0
    assert correlation.run_measure(Path("runs/search-2"), "search_acc") == 34.0
    assert correlation.run_measure(runs[1], "test_acc") == 58.0
    assert correlation.run_measure(runs[1], "val_acc") == 59.5
    assert correlation.run_measure(runs[1], "test_acc", "tencrop") == 59.0
    pairs = correlation.read_run_pairs(runs, "search_acc", "test_acc")
    assert [(p.x, p.y) for p in pairs] == [(30.0, 60.0), (32.0, 58.0), (34.0, 65.0)]
    with pytest.raises(correlation.CorrelationError, match="without --post_val"):
        correlation.run_measure(runs[0], "search_eval_acc")


def test_correlation_metrics_fallback(tmp_path):
    run_dir = write_retrain_run(tmp_path / "retrain", val=[50.0, 57.0, 57.0, 55.0], test=[48.0, 53.0, 56.0, 54.0])
    assert correlation.run_measure(run_dir, "val_acc") == 57.0
    # The first epoch with the highest val_acc, as best.pt is chosen.
    assert correlation.run_measure(run_dir, "test_acc") == 53.0
    with pytest.raises(correlation.CorrelationError, match="--view plain"):
        correlation.run_measure(run_dir, "test_acc", "tencrop")
    untested = write_retrain_run(tmp_path / "untested", val=[50.0], test=[""])
    with pytest.raises(correlation.CorrelationError, match="no test_acc"):
        correlation.run_measure(untested, "test_acc")
    named = write_retrain_run(tmp_path / "named", val=[50.0], test=[50.0], args={"arch": "Auto_FERNet",
                                                                                  "genotype": ""})
    with pytest.raises(correlation.CorrelationError, match="named genotype 'Auto_FERNet'"):
        correlation.run_measure(named, "search_acc")


# predict

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A retraining run of a tiny network (C=4, 3 cells) for one epoch on synthetic data."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_fer2013_h5(root / "fer.h5", n_train=48, n_public=14, n_private=14)
    args = train_FER2013.get_args_parser().parse_args([
        "--data", str(data), "--save", str(root / "run"), "--init_channels", "4", "--layers", "3", "--epochs", "1",
        "--batch_size", "16", "--eval_batch_size", "32", "--device", "cpu", "--no-progress", "--report_freq", "0",
        "--tta", "tencrop"])
    return train_FER2013.main(args)


def write_images(folder: Path) -> dict[str, Path]:
    """Write images of several sizes, modes and formats, one unreadable file and one non-image file."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nested" / "deeper").mkdir(parents=True)
    grey = Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8), "L")
    rgb = Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8), "RGB")
    rgba = Image.fromarray(rng.integers(0, 256, (90, 31, 4), dtype=np.uint8), "RGBA")
    paths = {
        "grey_png": folder / "grey.png",
        "rgb_jpeg": folder / "nested" / "rgb.jpg",
        "rgba_png": folder / "nested" / "rgba.png",
        "palette_png": folder / "nested" / "deeper" / "palette.PNG",
        "grey_jpeg": folder / "big_grey.jpeg",
    }
    grey.save(paths["grey_png"])
    rgb.save(paths["rgb_jpeg"], quality=90)
    rgba.save(paths["rgba_png"])
    rgb.resize((64, 64)).quantize(colors=16).save(paths["palette_png"])
    grey.resize((500, 333)).save(paths["grey_jpeg"], quality=90)
    (folder / "nested" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_prepare_image_modes_and_sizes(tmp_path):
    paths = write_images(tmp_path)
    modes = {name: Image.open(path).mode for name, path in paths.items()}
    assert modes == {"grey_png": "L", "rgb_jpeg": "RGB", "rgba_png": "RGBA", "palette_png": "P", "grey_jpeg": "L"}
    for path in paths.values():
        pixels, face = predict.prepare_image(predict.read_grey(path), 48)
        assert pixels.shape == (48, 48)
        assert pixels.dtype == np.uint8
        assert face == ""


def test_to_grey_composites_transparency_onto_white():
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert (predict.to_grey(transparent) == 255).all()
    opaque_red = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    assert (predict.to_grey(opaque_red) == 76).all()  # ITU-R 601-2 luma of pure red
    sixteen_bit = Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16))
    assert sixteen_bit.mode == "I;16"
    assert (predict.to_grey(sixteen_bit) == 255).all()


def test_centre_square_of_wide_and_tall_boxes():
    assert predict.centre_square((0, 0, 100, 60)) == (20, 0, 80, 60)
    assert predict.centre_square((0, 0, 31, 90)) == (0, 29, 31, 60)


def test_predict_classifies_files_and_folders(tiny_run, tmp_path, capsys):
    paths = write_images(tmp_path / "images")
    out = tmp_path / "out" / "predictions.csv"
    status = predict.main([str(tiny_run / "best.pt"), str(tmp_path / "images"), str(tmp_path / "missing.png"),
                           "--out", str(out), "--device", "cpu", "--batch_size", "2"])
    captured = capsys.readouterr()
    assert status == 1
    assert "broken.jpg" in captured.err
    assert "missing.png: file or folder not found" in captured.err
    assert "notes.txt" not in captured.err + captured.out
    assert "classified 5 image(s), 2 failed" in captured.out

    rows = list(csv.DictReader(out.open()))
    assert sorted(Path(row["path"]) for row in rows) == sorted(paths.values())
    for row in rows:
        probabilities = [float(row[f"p_{name}"]) for name in CLASSES]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert row["prediction"] == CLASSES[int(np.argmax(probabilities))]
        assert float(row["probability"]) == max(probabilities)
        assert row["face"] == ""
        assert f"{row['path']}: {row['prediction']}" in captured.out


def test_predict_matches_direct_network_call(tiny_run, tmp_path):
    paths = write_images(tmp_path / "images")
    model, checkpoint = load_network(tiny_run / "best.pt")
    preprocessing = predict.Preprocessing.from_checkpoint(checkpoint, "best.pt")
    assert (preprocessing.eval_size, preprocessing.train_size) == (48, 44)
    pixels = np.array(Image.open(paths["grey_png"]), dtype=np.uint8)
    x = torch.from_numpy(pixels).float().div(255).reshape(1, 1, 48, 48)
    with torch.no_grad():
        plain = torch.softmax(model(x), 1)[0]
        tencrop = torch.stack([torch.softmax(model(view), 1)[0] for view in ten_crop(x, 44)]).mean(0)
    for tta, expected in (("none", plain), ("tencrop", tencrop)):
        results = list(predict.classify(model, preprocessing, [paths["grey_png"]], device=torch.device("cpu"),
                                        tta=tta))
        assert torch.allclose(torch.tensor(results[0].probabilities), expected, atol=1e-5), tta


def test_predict_script_runs_from_root(tiny_run, tmp_path):
    paths = write_images(tmp_path / "images")
    out = tmp_path / "p.csv"
    result = run_tool("tools/predict.py", str(tiny_run / "last.pt"), str(paths["rgb_jpeg"]), "--tta", "tencrop",
                      "--out", str(out), "--device", "cpu", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert f"{paths['rgb_jpeg']}: " in result.stdout
    assert len(list(csv.DictReader(out.open()))) == 1


def test_predict_rejects_junk_checkpoint(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tmp_path / "junk.pt"), str(tmp_path), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "junk.pt" in capsys.readouterr().err


def test_detect_face_falls_back_with_warning(tiny_run, tmp_path, capsys, caplog):
    pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (120, 160), dtype=np.uint8), "L").save(path)
    out = tmp_path / "faces.csv"
    status = predict.main([str(tiny_run / "best.pt"), str(path), "--detect_face", "--out", str(out),
                           "--device", "cpu"])
    assert status == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"no face found in {path}; classifying the whole image"]
    assert "[face not found]" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["face"] == "not found"
    whole, _ = predict.prepare_image(predict.read_grey(path), 48)
    fallback, _ = predict.prepare_image(predict.read_grey(path), 48, predict.FaceDetector())
    assert np.array_equal(whole, fallback)


def test_detect_face_finds_a_jaffe_face():
    pytest.importorskip("cv2")
    path = real_file("raw/jaffedbase/KA.HA1.29.tiff")
    grey = predict.read_grey(path)
    box = predict.FaceDetector().largest_face(grey)
    assert box is not None
    left, top, right, bottom = box
    assert right - left > grey.shape[1] // 3
    assert bottom - top > grey.shape[0] // 3


def test_detect_face_needs_opencv(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(RuntimeError, match="opencv-python-headless<5"):
        predict.FaceDetector()


# compare_seeds

def test_compare_seeds_collect_mean_and_std(tmp_path, capsys):
    runs = [
        write_retrain_run(tmp_path / "s1", [50.0], [50.0], results=results_json(60.0, 61.0, (62.0, 63.0)),
                          args={"seed": 1}),
        write_retrain_run(tmp_path / "s2", [50.0], [50.0], results=results_json(62.0, 60.0, (63.0, 61.0)),
                          args={"seed": 2}),
        write_retrain_run(tmp_path / "s3", [50.0], [50.0], results=results_json(64.0, 65.0), args={"seed": 3}),
    ]
    out = tmp_path / "seeds.csv"
    assert compare_seeds.main(["collect", *map(str, runs), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [row["run"] for row in rows] == [*map(str, runs), "mean", "std"]
    assert [row["seed"] for row in rows[:3]] == ["1", "2", "3"]
    mean, std = rows[3], rows[4]
    assert float(mean["PrivateTest_plain"]) == pytest.approx(62.0)
    assert float(std["PrivateTest_plain"]) == pytest.approx(2.0)  # sample std of 60, 62, 64
    assert float(mean["PublicTest_plain"]) == pytest.approx(62.0)
    assert float(std["PublicTest_plain"]) == pytest.approx(math.sqrt(7.0))  # deviations -1, -2, 3
    assert float(mean["PrivateTest_tencrop"]) == pytest.approx(62.5)
    assert float(std["PrivateTest_tencrop"]) == pytest.approx(math.sqrt(0.5))
    assert rows[2]["PrivateTest_tencrop"] == ""
    out_text = capsys.readouterr().out
    assert "PrivateTest plain: 62.00 \u00b1 2.00 % (n = 3)" in out_text
    assert "PrivateTest tencrop: 62.50 \u00b1 0.71 % (n = 2)" in out_text


def test_compare_seeds_collect_reads_a_real_run(tiny_run):
    result = compare_seeds.read_run(tiny_run)
    report = json.loads((tiny_run / "results.json").read_text())
    assert result.seed == 2
    assert result.epoch == report["best"]["epoch"]
    assert result.accuracies == {f"{split}_{view}": report["best"][split][view]["accuracy"]
                                 for split in ("PrivateTest", "PublicTest") for view in ("plain", "tencrop")}


def test_compare_seeds_collect_reports_unfinished_runs(tmp_path, capsys):
    good = write_retrain_run(tmp_path / "good", [50.0], [50.0], results=results_json(60.0, 61.0))
    unfinished = write_retrain_run(tmp_path / "unfinished", [50.0], [50.0])
    assert compare_seeds.main(["collect", str(good), str(unfinished), "--out", str(tmp_path / "s.csv")]) == 1
    captured = capsys.readouterr()
    assert f"{unfinished / 'results.json'} not found" in captured.err
    assert "PrivateTest plain: 60.00 \u00b1 n/a % (n = 1)" in captured.out
    with pytest.raises(compare_seeds.ResultsError, match="no 'final' checkpoint entry"):
        compare_seeds.read_run(good, tag="final")


FAKE_TRAINING = """
import argparse, json, os, time
from pathlib import Path
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
parser.add_argument("--seed", type=int)
parser.add_argument("--save")
args = parser.parse_args()
run = Path(args.save) if "/" in args.save else Path("runs") / f"retrain-{args.save}-{time.strftime('%Y%m%d-%H%M%S')}"
run.mkdir(parents=True)
(run / "args.json").write_text(json.dumps({"seed": args.seed, "epochs": args.epochs}))
accuracy = {"plain": {"accuracy": 50.0 + args.seed}}
(run / "results.json").write_text(json.dumps({"best": {"checkpoint": "best.pt", "epoch": args.epochs - 1,
    "PrivateTest": accuracy, "PublicTest": accuracy}}))
"""


@pytest.mark.parametrize("prefix", ["runs/cmp", "cmp"])
def test_compare_seeds_runs_the_command_per_seed(tmp_path, monkeypatch, capsys, prefix):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINING)
    status = compare_seeds.main(["--seeds", "1", "2", "4", "--out", prefix, "--", sys.executable, str(script),
                                 "--epochs", "2"])
    assert status == 0
    rows = list(csv.DictReader(Path(f"{prefix}.csv").open()))
    assert [row["seed"] for row in rows[:3]] == ["1", "2", "4"]
    assert [row["epoch"] for row in rows[:3]] == ["1", "1", "1"]
    assert float(rows[3]["PrivateTest_plain"]) == pytest.approx(52.3333, abs=1e-3)
    assert float(rows[4]["PrivateTest_plain"]) == pytest.approx(math.sqrt(7 / 3))
    out = capsys.readouterr().out
    assert f"--seed 4 --save {prefix}-seed4" in out
    if "/" in prefix:
        assert Path("runs/cmp-seed2/results.json").is_file()


def test_compare_seeds_stops_at_a_failing_seed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = compare_seeds.main(["--seeds", "1", "2", "--out", "runs/x", "--", sys.executable, "-c",
                                 "raise SystemExit(3)"])
    assert status == 1
    captured = capsys.readouterr()
    assert "seed 1: the command exited with status 3" in captured.err
    assert "seed 2:" not in captured.out


@pytest.mark.parametrize("command, message", [
    ([], "no command"),
    (["python", "train_FER2013.py", "--seed", "3"], "already sets --seed"),
    (["python", "train_FER2013.py", "--save=runs/a"], "already sets --save"),
])
def test_compare_seeds_rejects_commands(command, message):
    with pytest.raises(ValueError, match=message):
        compare_seeds.check_command(command)


def test_compare_seeds_script_needs_a_separator(tmp_path):
    result = run_tool("tools/compare_seeds.py", "--seeds", "1", "--out", str(tmp_path / "x"), "python", "t.py")
    assert result.returncode == 2
    assert "after '--'" in result.stderr


def write_folds_run(run: Path, seed: int, plain: float, tencrop: float | None = None, complete: bool = True) -> Path:
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"seed": seed}))
    summary = {"accuracy": {"mean": plain, "std": 5.0}, "complete": complete, "folds_run": [0, 1]}
    if tencrop is not None:
        summary["accuracy_tencrop"] = {"mean": tencrop, "std": 4.0}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_compare_seeds_collect_fold_summaries(tmp_path, capsys):
    runs = [write_folds_run(tmp_path / "a", 1, 80.0, 82.0), write_folds_run(tmp_path / "b", 2, 84.0, 83.0)]
    out = tmp_path / "folds.csv"
    assert compare_seeds.main(["collect", *map(str, runs), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert float(rows[2]["folds_plain"]) == pytest.approx(82.0)
    assert float(rows[3]["folds_plain"]) == pytest.approx(math.sqrt(8.0))
    assert float(rows[2]["folds_tencrop"]) == pytest.approx(82.5)
    assert "PrivateTest_plain" not in rows[0]
    assert "folds plain: 82.00 \u00b1 2.83 % (n = 2)" in capsys.readouterr().out


def test_compare_seeds_fold_summary_errors(tmp_path, caplog):
    zero_shot = tmp_path / "zero"
    zero_shot.mkdir()
    (zero_shot / "summary.json").write_text(json.dumps({"plain": {"accuracy": 40.0}}))
    with pytest.raises(compare_seeds.ResultsError, match="no accuracy over folds"):
        compare_seeds.read_run(zero_shot)
    partial = write_folds_run(tmp_path / "partial", 1, 70.0, complete=False)
    assert compare_seeds.read_run(partial).accuracies == {"folds_plain": 70.0}
    assert "not every fold has finished" in caplog.text


def test_compare_seeds_fills_seed_placeholder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINING + "(run / 'checkpoint.txt').write_text(args.checkpoint)\n")
    script.write_text(script.read_text().replace(
        'parser.add_argument("--save")', 'parser.add_argument("--save")\nparser.add_argument("--checkpoint")'))
    status = compare_seeds.main(["--seeds", "3", "5", "--out", "runs/ft", "--", sys.executable, str(script),
                                 "--epochs", "2", "--checkpoint", "runs/cmp-seed{seed}/best.pt"])
    assert status == 0
    assert Path("runs/ft-seed3/checkpoint.txt").read_text() == "runs/cmp-seed3/best.pt"
    assert Path("runs/ft-seed5/checkpoint.txt").read_text() == "runs/cmp-seed5/best.pt"
