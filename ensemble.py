"""Evaluate an ensemble of trained networks on FER2013's PublicTest (validation) and PrivateTest (test).

Each checkpoint describes its own network (cell, C, layers, classes, crop), so members may differ
in cell and depth. The ensemble averages the members' softmax outputs, or their logits with
--combine logits, optionally weighted. Every member and the ensemble are reported on both splits,
plain and with ten-crop. --select greedy picks members by forward selection on PublicTest alone
and reports the chosen set on PrivateTest.

    python ensemble.py --checkpoints runs/relabel-A/best.pt runs/relabel-B/best.pt runs/retrain-C/best.pt
    python ensemble.py --checkpoints A.pt B.pt --weights 2 1 --combine logits --tta tencrop
    python ensemble.py --checkpoints A.pt B.pt C.pt D.pt --select greedy --out ensemble.json
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from dataloader.fer2013 import DEFAULT_PATH
from NAS.model import NetworkFER
from tools.checkpoint import CheckpointError
from tools.cli import add_bool_flag
from tools.engine import Autocast, Predictions, predict
from tools.experiment import make_run_dir, save_args, setup_logging, write_json
from tools.fer_training import TEST, VALIDATION, FERData, load_fer_data, summarise
from tools.modelio import load_network
from tools.relabel import greedy_select
from tools.reports import format_summary, plot_confusion
from tools.runtime import configure_cpu, select_device

logger = logging.getLogger("ensemble")

COMBINE_CHOICES = ("softmax", "logits")
# Views evaluated for each --tta choice. The last one is the headline view, which greedy selection
# and the confusion matrix use.
TTA_VIEWS = {"none": ("plain",), "tencrop": ("tencrop",), "both": ("plain", "tencrop")}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate an ensemble of trained FER2013 networks.")
    parser.add_argument("--checkpoints", nargs="+", required=True, metavar="CKPT",
                        help="checkpoints of train_FER2013.py, train_relabel.py or fine-tuning runs "
                             "(any cells and depths, the same class list)")
    parser.add_argument("--data", default=DEFAULT_PATH, help=f"FER2013 h5 file (default: {DEFAULT_PATH})")
    parser.add_argument("--weights", nargs="+", type=float, default=None, metavar="W",
                        help="one non-negative weight per checkpoint (default: equal weights)")
    parser.add_argument("--combine", default="softmax", choices=COMBINE_CHOICES,
                        help="average the members' softmax outputs or their logits (default: softmax)")
    parser.add_argument("--tta", default="both", choices=tuple(TTA_VIEWS),
                        help="evaluate the plain image, the ten-crop average or both (default: both)")
    parser.add_argument("--select", default="none", choices=("none", "greedy"),
                        help="greedy: also choose members by forward selection on PublicTest (default: none)")
    parser.add_argument("--max_members", type=int, default=None,
                        help="with --select greedy, choose at most this many members (default: no limit)")
    parser.add_argument("--out", default="", metavar="JSON",
                        help="also write the results to this file (always written to the run directory)")
    parser.add_argument("--save", default="EXP",
                        help="run name, placed under runs/ with a time stamp, or a directory path "
                             "(containing a slash) used as it is (default: EXP)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for PyTorch (default: 0, PyTorch's choice)")
    parser.add_argument("--eval_batch_size", type=int, default=256, help="batch size for evaluation (default: 256)")
    add_bool_flag(parser, "channels_last", True, "channels-last memory format (faster on the CPU)")
    return parser


# ---------------------------------------------------------------------------------------------
# Members


@dataclass
class Member:
    """One trained network of the ensemble and the checkpoint it came from."""

    path: Path
    model: NetworkFER
    kind: str
    epoch: int  # 0-based epoch the checkpoint was saved after
    record: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.record["classes"])

    @property
    def crop(self) -> int:
        """Training crop size, which ten-crop evaluation uses."""
        return int(self.record["preprocessing"]["train_size"])

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": str(self.path), "kind": self.kind, "epoch": self.epoch,
                "init_channels": int(self.record["init_channels"]), "layers": int(self.record["layers"]),
                "parameters": self.model.parameter_count(), "genotype": self.record["genotype"]}


def load_members(paths: Sequence[str | Path], device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> list[Member]:
    """Load every checkpoint. Raise CheckpointError naming the file that is missing or unreadable,
    or that predicts other classes than the first one."""
    members = []
    for path in paths:
        model, checkpoint = load_network(path, device, memory_format)
        members.append(Member(Path(path), model, str(checkpoint["kind"]), int(checkpoint["epoch"]) - 1,
                              checkpoint["network"]))
    first = members[0]
    for member in members[1:]:
        if member.classes != first.classes:
            raise CheckpointError(f"checkpoint {member.path} predicts the classes {member.classes}, but "
                                  f"{first.path} predicts {first.classes}; every member must have the same "
                                  "classes in the same order")
    return members


def check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Return the weights normalized to sum 1 (equal weights when None)."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"--weights has {len(weights)} values for {count} checkpoints; give one per checkpoint")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--weights {list(weights)} are invalid; expected non-negative values with a positive sum")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


# ---------------------------------------------------------------------------------------------
# Predictions


def member_predictions(member: Member, data: FERData, views: Sequence[str], *, logits: bool,
                       autocast: Autocast = None) -> dict[str, Predictions]:
    """Return the member's outputs (softmax, or logits when ``logits``) keyed ``"<split>/<view>"``."""
    out = {}
    for split in (VALIDATION, TEST):
        for view in views:
            tta = "tencrop" if view == "tencrop" else "none"
            out[f"{split}/{view}"] = predict(member.model, data.evaluation[split], autocast=autocast, tta=tta,
                                             crop=member.crop, logits=logits)
    return out


