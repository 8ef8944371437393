"""The FER2013 training stage shared by retraining and relabeling.

Protocol: the network trains on Training; PublicTest is the validation set that selects the
best epoch (``best.pt``); PrivateTest is the test set, reported at that epoch and at the last
one. PrivateTest accuracy is also given on the images that do not occur, pixel for pixel, in
the Training split.
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dataloader.batches import TensorBatches, make_augment
from dataloader.fer2013 import CLASSES, IMAGE_SIZE, exact_duplicates, load_fer2013
from dataloader.splits import stratified_subset
from NAS.model import NetworkFER
from tools.checkpoint import atomic_save, restore_training
from tools.engine import Autocast, Predictions, TargetFn, predict, train_one_epoch
from tools.experiment import MetricsCSV, write_json
from tools.modelio import load_network, network_record
from tools.reports import classification_summary, format_summary, plot_confusion
from tools.runtime import rng_state

logger = logging.getLogger(__name__)

VALIDATION, TEST = "PublicTest", "PrivateTest"
METRIC_FIELDS = ["epoch", "lr", "drop_path_prob", "train_loss", "train_acc", "val_acc", "test_acc", "relabeled",
                 "seconds", "images_per_second"]


@dataclass
class FERData:
    """Training batches and the two evaluation splits of FER2013, in memory."""

    train: TensorBatches
    evaluation: dict[str, TensorBatches]
    test_in_training: torch.Tensor  # bool, one per PrivateTest image
    train_size: int
    eval_size: int = IMAGE_SIZE
    classes: list[str] = field(default_factory=lambda: list(CLASSES))


def load_fer_data(path: str, *, batch_size: int, device: torch.device, memory_format: torch.memory_format,
                  subset: int = 0, seed: int = 0, crop: int = 44, jitter: float = 0.0,
                  eval_batch_size: int = 256) -> FERData:
    """Load FER2013 and build shuffled, augmented Training batches and plain evaluation batches."""
    splits = load_fer2013(path)
    training = splits["Training"]
    indices = stratified_subset(training.labels, subset, seed=seed) if subset else None
    augment = make_augment(crop=crop, flip=True, brightness=jitter, contrast=jitter)
    train = TensorBatches(training.pixels, training.labels, batch_size, shuffle=True, device=device,
                          augment=augment, seed=seed, indices=indices, memory_format=memory_format)
    evaluation = {name: TensorBatches(splits[name].pixels, splits[name].labels, eval_batch_size, shuffle=False,
                                      device=device, memory_format=memory_format) for name in (VALIDATION, TEST)}
    in_training = exact_duplicates(training.pixels, splits[TEST].pixels)
    logger.info("data: %d Training images%s, %d %s (validation), %d %s (test, %d of them also in Training)",
                train.num_samples, " (stratified subset)" if subset else "", len(splits[VALIDATION]), VALIDATION,
                len(splits[TEST]), TEST, int(in_training.sum()))
    return FERData(train, evaluation, in_training, train_size=crop, eval_size=int(training.pixels.shape[-1]))


def drop_path_at(max_prob: float, epoch: int, epochs: int) -> float:
    """Return the drop-path probability of ``epoch``, rising linearly from 0 to ``max_prob`` over ``epochs``."""
    return max_prob * min(epoch, epochs) / max(epochs, 1)


@dataclass
class FitState:
    """Progress of a training run, saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    best_val_acc: float = -1.0
    best_epoch: int = -1
    snapshots_saved: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                "snapshots_saved": list(self.snapshots_saved)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FitState":
        return cls(int(data["epoch"]), float(data["best_val_acc"]), int(data["best_epoch"]),
                   [_snapshot_key(v) for v in data["snapshots_saved"]])


