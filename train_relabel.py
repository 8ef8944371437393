"""Train on from a retrain checkpoint while relabeling uncertain training labels.

From the second epoch of this run on, a training sample's loss target becomes the network's
prediction when 0 < p(prediction) - p(label) < --relabel_threshold and, with --fes, also
FES[label][prediction] > --fes_threshold. The probabilities are the softmax of the main logits
of the same training forward pass (train mode, augmented, with drop path), and the auxiliary
loss uses the same targets. Only the loss targets change: the stored labels stay as they are,
and training accuracy is measured against them. PublicTest selects best.pt and PrivateTest is
reported, as in train_FER2013.py; results.json also contains the starting checkpoint's figures.

Drop path continues the retrain run's linear rise instead of restarting it: epoch e of this run
uses min(max, max * (e0 + e) / E), where max and E are the retrain run's --drop_path_prob and
--epochs and e0 is the number of epochs the starting checkpoint had completed. The learning rate
starts again at --learning_rate with a fresh SGD optimizer and a cosine schedule over --epochs.

    python train_relabel.py --checkpoint runs/retrain-EXP-.../train_acc_85.pt        # the original settings
    python train_relabel.py --checkpoint CKPT --fes_votes fer2013new.csv              # FES from Training rows
    python train_relabel.py --checkpoint CKPT --no-fes --relabel_threshold 0.1        # threshold only
    python train_relabel.py --resume runs/relabel-EXP-...                            # continue a run
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dataloader.fer2013 import DEFAULT_PATH, DatasetError
from tools.checkpoint import CheckpointError, load_checkpoint, resolve_resume
from tools.cli import add_bool_flag, add_runtime_args, add_sgd_args, add_speed_args, restore_args
from tools.engine import TTA_CHOICES, TargetFn
from tools.experiment import make_run_dir, save_args, setup_logging, write_json
from tools.fer_training import (TEST, VALIDATION, FERData, FitState, Trainer, cosine_scheduler, drop_path_at,
                                evaluate_checkpoint, final_report, fit, load_fer_data, summarise)
from tools.fes import PUBLISHED_FES, compute_fes, format_fes, load_fes
from tools.modelio import load_network
from tools.relabel import RelabelCounter, relabel_targets
from tools.runtime import (autocast_factory, configure_cpu, grad_scaler, seed_everything, select_device,
                           set_rng_state)

logger = logging.getLogger("train_relabel")

# Options that a resumed run may change on the command line. Every other option comes from the checkpoint.
RUNTIME_OPTIONS = {"resume", "device", "progress", "report_freq", "threads", "data"}
START_KIND = "retrain"
CHECKPOINT_HINT = ("--checkpoint takes a checkpoint written by train_FER2013.py, usually "
                   "runs/retrain-EXP-.../train_acc_<N>.pt (saved when the training accuracy first reached N percent, "
                   "see its --snapshot_train_acc); to continue a relabel run, pass --resume RUN_DIR instead")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train on from a retrain checkpoint, relabeling uncertain "
                                                 "training labels.")
    add_runtime_args(parser, DEFAULT_PATH)
    parser.add_argument("--checkpoint", default="", metavar="CKPT",
                        help="retrain checkpoint to start from, usually train_acc_<N>.pt of a train_FER2013.py run; "
                             "the network is rebuilt from it")

    group = parser.add_argument_group("relabeling")
    group.add_argument("--relabel_threshold", type=float, default=0.2,
                       help="relabel when 0 < p(prediction) - p(label) < this gap (default: 0.2)")
    add_bool_flag(parser, "fes", True, "also require FES[label][prediction] > --fes_threshold")
    group.add_argument("--fes_threshold", type=float, default=0.03,
                       help="minimum Facial Expression Similarity between label and prediction, exclusive "
                            "(default: 0.03)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--fes_matrix", default="", metavar="JSON",
                        help="FES matrix written by tools/fes.py (default: the published matrix, which was "
                             "computed with test rows included)")
    source.add_argument("--fes_votes", default="", metavar="CSV",
                        help="compute FES from the Training rows of this FER+ vote file (fer2013new.csv)")
    group.add_argument("--relabel_start_epoch", type=int, default=1,
                       help="first epoch of this run (0-based) whose loss targets may be relabeled; earlier "
                            "epochs train on the labels (default: 1)")

    group = parser.add_argument_group("data")
    group.add_argument("--subset", type=int, default=0,
                       help="train on a class-stratified subset of N Training images (default: 0, all)")
    group.add_argument("--tta", default="none", choices=TTA_CHOICES,
                       help="tencrop: also report the softmax averaged over ten crops (default: none)")
    group.add_argument("--eval_batch_size", type=int, default=256, help="batch size for evaluation (default: 256)")
    add_bool_flag(parser, "test_every_epoch", True, "also evaluate PrivateTest every epoch (for curves only)")
    add_speed_args(parser)

    add_sgd_args(parser, epochs=100, learning_rate=0.02272721, epochs_help="epochs of this run")
    group = parser.add_argument_group("network")
    group.add_argument("--auxiliary_weight", type=float, default=0.4,
                       help="weight of the auxiliary loss when the checkpoint has an auxiliary head (default: 0.4)")
    return parser


# ---------------------------------------------------------------------------------------------
# Relabeling


class RelabelTargets:
    """The ``target_fn`` of one epoch: relabeled loss targets from the softmax of the main logits.

    ``counter`` accumulates the (label, new target) pairs of every batch of the epoch.
    """

    def __init__(self, threshold: float, fes: torch.Tensor | None, fes_threshold: float,
                 classes: list[str]) -> None:
        self.threshold = threshold
        self.fes = fes
        self.fes_threshold = fes_threshold
        self.counter = RelabelCounter(len(classes), classes)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits.float(), dim=1)
        if self.fes is not None and self.fes.device != probs.device:
            self.fes = self.fes.to(probs.device)
        targets, _ = relabel_targets(probs, labels, self.threshold, self.fes, self.fes_threshold)
        self.counter.update(labels, targets)
        return targets


class RelabelSchedule:
    """Per-epoch relabel target functions for ``fit``, from ``start_epoch`` on, and the log of their counts."""

    def __init__(self, threshold: float, fes: torch.Tensor | None, fes_threshold: float, classes: list[str],
                 start_epoch: int, train_samples: int) -> None:
        self.threshold = threshold
        self.fes = fes
        self.fes_threshold = fes_threshold
        self.classes = list(classes)
        self.start_epoch = start_epoch
        self.train_samples = train_samples
        self.current: RelabelTargets | None = None

    def target_fn(self, epoch: int) -> TargetFn | None:
        """Return the target function of ``epoch``, or None (train on the labels) before ``start_epoch``."""
        if epoch < self.start_epoch:
            self.current = None
            return None
        self.current = RelabelTargets(self.threshold, self.fes, self.fes_threshold, self.classes)
        return self.current

    def epoch_end(self, epoch: int) -> dict[str, Any]:
        """Log the epoch's relabel counts and return them for metrics.csv."""
        if self.current is None:
            logger.info("epoch %d: no relabeling, the loss targets are the labels (relabeling starts at epoch %d)",
                        epoch, self.start_epoch)
            return {"relabeled": 0}
        counter = self.current
        total = counter.counter.total
        logger.info("epoch %d: relabeled %d of %d training samples (%.2f%%; loss targets only, the labels are "
                    "unchanged), label (row) to new target (column):\n%s", epoch, total, self.train_samples,
                    100.0 * total / max(self.train_samples, 1), counter.counter.format())
        return {"relabeled": total}


