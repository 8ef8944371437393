"""Tests of the FES matrix (tools.fes) and of relabelling and ensemble selection (tools.relabel)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, real_file
from dataloader.fer2013 import CLASSES, DatasetError
from tools import fes as fes_module
from tools.fes import (
    PUBLISHED_FES,
    compute_fes,
    fes_matrix,
    load_fes,
    plot_fes,
    read_votes,
    save_fes,
    select_rows,
)
from tools.relabel import RelabelCounter, greedy_select, relabel_targets

HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
          "contempt", "unknown", "NF"]
# Votes in HEADER order. Line numbers in the file are the index here plus 2.
ROWS = [
    ["Training", "fer0000000.png", "5", "0", "0", "5", "0", "0", "0", "0", "0", "0"],  # Sad-Neutral 1
    ["Training", "fer0000001.png", "8", "0", "0", "2", "0", "0", "0", "0", "0", "0"],  # Sad-Neutral 2/8
    ["Training", "", "0", "0", "0", "0", "0", "0", "0", "0", "0", "10"],  # no votes for the seven classes
    ["PublicTest", "fer0000003.png", "0", "6", "3", "0", "0", "0", "0", "1", "0", "0"],  # Happy-Surprise 3/6
    ["PrivateTest", "fer0000004.png", "0", "0", "0", "0", "4", "4", "2", "0", "0", "0"],  # Angry-Disgust 1, -Fear 1/2
    ["Training", "fer0000005.png", "0", "0", "0", "0", "3", "0", "0", "5", "2", "0"],  # one class only: adds 0
]
ANGRY, DISGUST, FEAR, HAPPY, SAD, SURPRISE, NEUTRAL = range(7)


def write_votes(path: Path, header: list[str] = HEADER, rows: list[list[str]] = ROWS) -> Path:
    path.write_text("\n".join(",".join(fields) for fields in [header, *rows]) + "\n")
    return path


def expected_matrix(pairs: dict[tuple[int, int], float]) -> np.ndarray:
    matrix = np.eye(7)
    for (a, b), value in pairs.items():
        matrix[a, b] = matrix[b, a] = value
    return matrix


# Worked out by hand from ROWS: each pair's ratios summed, divided by the number of rows.
EXPECTED_ALL = expected_matrix({
    (SAD, NEUTRAL): (1 + 2 / 8) / 6,
    (HAPPY, SURPRISE): (3 / 6) / 6,
    (ANGRY, DISGUST): 1 / 6,
    (ANGRY, FEAR): (2 / 4) / 6,
    (DISGUST, FEAR): (2 / 4) / 6,
})
EXPECTED_TRAINING = expected_matrix({(SAD, NEUTRAL): (1 + 2 / 8) / 4})


# ---------------------------------------------------------------------------------------------
# FES


def test_published_fes_properties() -> None:
    assert PUBLISHED_FES.shape == (7, 7)
    assert np.array_equal(PUBLISHED_FES, PUBLISHED_FES.T)
    assert np.array_equal(np.diag(PUBLISHED_FES), np.ones(7))
    assert PUBLISHED_FES[SAD, NEUTRAL] == 0.1384
    assert PUBLISHED_FES[ANGRY, NEUTRAL] == 0.0584
    assert PUBLISHED_FES[SURPRISE, NEUTRAL] == 0.0530
    assert PUBLISHED_FES[DISGUST, FEAR] == 0.0095


def test_read_votes_class_order(tmp_path: Path) -> None:
    usages, votes = read_votes(write_votes(tmp_path / "votes.csv"))
    assert usages == ["Training", "Training", "Training", "PublicTest", "PrivateTest", "Training"]
    assert votes.shape == (6, 7)
    # FER2013 order: Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral.
    assert votes[0].tolist() == [0, 0, 0, 0, 5, 0, 5]
    assert votes[3].tolist() == [0, 0, 0, 6, 0, 3, 0]
    assert votes[4].tolist() == [4, 4, 2, 0, 0, 0, 0]


def test_fes_hand_computed_all_rows(tmp_path: Path) -> None:
    matrix = compute_fes(write_votes(tmp_path / "votes.csv"), rows="all")
    np.testing.assert_allclose(matrix, EXPECTED_ALL, rtol=0, atol=1e-12)


def test_fes_training_rows_by_default(tmp_path: Path) -> None:
    path = write_votes(tmp_path / "votes.csv")
    np.testing.assert_allclose(compute_fes(path), EXPECTED_TRAINING, rtol=0, atol=1e-12)
    np.testing.assert_allclose(compute_fes(path, rows="training"), EXPECTED_TRAINING, rtol=0, atol=1e-12)


def test_fes_counts_rows_without_votes(tmp_path: Path) -> None:
    matrix = compute_fes(write_votes(tmp_path / "votes.csv"), rows="training")
    assert matrix[SAD, NEUTRAL] == pytest.approx(1.25 / 4)  # dropping the empty row would give 1.25 / 3


def test_fes_columns_found_by_name(tmp_path: Path) -> None:
    order = [11, 6, 2, 0, 8, 3, 10, 5, 1, 7, 4, 9]
    header = [HEADER[i] for i in order]
    rows = [[row[i] for i in order] for row in ROWS]
    shuffled = write_votes(tmp_path / "shuffled.csv", header, rows)
    assert header[:3] == ["NF", "anger", "neutral"]

    np.testing.assert_allclose(compute_fes(shuffled, rows="all"), EXPECTED_ALL, rtol=0, atol=1e-12)
    np.testing.assert_allclose(compute_fes(shuffled, rows="training"), EXPECTED_TRAINING, rtol=0, atol=1e-12)


def test_fes_header_case_and_spaces(tmp_path: Path) -> None:
    header = [name.upper() for name in HEADER]
    path = tmp_path / "votes.csv"
    path.write_text("\n".join(", ".join(fields) for fields in [header, *ROWS]) + "\n\n")
    np.testing.assert_allclose(compute_fes(path, rows="all"), EXPECTED_ALL, rtol=0, atol=1e-12)


def test_fes_matrix_vectorised_matches_loop() -> None:
    votes = np.random.default_rng(0).integers(0, 4, size=(200, 7))
    expected = np.eye(7)
    for a in range(7):
        for b in range(7):
            if a != b:
                ratios = [min(row[a], row[b]) / max(row[a], row[b]) if min(row[a], row[b]) > 0 else 0.0
                          for row in votes]
                expected[a, b] = sum(ratios) / len(votes)
    np.testing.assert_allclose(fes_matrix(votes), expected, rtol=0, atol=1e-12)


def test_fes_matrix_rejects_bad_votes() -> None:
    with pytest.raises(ValueError, match=r"expected \(N, 7\)"):
        fes_matrix(np.zeros((3, 6)))
    with pytest.raises(ValueError, match="no rows"):
        fes_matrix(np.zeros((0, 7)))
    with pytest.raises(ValueError, match="negative"):
        fes_matrix(-np.ones((2, 7)))


def test_select_rows_rejects_unknown_choice(tmp_path: Path) -> None:
    usages, votes = read_votes(write_votes(tmp_path / "votes.csv"))
    with pytest.raises(ValueError, match="training, all"):
        select_rows(usages, votes, "test")
    with pytest.raises(ValueError, match="training, all"):
        compute_fes(tmp_path / "votes.csv", rows="Training")


def test_fes_no_training_rows(tmp_path: Path) -> None:
    rows = [row for row in ROWS if row[0] != "Training"]
    path = write_votes(tmp_path / "votes.csv", rows=rows)
    with pytest.raises(DatasetError, match="no rows with Usage Training"):
        compute_fes(path)
    assert compute_fes(path, rows="all")[ANGRY, DISGUST] == pytest.approx(0.5)


def test_votes_missing_column(tmp_path: Path) -> None:
    keep = [i for i, name in enumerate(HEADER) if name != "fear"]
    path = write_votes(tmp_path / "votes.csv", [HEADER[i] for i in keep], [[row[i] for i in keep] for row in ROWS])
    with pytest.raises(DatasetError) as caught:
        read_votes(path)
    message = str(caught.value)
    assert f"{path}, line 1" in message
    assert "'fear'" in message


@pytest.mark.parametrize(
    "column, value, expected",
    [
        ("sadness", "x", "column 'sadness' is 'x', expected a non-negative integer vote count"),
        ("anger", "2.5", "column 'anger' is '2.5'"),
        ("neutral", "-1", "column 'neutral' is '-1'"),
        ("neutral", "", "column 'neutral' is ''"),
        ("Usage", "Validation", "column 'Usage' is 'Validation', expected one of Training, PublicTest, PrivateTest"),
    ],
    ids=["non_numeric", "fraction", "negative", "empty", "usage"],
)
def test_votes_invalid_field_names_line(tmp_path: Path, column: str, value: str, expected: str) -> None:
    rows = [list(row) for row in ROWS]
    rows[1][HEADER.index(column)] = value  # line 3
    path = write_votes(tmp_path / "votes.csv", rows=rows)
    with pytest.raises(DatasetError) as caught:
        read_votes(path)
    assert len(caught.value.errors) == 1
    assert caught.value.errors[0].startswith(f"{path}, line 3: ")
    assert expected in caught.value.errors[0]


def test_votes_wrong_field_count(tmp_path: Path) -> None:
    rows = [list(row) for row in ROWS]
    rows[3] = rows[3][:-1]  # line 5
    rows[4] = rows[4] + ["0"]  # line 6
    path = write_votes(tmp_path / "votes.csv", rows=rows)
    with pytest.raises(DatasetError) as caught:
        read_votes(path)
    assert caught.value.errors == [
        f"{path}, line 5: expected 12 fields as in the header, found 11",
        f"{path}, line 6: expected 12 fields as in the header, found 13",
    ]


def test_votes_stop_after_twenty_errors(tmp_path: Path) -> None:
    rows = [["Training", "", "x", *["0"] * 9]] * 30
    path = write_votes(tmp_path / "votes.csv", rows=rows)
    with pytest.raises(DatasetError) as caught:
        read_votes(path)
    assert len(caught.value.errors) == 20
    assert caught.value.errors[-1].startswith(f"{path}, line 21:")


def test_votes_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match="is empty"):
        read_votes(empty)

    header_only = write_votes(tmp_path / "header.csv", rows=[])
    with pytest.raises(DatasetError, match="no data rows"):
        read_votes(header_only)

    with pytest.raises(FileNotFoundError, match="fer2013new.csv"):
        read_votes(tmp_path / "absent.csv")


def test_real_votes_match_published_fes() -> None:
    path = real_file("raw/fer2013new.csv")
    usages, votes = read_votes(path)
    assert len(usages) == 35887

    all_rows = fes_matrix(select_rows(usages, votes, "all"))
    np.testing.assert_allclose(np.round(all_rows, 4), PUBLISHED_FES, rtol=0, atol=1e-12)

    training = fes_matrix(select_rows(usages, votes, "training"))
    assert len(select_rows(usages, votes, "training")) == 28709
    assert round(training[SAD, NEUTRAL], 4) == 0.1429

    # Rows without any of the seven votes count in the mean; dropping them changes Sad-Neutral.
    voted = votes[votes.sum(axis=1) > 0]
    assert len(votes) - len(voted) == 178  # 173 rows without an image name, 5 with only contempt or NF votes
    assert round(fes_matrix(voted)[SAD, NEUTRAL], 4) == 0.1391


# ---------------------------------------------------------------------------------------------
# FES files


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = save_fes(EXPECTED_ALL, tmp_path / "out" / "fes.json", source="votes.csv", rows="all")
    data = json.loads(path.read_text())
    assert data["classes"] == list(CLASSES)
    assert data["source"] == "votes.csv"
    assert data["rows"] == "all"
    assert np.array_equal(load_fes(path), EXPECTED_ALL)
    assert sorted(item.name for item in path.parent.iterdir()) == ["fes.json"]


def test_save_rejects_invalid_matrix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not symmetric"):
        save_fes(np.triu(np.ones((7, 7))), tmp_path / "fes.json", source="x", rows="all")
    with pytest.raises(ValueError, match="rows"):
        save_fes(np.eye(7), tmp_path / "fes.json", source="x", rows="some")
    assert not (tmp_path / "fes.json").exists()


def corrupt_classes(data: dict) -> None:
    data["classes"] = list(reversed(data["classes"]))


def corrupt_shape(data: dict) -> None:
    data["matrix"] = [row[:6] for row in data["matrix"][:6]]


def corrupt_symmetry(data: dict) -> None:
    data["matrix"][SAD][NEUTRAL] = 0.5


def corrupt_diagonal(data: dict) -> None:
    data["matrix"][2][2] = 0.9


def corrupt_values(data: dict) -> None:
    data["matrix"][0][1] = data["matrix"][1][0] = "high"


def drop_matrix(data: dict) -> None:
    del data["matrix"]


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (corrupt_classes, "classes are"),
        (corrupt_shape, "shape (6, 6), expected (7, 7)"),
        (corrupt_symmetry, "not symmetric"),
        (corrupt_diagonal, "diagonal"),
        (corrupt_values, "not a table of numbers"),
        (drop_matrix, "'matrix'"),
    ],
    ids=["classes", "shape", "symmetry", "diagonal", "values", "missing_key"],
)
def test_load_fes_rejects_invalid_file(tmp_path: Path, corrupt, expected: str) -> None:
    path = save_fes(PUBLISHED_FES, tmp_path / "fes.json", source="paper", rows="all")
    data = json.loads(path.read_text())
    corrupt(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as caught:
        load_fes(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_load_fes_invalid_json_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "fes.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="invalid JSON"):
        load_fes(path)
    with pytest.raises(FileNotFoundError, match="tools/fes.py"):
        load_fes(tmp_path / "absent.json")


def test_plot_fes_writes_png(tmp_path: Path) -> None:
    out = plot_fes(PUBLISHED_FES, tmp_path / "plots" / "fes.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(item.name for item in out.parent.iterdir()) == ["fes.png"]


def run_command(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_command_line_script(tmp_path: Path) -> None:
    votes = write_votes(tmp_path / "votes.csv")
    out = tmp_path / "out" / "fes.json"
    plot = tmp_path / "out" / "fes.png"
    result = run_command(["tools/fes.py", str(votes), "--out", str(out), "--plot", str(plot)])
    assert result.returncode == 0, result.stderr

    data = json.loads(out.read_text())
    assert data["rows"] == "training"
    assert data["source"] == str(votes)
    np.testing.assert_allclose(load_fes(out), EXPECTED_TRAINING, rtol=0, atol=1e-12)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    last_lines = result.stdout.strip().splitlines()[-8:]
    assert last_lines[0].split() == list(CLASSES)
    assert last_lines[5].split() == ["Sad", "0.0000", "0.0000", "0.0000", "0.0000", "1.0000", "0.0000", "0.3125"]


def test_command_line_module_all_rows(tmp_path: Path) -> None:
    votes = write_votes(tmp_path / "votes.csv")
    out = tmp_path / "fes.json"
    result = run_command(["-m", "tools.fes", str(votes), "--rows", "all", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["rows"] == "all"
    np.testing.assert_allclose(load_fes(out), EXPECTED_ALL, rtol=0, atol=1e-12)


def test_command_line_invalid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [list(row) for row in ROWS]
    rows[0][HEADER.index("fear")] = "many"  # line 2
    votes = write_votes(tmp_path / "votes.csv", rows=rows)
    out = tmp_path / "fes.json"
    with pytest.raises(SystemExit) as exited:
        fes_module.main([str(votes), "--out", str(out)])
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert f"{votes}, line 2: column 'fear' is 'many'" in stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Relabelling


def test_relabel_threshold_branches() -> None:
    probs = torch.tensor([
        [0.50, 0.40, 0.10],  # gap 0.1 < 0.2: target 1 becomes 0
        [0.70, 0.20, 0.10],  # gap 0.5 >= 0.2: kept
        [0.60, 0.30, 0.10],  # prediction equals the target: kept
        [0.50, 0.25, 0.25],  # gap exactly 0.25, not below 0.25
        [0.50, 0.50, 0.00],  # tie: argmax is 0, gap 0 is not above 0
        [0.10, 0.15, 0.75],  # gap 0.65 from target 0: kept
    ])
    targets = torch.tensor([1, 1, 0, 1, 1, 0])
    new, changed = relabel_targets(probs, targets, threshold=0.2)
    assert new.tolist() == [0, 1, 0, 1, 1, 0]
    assert changed.tolist() == [True, False, False, False, False, False]

    new, changed = relabel_targets(probs, targets, threshold=0.25)
    assert changed.tolist() == [True, False, False, False, False, False]

    new, changed = relabel_targets(probs, targets, threshold=0.2500001)
    assert new.tolist() == [0, 1, 0, 0, 1, 0]
    assert changed.tolist() == [True, False, False, True, False, False]


def test_relabel_zero_threshold_changes_nothing() -> None:
    probs = torch.tensor([[0.5, 0.4, 0.1]])
    new, changed = relabel_targets(probs, torch.tensor([1]), threshold=0.0)
    assert new.tolist() == [1]
    assert not changed.any()


def test_relabel_fes_gate() -> None:
    probs = torch.tensor([
        [0.50, 0.45, 0.05],  # target 1 -> 0, fes[1][0]
        [0.50, 0.05, 0.45],  # target 2 -> 0, fes[2][0]
        [0.05, 0.50, 0.45],  # target 2 -> 1, fes[2][1]
    ])
    targets = torch.tensor([1, 2, 2])
    fes = torch.tensor([
        [1.00, 0.00, 0.00],
        [0.50, 1.00, 0.00],  # fes[1][0] = 0.5 permits, while fes[0][1] = 0 would block: the index order matters
        [0.01, 0.03, 1.00],  # 0.01 blocks, and 0.03 equals the threshold, so it blocks too
    ])
    new, changed = relabel_targets(probs, targets, threshold=0.1, fes=fes, fes_threshold=0.03)
    assert new.tolist() == [0, 2, 2]
    assert changed.tolist() == [True, False, False]

    new, changed = relabel_targets(probs, targets, threshold=0.1, fes=fes, fes_threshold=0.0)
    assert new.tolist() == [0, 0, 1]
    assert changed.tolist() == [True, True, True]

    new, changed = relabel_targets(probs, targets, threshold=0.1)
    assert changed.tolist() == [True, True, True]


def test_relabel_published_fes_numpy() -> None:
    probs = torch.full((2, 7), 0.01)
    probs[0, NEUTRAL], probs[0, SAD] = 0.50, 0.44  # Sad -> Neutral, FES 0.1384
    probs[1, FEAR], probs[1, DISGUST] = 0.50, 0.44  # Disgust -> Fear, FES 0.0095
    targets = torch.tensor([SAD, DISGUST])
    new, changed = relabel_targets(probs, targets, threshold=0.1, fes=PUBLISHED_FES)
    assert new.tolist() == [NEUTRAL, DISGUST]
    assert changed.tolist() == [True, False]


def test_relabel_leaves_inputs_unchanged() -> None:
    probs = torch.tensor([[0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 1], dtype=torch.int32)
    fes = torch.ones(3, 3)
    copies = (probs.clone(), targets.clone(), fes.clone())
    new, changed = relabel_targets(probs, targets, threshold=0.3, fes=fes)
    assert new.tolist() == [0, 2]
    assert new.dtype == torch.int32
    assert changed.dtype == torch.bool
    assert torch.equal(probs, copies[0])
    assert torch.equal(targets, copies[1])
    assert torch.equal(fes, copies[2])
    assert new.data_ptr() != targets.data_ptr()


def test_relabel_rejects_invalid_input() -> None:
    probs = torch.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        relabel_targets(probs, torch.zeros(3, dtype=torch.long), threshold=0.1)
    with pytest.raises(ValueError, match=r"expected \(N, C\)"):
        relabel_targets(probs[0], torch.zeros(4, dtype=torch.long), threshold=0.1)
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        relabel_targets(probs, torch.zeros(4, dtype=torch.long), threshold=0.1, fes=torch.eye(7))
    with pytest.raises(TypeError, match="integer"):
        relabel_targets(probs, torch.zeros(4), threshold=0.1)
    with pytest.raises(ValueError, match="threshold"):
        relabel_targets(probs, torch.zeros(4, dtype=torch.long), threshold=-0.1)


def test_relabel_counter_counts() -> None:
    counter = RelabelCounter()
    assert counter.total == 0
    old = torch.tensor([SAD, SAD, ANGRY, NEUTRAL])
    counter.update(old, torch.tensor([NEUTRAL, SAD, NEUTRAL, SAD]))
    counter.update(torch.tensor([SAD, FEAR]), torch.tensor([NEUTRAL, FEAR]))

    assert counter.total == 4
    matrix = counter.matrix
    assert matrix[SAD][NEUTRAL] == 2
    assert matrix[ANGRY][NEUTRAL] == 1
    assert matrix[NEUTRAL][SAD] == 1
    assert sum(map(sum, matrix)) == 4
    assert all(matrix[i][i] == 0 for i in range(7))
    assert torch.equal(old, torch.tensor([SAD, SAD, ANGRY, NEUTRAL]))

    lines = counter.format().splitlines()
    assert lines[0].split()[-8:] == [*CLASSES, "total"]
    assert lines[1 + SAD].split() == ["Sad", "0", "0", "0", "0", "0", "0", "2", "2"]
    assert lines[-1] == "relabelled samples: 4"


def test_relabel_counter_with_relabel_targets() -> None:
    probs = torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.5, 0.4], [0.8, 0.1, 0.1]])
    targets = torch.tensor([1, 2, 1])
    new, _ = relabel_targets(probs, targets, threshold=0.2)
    counter = RelabelCounter(3, ["a", "b", "c"])
    counter.update(targets, new)
    assert counter.matrix == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert counter.total == 2
    assert RelabelCounter(3).class_names == ["0", "1", "2"]
    with pytest.raises(ValueError, match="one name per class"):
        RelabelCounter(3, ["a", "b"])


# ---------------------------------------------------------------------------------------------
# Greedy ensemble selection


def two_class_probs(class_one: list[float]) -> torch.Tensor:
    positive = torch.tensor(class_one, dtype=torch.float32)
    return torch.stack([1 - positive, positive], dim=1)


LABELS = torch.tensor([0, 0, 0, 1, 1])
MEMBERS = [
    two_class_probs([0.2, 0.2, 0.2, 0.7, 0.45]),  # 4/5 alone
    two_class_probs([0.6, 0.2, 0.2, 0.6, 0.40]),  # 3/5 alone, 4/5 with member 0
    two_class_probs([0.3, 0.3, 0.3, 0.4, 0.90]),  # 4/5 alone, 5/5 with member 0
]


def test_greedy_select_expected_members() -> None:
    chosen, history = greedy_select(MEMBERS, LABELS)
    assert chosen == [0, 2]  # members 0 and 2 tie alone and the lower index wins, then member 1 adds nothing
    assert history == [80.0, 100.0]


def test_greedy_select_max_members() -> None:
    assert greedy_select(MEMBERS, LABELS, max_members=1) == ([0], [80.0])
    assert greedy_select(MEMBERS, LABELS, max_members=5) == ([0, 2], [80.0, 100.0])


def test_greedy_select_without_replacement() -> None:
    weak = two_class_probs([0.9, 0.9, 0.9, 0.1, 0.1])
    chosen, history = greedy_select([weak, MEMBERS[2], MEMBERS[2].clone()], LABELS)
    assert chosen == [1]
    assert history == [80.0]


def test_greedy_select_uses_only_its_inputs() -> None:
    copies = [probs.clone() for probs in MEMBERS]
    labels = LABELS.clone()
    chosen, _ = greedy_select(MEMBERS, labels)
    assert set(chosen) <= set(range(len(MEMBERS)))
    assert all(torch.equal(probs, copy) for probs, copy in zip(MEMBERS, copies))
    assert torch.equal(labels, LABELS)

    # Other labels for the same outputs choose another ensemble: only the labels passed count.
    chosen, history = greedy_select(MEMBERS, torch.tensor([1, 0, 0, 1, 0]))
    assert chosen == [1]
    assert history == [100.0]


def test_greedy_select_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        greedy_select([], LABELS)
    with pytest.raises(ValueError, match="like member 0"):
        greedy_select([MEMBERS[0], MEMBERS[1][:4]], LABELS)
    with pytest.raises(ValueError, match="N = 4 labels"):
        greedy_select(MEMBERS, LABELS[:4])
    with pytest.raises(ValueError, match="max_members"):
        greedy_select(MEMBERS, LABELS, max_members=0)