def combine(outputs: Sequence[Predictions], weights: Sequence[float], mode: str) -> Predictions:
    """Return the weighted mean of the members' outputs as probabilities.

    ``mode`` softmax averages probabilities. ``mode`` logits averages logits, then applies softmax.
    """
    if mode not in COMBINE_CHOICES:
        raise ValueError(f"combine mode {mode!r} is invalid; use one of {', '.join(COMBINE_CHOICES)}")
    if len(outputs) != len(weights) or not outputs:
        raise ValueError(f"{len(outputs)} outputs for {len(weights)} weights; expected one weight per output")
    first = outputs[0]
    for output in outputs[1:]:
        if not torch.equal(output.labels, first.labels) or not torch.equal(output.indices, first.indices):
            raise ValueError("the members' outputs cover different images; evaluate them on the same batches")
    total = sum(float(w) * output.probs for w, output in zip(weights, outputs)) / float(sum(weights))
    probs = F.softmax(total, dim=1) if mode == "logits" else total
    return Predictions(probs, first.labels, first.indices)


def as_probabilities(output: Predictions, mode: str) -> Predictions:
    """Return ``output`` as probabilities: logits (``mode`` logits) go through softmax."""
    if mode == "logits":
        return Predictions(F.softmax(output.probs, dim=1), output.labels, output.indices)
    return output


def select_greedy(validation: Sequence[Predictions], max_members: int | None) -> tuple[list[int], list[float]]:
    """Choose members by forward selection on the members' validation outputs only.

    Selection compares the argmax of summed outputs. Softmax keeps the argmax, so with logits it
    selects on the predictions that the logits ensemble makes.
    """
    return greedy_select([output.probs for output in validation], validation[0].labels, max_members)


# ---------------------------------------------------------------------------------------------
# Reports


def accuracy_line(summaries: dict[str, Any]) -> str:
    parts = []
    for split in (VALIDATION, TEST, f"{TEST}_not_in_Training"):
        views = ", ".join(f"{view} {s['accuracy']:.2f}%" for view, s in summaries[split].items())
        parts.append(f"{split} {views}")
    return "; ".join(parts)


def write_confusion(summaries: dict[str, Any], classes: list[str], view: str, run_dir: Path, name: str,
                    title: str) -> None:
    """Write the PrivateTest confusion matrix of ``view`` as ``<name>.png`` and ``<name>.txt`` and log it."""
    summary = summaries[TEST][view]
    text = format_summary(summary, classes)
    (run_dir / f"{name}.txt").write_text(f"{title}\n{text}\n")
    plot_confusion(summary["confusion"], classes, run_dir / f"{name}.png",
                   title=f"{title}: {summary['accuracy']:.2f}%")
    logger.info("%s:\n%s", title, text)