def load_fes_matrix(args: argparse.Namespace) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Return the FES matrix that --fes, --fes_matrix and --fes_votes select (None with --no-fes)
    and a description of its source for the log and results.json."""
    if not args.fes:
        return None, {"used": False}
    try:
        if args.fes_matrix:
            matrix = load_fes(args.fes_matrix)
            info = {"used": True, "source": str(args.fes_matrix), "rows": "as written in the file"}
        elif args.fes_votes:
            matrix = compute_fes(args.fes_votes, rows="training")
            info = {"used": True, "source": str(args.fes_votes), "rows": "training"}
        else:
            matrix = np.array(PUBLISHED_FES)
            info = {"used": True, "source": "published", "rows": "all"}
    except (FileNotFoundError, DatasetError) as error:
        raise SystemExit(f"error: {error}") from None
    return torch.as_tensor(matrix, dtype=torch.float64), {**info, "matrix": matrix.tolist()}


def log_fes(info: dict[str, Any], args: argparse.Namespace) -> None:
    if not info["used"]:
        logger.info("relabel rule: 0 < p(prediction) - p(label) < threshold; the FES gate is off")
        if args.fes_matrix or args.fes_votes:
            logger.warning("--fes_matrix and --fes_votes are ignored because the FES gate is off (--no-fes)")
        return
    if info["source"] == "published":
        logger.warning("using the published FES matrix, which was computed from every row of the FER+ vote file, "
                       "PublicTest and PrivateTest included; pass --fes_votes fer2013new.csv (Training rows only) "
                       "or --fes_matrix fes.json to keep test votes out of training")
    logger.info("relabel rule: 0 < p(prediction) - p(label) < threshold and FES[label][prediction] > %g; FES from "
                "%s (%s rows):\n%s", args.fes_threshold, info["source"], info["rows"],
                format_fes(np.asarray(info["matrix"])))


# ---------------------------------------------------------------------------------------------
# The starting checkpoint


def check_args(args: argparse.Namespace) -> None:
    """Exit with a message naming the first option that is out of range."""
    if args.epochs < 1:
        raise SystemExit(f"error: --epochs is {args.epochs}; expected at least 1")
    if not args.relabel_threshold >= 0:
        raise SystemExit(f"error: --relabel_threshold is {args.relabel_threshold}; expected a probability gap >= 0")
    if args.relabel_start_epoch < 0:
        raise SystemExit(f"error: --relabel_start_epoch is {args.relabel_start_epoch}; expected a 0-based epoch")
    if args.subset < 0:
        raise SystemExit(f"error: --subset is {args.subset}; expected 0 (all images) or a positive count")


def load_start(path: str) -> dict[str, Any]:
    """Load the retrain checkpoint to start from. Exit with a message naming the file when it is unusable."""
    if not path:
        raise SystemExit(f"error: --checkpoint is missing. {CHECKPOINT_HINT}")
    try:
        checkpoint = load_checkpoint(path, kind=START_KIND, required=["network", "model", "epoch", "args"])
    except CheckpointError as error:
        raise SystemExit(f"error: {error}. {CHECKPOINT_HINT}") from None
    missing = [name for name in ("drop_path_prob", "epochs") if name not in checkpoint["args"]]
    if missing:
        raise SystemExit(f"error: checkpoint {path} does not record the option(s) {', '.join(missing)} of its run, "
                         "which the drop-path schedule continues from")
    return checkpoint


def drop_path_schedule(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Return the retrain run's linear drop-path schedule and the epochs it had completed."""
    return {"max_prob": float(checkpoint["args"]["drop_path_prob"]),
            "retrain_epochs": int(checkpoint["args"]["epochs"]),
            "completed_epochs": int(checkpoint["epoch"])}