@dataclass
class Trainer:
    """Everything a training stage trains with; ``checkpoint`` turns it into a plain dict."""

    kind: str
    model: NetworkFER
    data: FERData
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    args: argparse.Namespace
    autocast: Autocast = None
    state: FitState = field(default_factory=FitState)
    drop_path: Callable[[int], float] = lambda epoch: 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def checkpoint(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "network": network_record(self.model, self.data.classes, self.data.train_size, self.data.eval_size),
            "model": self.model.state_dict(),
            "epoch": self.state.epoch,
            "state": self.state.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_batches": self.data.train.state_dict(),
            "rng": rng_state(),
            "drop_path_prob": self.drop_path(self.state.epoch),
            "metrics": metrics,
            "args": vars(self.args),
            **self.extra,
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Restore the model, optimizer, scheduler, scaler, batch order and progress."""
        restore_training(checkpoint, self.model, self.optimizer, self.scheduler, self.scaler)
        self.data.train.load_state_dict(checkpoint["train_batches"])
        self.state = FitState.from_dict(checkpoint["state"])


def fit(trainer: Trainer, run_dir: Path, epochs: int, *, aux_weight: float, grad_clip: float,
        snapshot_train_acc: list[float], target_fn: Callable[[int], TargetFn | None] = lambda epoch: None,
        epoch_end: Callable[[int], dict[str, Any]] = lambda epoch: {}, test_every_epoch: bool = True,
        report_freq: int = 50, progress: bool = True) -> FitState:
    """Train from ``trainer.state.epoch`` to ``epochs``, evaluating PublicTest after every epoch.

    Writes ``last.pt`` every epoch, ``best.pt`` when PublicTest accuracy improves, and
    ``train_acc_<N>.pt`` the first time the training accuracy reaches each ``snapshot_train_acc``
    value. ``epoch_end(epoch)`` returns extra metrics for the row and the log.
    """
    state, model, data = trainer.state, trainer.model, trainer.data
    metrics_csv = MetricsCSV(run_dir / "metrics.csv", METRIC_FIELDS, keep_until=state.epoch)
    for epoch in range(state.epoch, epochs):
        lr = trainer.scheduler.get_last_lr()[0]
        model.drop_path_prob = trainer.drop_path(epoch)
        result = train_one_epoch(model, data.train, trainer.optimizer, epoch=epoch, aux_weight=aux_weight,
                                 grad_clip=grad_clip, autocast=trainer.autocast, scaler=trainer.scaler,
                                 target_fn=target_fn(epoch), report_freq=report_freq, progress=progress,
                                 total=len(data.train))
        trainer.scheduler.step()
        extra = epoch_end(epoch)

        val = predict(model, data.evaluation[VALIDATION], autocast=trainer.autocast)
        test = predict(model, data.evaluation[TEST], autocast=trainer.autocast) if test_every_epoch else None
        state.epoch = epoch + 1
        row = {"epoch": epoch, "lr": lr, "drop_path_prob": model.drop_path_prob, "train_loss": result.loss,
               "train_acc": result.acc, "val_acc": val.accuracy, "test_acc": test.accuracy if test else "",
               "seconds": result.seconds, "images_per_second": result.images_per_second, **extra}
        improved = val.accuracy > state.best_val_acc
        if improved:
            state.best_val_acc, state.best_epoch = val.accuracy, epoch
        metrics_csv.append(row)
        logger.info("epoch %d/%d: lr %.5f, train loss %.4f acc %.2f%%, %s (validation) %.2f%%%s, %s %s, "
                    "%.1f images/s%s", epoch, epochs - 1, lr, result.loss, result.acc, VALIDATION, val.accuracy,
                    " (best so far)" if improved else "", TEST, f"{test.accuracy:.2f}%" if test else "not evaluated",
                    result.images_per_second, "".join(f", {k} {v}" for k, v in extra.items()))

        reached = [_snapshot_key(t) for t in snapshot_train_acc
                   if result.acc >= t and _snapshot_key(t) not in state.snapshots_saved]
        state.snapshots_saved.extend(reached)
        checkpoint = trainer.checkpoint(row)
        atomic_save(checkpoint, run_dir / "last.pt")
        if improved:
            atomic_save(checkpoint, run_dir / "best.pt")
        for key in reached:
            atomic_save(checkpoint, run_dir / f"train_acc_{key}.pt")
            logger.info("training accuracy reached %s%% at epoch %d: saved train_acc_%s.pt", key, epoch, key)
    return state


def evaluate_checkpoint(path: Path, data: FERData, device: torch.device, memory_format: torch.memory_format,
                        autocast: Autocast, tencrop: bool) -> tuple[dict[str, Predictions], int]:
    """Return predictions of the checkpoint at ``path`` on PublicTest and PrivateTest, plain and,
    when ``tencrop``, with ten-crop, and the 0-based epoch it was saved after."""
    model, checkpoint = load_network(path, device, memory_format)
    crop = int(checkpoint["network"]["preprocessing"]["train_size"])
    out = {}
    for name in (VALIDATION, TEST):
        out[f"{name}/plain"] = predict(model, data.evaluation[name], autocast=autocast)
        if tencrop:
            out[f"{name}/tencrop"] = predict(model, data.evaluation[name], autocast=autocast, tta="tencrop",
                                             crop=crop)
    return out, int(checkpoint["epoch"]) - 1


def summarise(predictions: dict[str, Predictions], data: FERData) -> dict[str, Any]:
    """Accuracy of every prediction set, and PrivateTest on the images not seen in Training."""
    fresh = ~data.test_in_training
    result: dict[str, Any] = {}
    for key, pred in predictions.items():
        split, view = key.split("/")
        summary = classification_summary(pred.probs, pred.labels, data.classes)
        result.setdefault(split, {})[view] = summary
        if split == TEST:
            summary_fresh = classification_summary(pred.probs, pred.labels, data.classes, mask=fresh[pred.indices])
            result.setdefault(f"{TEST}_not_in_Training", {})[view] = summary_fresh
    return result


def final_report(run_dir: Path, data: FERData, device: torch.device, memory_format: torch.memory_format,
                 autocast: Autocast, tencrop: bool, checkpoints: dict[str, Path]) -> dict[str, Any]:
    """Evaluate each named checkpoint, write ``results.json`` and the PrivateTest confusion matrix
    of the first one (the validation-selected checkpoint) as PNG, and log the figures."""
    report: dict[str, Any] = {"protocol": f"checkpoint selected on {VALIDATION} accuracy; {TEST} is the test set",
                              "test_images_in_training": int(data.test_in_training.sum())}
    for tag, path in checkpoints.items():
        if not path.is_file():
            continue
        predictions, epoch = evaluate_checkpoint(path, data, device, memory_format, autocast, tencrop)
        summaries = summarise(predictions, data)
        report[tag] = {"checkpoint": str(path), "epoch": epoch, **summaries}
        for split in (VALIDATION, TEST, f"{TEST}_not_in_Training"):
            views = ", ".join(f"{view} {s['accuracy']:.2f}%" for view, s in summaries[split].items())
            logger.info("%s checkpoint (epoch %s) on %s: %s", tag, epoch, split, views)
    first = next((tag for tag in checkpoints if tag in report), None)
    if first is not None:
        view = "tencrop" if tencrop else "plain"
        summary = report[first][TEST][view]
        logger.info("%s at the %s checkpoint (%s, the reported test result):\n%s", TEST, first, view,
                    format_summary(summary, data.classes))
        plot_confusion(summary["confusion"], data.classes, run_dir / "confusion_test.png",
                       title=f"{TEST}, {first} checkpoint (epoch {report[first]['epoch']}), {view}: "
                             f"{summary['accuracy']:.2f}%")
    write_json(report, run_dir / "results.json")
    return report


def _snapshot_key(threshold: float) -> int | float:
    """Return the number in a snapshot file name: 85 for 85.0, 87.5 for 87.5."""
    return int(threshold) if float(threshold).is_integer() else float(threshold)


def cosine_scheduler(optimizer: torch.optim.Optimizer, epochs: int, eta_min: float) -> Any:
    """Cosine learning rate from the optimizer's rate to ``eta_min`` over ``epochs``."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1), eta_min=eta_min)


def check_snapshots(values: list[float]) -> list[float]:
    for value in values:
        if not 0 < value <= 100 or math.isnan(value):
            raise SystemExit(f"--snapshot_train_acc values must be percentages in (0, 100], got {value}")
    return sorted(values)