def evaluate_members(members: Sequence[Member], data: FERData, views: Sequence[str], weights: Sequence[float],
                     mode: str) -> tuple[list[dict[str, Predictions]], list[dict[str, Any]]]:
    """Return every member's outputs on both splits (logits when ``mode`` is logits) and its report entry."""
    outputs, entries = [], []
    for index, member in enumerate(members):
        output = member_predictions(member, data, views, logits=mode == "logits")
        summaries = summarise({key: as_probabilities(value, mode) for key, value in output.items()}, data)
        outputs.append(output)
        entries.append({**member.describe(), "weight": weights[index], **summaries})
        logger.info("member %d: %s (%s, epoch %d, C=%d, %d layers, %.3f M parameters): %s", index, member.path,
                    member.kind, member.epoch, member.record["init_channels"], member.record["layers"],
                    member.model.parameter_count() / 1e6, accuracy_line(summaries))
    return outputs, entries


def ensemble_predictions(outputs: Sequence[dict[str, Predictions]], chosen: Sequence[int], weights: Sequence[float],
                         mode: str) -> dict[str, Predictions]:
    """Combine the ``chosen`` members' outputs with their ``weights`` for every split and view."""
    return {key: combine([outputs[i][key] for i in chosen], weights, mode) for key in outputs[0]}


def main(args: argparse.Namespace) -> Path:
    # Input checks before the run directory exists: options, then every checkpoint.
    device = select_device(args.device)
    configure_cpu(args.threads)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    try:
        weights = check_weights(args.weights, len(args.checkpoints))
        if args.select == "greedy" and args.weights is not None:
            raise ValueError("--weights cannot be combined with --select greedy, which averages the chosen "
                             "members with equal weights")
        if args.max_members is not None and args.max_members < 1:
            raise ValueError(f"--max_members is {args.max_members}; expected at least 1")
        members = load_members(args.checkpoints, device, memory_format)
    except (CheckpointError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None

    # Run directory and logging.
    run_dir = make_run_dir(args.save, "ensemble")
    setup_logging(run_dir)
    logger.info("command: %s", " ".join(sys.argv))
    save_args(args, run_dir)
    views = TTA_VIEWS[args.tta]
    headline = views[-1]

    # Data: PublicTest (validation) and PrivateTest (test).
    data = load_fer_data(args.data, batch_size=args.eval_batch_size, device=device, memory_format=memory_format,
                         eval_batch_size=args.eval_batch_size)
    if members[0].classes != list(data.classes):
        raise SystemExit(f"error: checkpoint {members[0].path} predicts the classes {members[0].classes}, but "
                         f"{args.data} has {list(data.classes)}; ensemble networks trained on FER2013")

    # Every member on both splits, then the ensemble of all of them.
    outputs, entries = evaluate_members(members, data, views, weights, args.combine)
    summaries = summarise(ensemble_predictions(outputs, range(len(members)), weights, args.combine), data)
    report: dict[str, Any] = {
        "protocol": f"members and ensembles are evaluated on {VALIDATION} (validation) and {TEST} (test); "
                    f"greedy selection reads {VALIDATION} only",
        "combine": args.combine, "views": list(views), "weights": weights,
        "test_images_in_training": int(data.test_in_training.sum()), "members": entries,
        "ensemble": {"checkpoints": [str(member.path) for member in members], "weights": weights, **summaries}}
    logger.info("ensemble of %d members (%s average): %s", len(members), args.combine, accuracy_line(summaries))
    write_confusion(summaries, data.classes, headline, run_dir, "confusion_test",
                    f"{TEST}, ensemble of {len(members)} ({args.combine}, {headline})")

    # Greedy forward selection on PublicTest, then the chosen set on PrivateTest.
    if args.select == "greedy":
        chosen, history = select_greedy([output[f"{VALIDATION}/{headline}"] for output in outputs],
                                        args.max_members)
        summaries = summarise(ensemble_predictions(outputs, chosen, [1.0] * len(chosen), args.combine), data)
        report["selected"] = {"method": f"greedy forward selection on {VALIDATION} ({headline})",
                              "members": chosen, "checkpoints": [str(members[i].path) for i in chosen],
                              f"{VALIDATION}_accuracy_per_step": history, **summaries}
        logger.info("greedy selection on %s chose members %s: %s", VALIDATION, chosen, accuracy_line(summaries))
        write_confusion(summaries, data.classes, headline, run_dir, "confusion_test_selected",
                        f"{TEST}, {len(chosen)} members chosen on {VALIDATION} ({args.combine}, {headline})")

    # Results.
    write_json(report, run_dir / "results.json")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(report, args.out)
        logger.info("results written to %s and %s", run_dir / "results.json", args.out)
    return run_dir


if __name__ == "__main__":
    main(get_args_parser().parse_args())