def drop_path_continued(schedule: dict[str, Any], epoch: int) -> float:
    """Return the drop-path probability of relabel ``epoch``: the retrain rise continued,
    max_prob * (completed_epochs + epoch) / retrain_epochs, capped at max_prob."""
    return drop_path_at(schedule["max_prob"], schedule["completed_epochs"] + epoch, schedule["retrain_epochs"])


def evaluate_start(path: str, data: FERData, device: torch.device, memory_format: torch.memory_format,
                   autocast: Any, tencrop: bool) -> dict[str, Any]:
    """Evaluate the starting checkpoint as final_report evaluates the run's own checkpoints."""
    predictions, epoch = evaluate_checkpoint(Path(path), data, device, memory_format, autocast, tencrop)
    return {"checkpoint": str(path), "epoch": epoch, **summarise(predictions, data)}


def log_comparison(report: dict[str, Any]) -> None:
    """Log PrivateTest accuracy before relabeling and at the best and last checkpoints."""
    for view in report["start"][TEST]:
        figures = [f"{tag} {report[tag][TEST][view]['accuracy']:.2f}%" for tag in ("start", "best", "last")
                   if tag in report]
        logger.info("%s (%s): %s", TEST, view, ", ".join(figures))


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class RunInputs:
    """The inputs of a run: the retrain checkpoint it starts from, or the relabel checkpoint it resumes."""

    run_dir: Path
    network_path: Path
    schedule: dict[str, Any]  # the retrain run's drop-path schedule, see drop_path_schedule
    retrain_args: dict[str, Any]
    fes: torch.Tensor | None
    fes_info: dict[str, Any]
    resumed: dict[str, Any] | None = None


def open_run(args: argparse.Namespace) -> RunInputs:
    """Load the checkpoint to start from or to resume and return the run's inputs.

    A new run checks its options and inputs before it creates its run directory.
    """
    if args.resume:
        resume_path = resolve_resume(args.resume)
        resumed = load_checkpoint(resume_path, kind="relabel",
                                  required=["model", "optimizer", "state", "args", "start", "drop_path_schedule", "fes",
                                            "retrain_args"])
        restore_args(args, resumed["args"], get_args_parser(), RUNTIME_OPTIONS)
        fes_info = resumed["fes"]
        fes = torch.tensor(fes_info["matrix"], dtype=torch.float64) if fes_info["used"] else None
        return RunInputs(resume_path.parent, resume_path, resumed["drop_path_schedule"], resumed["retrain_args"], fes,
                         fes_info, resumed)
    check_args(args)
    start = load_start(args.checkpoint)
    fes, fes_info = load_fes_matrix(args)
    run_dir = make_run_dir(args.save, "relabel")
    return RunInputs(run_dir, Path(args.checkpoint), drop_path_schedule(start), dict(start["args"]), fes, fes_info)


def write_report(run_dir: Path, data: FERData, device: torch.device, memory_format: torch.memory_format,
                 autocast: Any, tencrop: bool, state: FitState, start_report: dict[str, Any],
                 inputs: RunInputs, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate best.pt and last.pt and write results.json with the starting point and the relabel settings."""
    # When the last epoch was the best, both files hold the same weights and are evaluated once.
    last_is_best = state.best_epoch == state.epoch - 1
    checkpoints = {"best": run_dir / "best.pt"}
    if not last_is_best:
        checkpoints["last"] = run_dir / "last.pt"
    report = final_report(run_dir, data, device, memory_format, autocast, tencrop, checkpoints)
    if last_is_best and "best" in report:
        report["last"] = {**report["best"], "checkpoint": str(run_dir / "last.pt")}
        logger.info("the last checkpoint (epoch %d) is the best one; its figures are those of best.pt",
                    state.best_epoch)
    report["start"] = start_report
    report["relabel"] = {"threshold": args.relabel_threshold, "start_epoch": args.relabel_start_epoch,
                         "fes_threshold": args.fes_threshold if inputs.fes_info["used"] else None,
                         "fes": inputs.fes_info, "drop_path_schedule": inputs.schedule}
    write_json(report, run_dir / "results.json")
    log_comparison(report)
    return report


def main(args: argparse.Namespace) -> Path:
    # The checkpoint to start from or to resume, then the run directory and logging.
    inputs = open_run(args)
    run_dir, resumed, schedule = inputs.run_dir, inputs.resumed, inputs.schedule
    setup_logging(run_dir)
    logger.info("command: %s", " ".join(sys.argv))
    if not args.resume:
        save_args(args, run_dir)
    device = select_device(args.device)
    configure_cpu(args.threads)
    seed_everything(args.seed)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    autocast = autocast_factory(device, args.amp)
    tencrop = args.tta == "tencrop"

    # The network, rebuilt from the checkpoint's record; augmentation as in the retrain run.
    model, checkpoint = load_network(inputs.network_path, device, memory_format)
    record = checkpoint["network"]
    retrain_args = inputs.retrain_args
    jitter = float(retrain_args.get("jitter", 0.0)) if retrain_args.get("color_jitter") else 0.0
    crop = int(record["preprocessing"]["train_size"])
    logger.info("network from %s: C=%d, %d layers, auxiliary head %s, %.3f M parameters; augmentation: "
                "%dx%d crops, jitter %g", inputs.network_path, record["init_channels"], record["layers"],
                "on" if record["auxiliary"] else "off", model.parameter_count() / 1e6, crop, crop, jitter)

    # Data: Training (augmented as in the retrain run), PublicTest (validation) and PrivateTest (test).
    data = load_fer_data(args.data, batch_size=args.batch_size, device=device, memory_format=memory_format,
                         subset=args.subset, seed=args.seed, crop=crop, jitter=jitter,
                         eval_batch_size=args.eval_batch_size)
    if list(record["classes"]) != list(data.classes):
        raise SystemExit(f"error: checkpoint {inputs.network_path} predicts the classes {record['classes']}, but "
                         f"{args.data} has {data.classes}; start from a checkpoint trained on FER2013")

    # The starting point: PublicTest and PrivateTest accuracy before relabeling.
    if resumed is None:
        start_report = evaluate_start(args.checkpoint, data, device, memory_format, autocast, tencrop)
    else:
        start_report = resumed["start"]
    for split in (VALIDATION, TEST):
        views = ", ".join(f"{view} {s['accuracy']:.2f}%" for view, s in start_report[split].items())
        logger.info("starting checkpoint %s (epoch %d) on %s: %s", start_report["checkpoint"], start_report["epoch"],
                    split, views)

    # Relabel rule and the drop-path schedule, which continues the retrain run's linear rise.
    log_fes(inputs.fes_info, args)
    logger.info("relabel threshold %g from epoch %d of this run", args.relabel_threshold, args.relabel_start_epoch)
    relabel = RelabelSchedule(args.relabel_threshold, inputs.fes, args.fes_threshold, data.classes,
                              args.relabel_start_epoch, data.train.num_samples)
    logger.info("drop path continues the retrain schedule: p(epoch) = min(%g, %g * (%d + epoch) / %d), "
                "%.4f at epoch 0 and %.4f at epoch %d", schedule["max_prob"], schedule["max_prob"],
                schedule["completed_epochs"], schedule["retrain_epochs"], drop_path_continued(schedule, 0),
                drop_path_continued(schedule, max(args.epochs - 1, 0)), max(args.epochs - 1, 0))

    # Optimizer, schedule and the training state, restored when resuming.
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    trainer = Trainer("relabel", model, data, optimizer,
                      cosine_scheduler(optimizer, args.epochs, args.learning_rate_min),
                      grad_scaler(device, args.amp), args, autocast,
                      drop_path=lambda epoch: drop_path_continued(schedule, epoch),
                      extra={"start": start_report, "drop_path_schedule": schedule, "fes": inputs.fes_info,
                             "retrain_args": retrain_args})
    if resumed is not None:
        trainer.restore(resumed)
        set_rng_state(resumed["rng"])
        logger.info("resumed from %s after epoch %d", args.resume, trainer.state.epoch - 1)

    # Training: PublicTest picks best.pt after every epoch.
    aux_weight = args.auxiliary_weight if record["auxiliary"] else 0.0
    state = fit(trainer, run_dir, args.epochs, aux_weight=aux_weight, grad_clip=args.grad_clip, snapshot_train_acc=[],
                target_fn=relabel.target_fn, epoch_end=relabel.epoch_end, test_every_epoch=args.test_every_epoch,
                report_freq=args.report_freq, progress=args.progress)
    logger.info("best %s accuracy %.2f%% at epoch %d", VALIDATION, state.best_val_acc, state.best_epoch)

    # Report: the validation-selected checkpoint, the last epoch and the starting point in one file.
    write_report(run_dir, data, device, memory_format, autocast, tencrop, state, start_report, inputs, args)
    return run_dir


if __name__ == "__main__":
    main(get_args_parser().parse_args())
