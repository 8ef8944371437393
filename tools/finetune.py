"""Cross-validated fine-tuning of a FER2013 network on a small lab dataset (CK+48, JAFFE).

Protocol: every fold starts from the same FER2013 checkpoint, trains on the fold's training
images and is evaluated on its held-out images, at the full 48x48 size, after its last epoch.
A fold's reported accuracy is that last-epoch accuracy. No epoch is chosen on test images,
except with ``--report_best_epoch``, whose figure is labelled "selected on test".

A run directory contains ``log.txt``, ``args.json``, ``folds.json``, ``metrics.csv`` (one row per
fold and epoch), one ``fold_NN.json`` per finished fold (its accuracy and predictions), then
``summary.json`` and ``confusion.png``. While a fold trains, ``fold_NN_last.pt`` stores its
state after every epoch. ``--resume`` skips finished folds and continues the unfinished one
from that file, which is deleted when the fold finishes.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataloader.batches import TensorBatches, make_augment
from dataloader.fer2013 import DatasetError
from dataloader.folds import Fold, FoldError, fold_coverage, folds_from_json, folds_to_json
from dataloader.labdata import LabDataset, format_counts
from NAS.model import NetworkFER
from tools.checkpoint import CheckpointError, atomic_save, load_checkpoint, restore_training
from tools.cli import add_bool_flag, add_runtime_args, add_sgd_args, add_speed_args, restore_args
from tools.engine import TTA_CHOICES, Autocast, Predictions, predict, train_one_epoch
from tools.experiment import MetricsCSV, make_run_dir, save_args, setup_logging, write_json
from tools.fer_training import cosine_scheduler, drop_path_at
from tools.modelio import build_network, load_network, network_record
from tools.reports import classification_summary, format_summary, plot_confusion
from tools.runtime import (autocast_factory, configure_cpu, grad_scaler, rng_state, seed_everything,
                           select_device, set_rng_state)

logger = logging.getLogger(__name__)

KIND = "finetune"
METRIC_FIELDS = ["fold", "epoch", "lr", "drop_path_prob", "train_loss", "train_acc", "test_acc", "seconds",
                 "images_per_second"]
# Options that a resumed run may change on the command line; the others come from args.json.
RUNTIME_OPTIONS = {"resume", "device", "progress", "report_freq", "threads", "data"}
CHECKPOINT_HINT = ("pass a checkpoint written by train_FER2013.py (best.pt, last.pt or train_acc_<N>.pt in its run "
                   "directory) or a fold checkpoint saved with --save_fold_checkpoints")

# Spellings of each expression, so that class lists of different datasets match by meaning.
EXPRESSION_SPELLINGS: tuple[tuple[str, ...], ...] = (
    ("angry", "anger", "an"),
    ("disgust", "disgusted", "di"),
    ("fear", "fearful", "fe"),
    ("happy", "happiness", "ha"),
    ("sad", "sadness", "sa"),
    ("surprise", "surprised", "su"),
    ("neutral", "ne"),
    ("contempt",),
)
_CANONICAL = {spelling: row[0] for row in EXPRESSION_SPELLINGS for spelling in row}


# ---------------------------------------------------------------------------------------------
# Command line


def add_finetune_args(parser: argparse.ArgumentParser, *, data_default: str, data_help: str,
                      fold_choices: Sequence[str], fold_default: str, fold_help: str) -> None:
    """Add the options that train_CK48.py and train_JAFFE.py share."""
    add_runtime_args(parser, data_default, data_help=data_help)
    parser.add_argument("--checkpoint", default="", metavar="PATH",
                        help="the FER2013 network to start every fold from: a checkpoint of train_FER2013.py "
                             "(best.pt, last.pt), train_relabel.py or a saved fold; the network shape comes from it")

    group = parser.add_argument_group("cross-validation")
    group.add_argument("--folds", default=fold_default, choices=list(fold_choices), help=fold_help)
    group.add_argument("--fold", type=int, default=-1, metavar="K",
                       help="run only fold K (0-based), for quick checks (default: -1, every fold)")
    group.add_argument("--tta", default="none", choices=TTA_CHOICES,
                       help="tencrop: also report the softmax averaged over ten crops (default: none)")
    add_bool_flag(parser, "report_best_epoch", False,
                  "also report each fold's best epoch; the test images select it, so the figure is labelled "
                  "'selected on test' and is no unbiased estimate")
    add_bool_flag(parser, "test_every_epoch", False, "evaluate the held-out fold after every epoch (for curves)")
    add_bool_flag(parser, "save_fold_checkpoints", False,
                  "save each fold's final network as fold_NN.pt (kind 'finetune', readable by load_network)")
    group.add_argument("--eval_batch_size", type=int, default=256, help="batch size for evaluation (default: 256)")
    add_bool_flag(parser, "color_jitter", False,
                  "brightness and contrast jitter while training, on top of the random crop and flip (the authors' "
                  "CK+ loader uses it with strength 0.5)")
    group.add_argument("--jitter", type=float, default=0.5,
                       help="brightness and contrast jitter strength when --color_jitter is on (default: 0.5)")

    group = parser.add_argument_group("network")
    add_bool_flag(parser, "auxiliary", True, "train the auxiliary head, when the checkpoint has one")
    group.add_argument("--auxiliary_weight", type=float, default=0.4,
                       help="weight of the auxiliary loss (default: 0.4)")
    group.add_argument("--drop_path_prob", type=float, default=0.2,
                       help="drop-path probability reached at the last fine-tune epoch, rising linearly from 0 "
                            "(default: 0.2)")
    add_speed_args(parser)

    add_sgd_args(parser, epochs=60, learning_rate=0.01794073, epochs_help="fine-tune epochs per fold")


def prepare_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path | None:
    """Take a resumed run's options from its args.json, check the options, and return the run directory.

    Returns None when ``--resume`` is not given. Raises SystemExit when an option is invalid or
    the directory is not a run of the script that owns ``parser``.
    """
    run_dir = _restore_run(args, parser) if args.resume else None
    _check_options(args)
    return run_dir


def _restore_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    run_dir = Path(args.resume)
    saved_path = run_dir / "args.json"
    if not saved_path.is_file():
        raise SystemExit(f"--resume {run_dir}: no args.json there; pass the run directory that {parser.prog} "
                         "created (it contains args.json, folds.json and fold_NN.json files)")
    saved = json.loads(saved_path.read_text())
    unknown = sorted(set(saved) - set(vars(args)))
    if unknown:
        raise SystemExit(f"--resume {run_dir}: args.json has options that {parser.prog} does not take "
                         f"({', '.join(unknown)}); the run was made by another script")
    restore_args(args, saved, parser, RUNTIME_OPTIONS)
    return run_dir


def _check_options(args: argparse.Namespace) -> None:
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1 or args.eval_batch_size < 1:
        raise SystemExit("--batch_size and --eval_batch_size must be positive")
    if not 0.0 <= args.drop_path_prob < 1.0:
        raise SystemExit(f"--drop_path_prob must be in [0, 1), got {args.drop_path_prob}")


def start_run(args: argparse.Namespace, run_dir: Path | None, prefix: str) -> Path:
    """Create the run directory (or reuse a resumed one), start logging there and record the arguments."""
    resumed = run_dir is not None
    run_dir = run_dir if resumed else make_run_dir(args.save, prefix)
    if not resumed and any(run_dir.glob("fold*.json")):
        raise SystemExit(f"--save {args.save}: {run_dir} already contains a cross-validation run; pass "
                         f"--resume {run_dir} to continue it, or another --save directory")
    setup_logging(run_dir)
    logger.info("command: %s", " ".join(sys.argv))
    if resumed:
        logger.info("resuming the run in %s", run_dir)
    else:
        save_args(args, run_dir)
    return run_dir


# ---------------------------------------------------------------------------------------------
# Inputs: the FER2013 checkpoint, the data, the classes


@dataclass
class Source:
    """The network every fold starts from: its record and weights, on the CPU."""

    path: Path
    record: dict[str, Any]
    weights: dict[str, torch.Tensor]
    kind: str

    @property
    def classes(self) -> list[str]:
        return list(self.record["classes"])

    @property
    def train_size(self) -> int:
        return int(self.record["preprocessing"]["train_size"])

    @property
    def eval_size(self) -> int:
        return int(self.record["preprocessing"]["eval_size"])

    def build(self) -> NetworkFER:
        """Return a new network with the checkpoint's weights, on the CPU."""
        model = build_network(self.record, self.path)
        model.load_state_dict(self.weights)
        return model


def load_source(path: str) -> Source:
    """Read ``--checkpoint``; raise SystemExit naming the flag and the fix when it is missing or invalid."""
    if not path:
        raise SystemExit(f"--checkpoint is required: {CHECKPOINT_HINT}")
    if not Path(path).is_file():
        raise SystemExit(f"--checkpoint {path}: file not found; {CHECKPOINT_HINT}")
    try:
        _, checkpoint = load_network(path)
    except CheckpointError as error:
        raise SystemExit(f"--checkpoint {path}: {error}; {CHECKPOINT_HINT}") from None
    return Source(Path(path), checkpoint["network"], checkpoint["model"], str(checkpoint["kind"]))


def load_lab_data(loader: Callable[[str], LabDataset], path: str, image_size: int) -> LabDataset:
    """Read ``--data`` with ``loader``; raise SystemExit naming the flag when it fails.

    ``image_size`` is the size the checkpoint evaluates at, which the images must have.
    """
    if not Path(path).exists():
        raise SystemExit(f"--data {path}: no such file or folder; pass the h5 file written by "
                         "python -m dataloader.prepare, or the dataset's raw folder")
    try:
        dataset = loader(path)
    except (DatasetError, FileNotFoundError, OSError) as error:
        raise SystemExit(f"--data {path}: {error}") from None
    size = tuple(dataset.pixels.shape[1:])
    if size != (image_size, image_size):
        raise SystemExit(f"--data {path}: images are {size[0]}x{size[1]}, but the checkpoint's network evaluates "
                         f"{image_size}x{image_size} images")
    return dataset


def expression_key(name: str) -> str:
    """Return the canonical spelling of an expression name (``"anger"`` and ``"Angry"`` give ``"angry"``)."""
    lowered = name.strip().lower()
    return _CANONICAL.get(lowered, lowered)


def match_classes(source: Sequence[str], target: Sequence[str],
                  overrides: Mapping[str, str] | None = None) -> list[int | None]:
    """Return, for each target class, the index of the source class of the same expression, or None.

    ``overrides`` maps a target class name to the source class name it takes instead.
    """
    keys = [expression_key(name) for name in source]
    overrides = {key.lower(): value for key, value in (overrides or {}).items()}
    units: list[int | None] = []
    for name in target:
        requested = expression_key(overrides.get(name.lower(), name))
        units.append(keys.index(requested) if requested in keys else None)
    return units


def describe_mapping(source: Sequence[str], target: Sequence[str], units: Sequence[int | None]) -> str:
    """Return "anger<-Angry, contempt<-(new), ..." for the log."""
    return ", ".join(f"{name}<-{source[unit] if unit is not None else '(new)'}" for name, unit in zip(target, units))


def drop_class(dataset: LabDataset, folds: Sequence[Fold], name: str) -> tuple[LabDataset, list[Fold]]:
    """Remove the images of class ``name`` and the class itself; renumber labels and fold indices."""
    if name not in dataset.classes:
        return dataset, list(folds)
    removed = dataset.classes.index(name)
    keep = (dataset.labels != removed).numpy()
    new_index = np.cumsum(keep) - 1  # position of each kept image in the reduced dataset
    remaining = dataset.select(np.flatnonzero(keep))
    labels = remaining.labels - (remaining.labels > removed).to(torch.int64)
    reduced = replace(remaining, labels=labels, classes=[c for c in dataset.classes if c != name])
    renumbered = [Fold(new_index[fold.train[keep[fold.train]]], new_index[fold.test[keep[fold.test]]])
                  for fold in folds]
    return reduced, renumbered


def subject_overlap_count(folds: Sequence[Fold], subjects: torch.Tensor | None) -> int | None:
    """Return how many folds test a subject that also has training images, or None without subjects."""
    if subjects is None:
        return None
    ids = subjects.numpy()
    return sum(bool(np.intersect1d(ids[fold.test], ids[fold.train]).size) for fold in folds)


def folds_or_exit(build: Callable[[], list[Fold]], flag: str) -> list[Fold]:
    """Call a fold builder; turn its FoldError into SystemExit naming ``flag``."""
    try:
        return build()
    except FoldError as error:
        raise SystemExit(f"{flag}: {error}") from None


# ---------------------------------------------------------------------------------------------
# The network of a fold


def copy_head_rows(model: NetworkFER, units: Sequence[int | None]) -> None:
    """Replace the classifier (and auxiliary classifier) with one output per entry of ``units``.

    Output i starts from the old output ``units[i]`` (its weight row and bias), or from a fresh
    initialisation where ``units[i]`` is None.
    """
    old = [model.classifier]
    if model.auxiliary_head is not None:
        old.append(model.auxiliary_head.classifier)
    saved = [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in old]
    model.reset_classifier(len(units))
    new = [model.classifier]
    if model.auxiliary_head is not None:
        new.append(model.auxiliary_head.classifier)
    with torch.no_grad():
        for layer, (weight, bias) in zip(new, saved):
            for row, unit in enumerate(units):
                if unit is not None:
                    layer.weight[row] = weight[unit]
                    layer.bias[row] = bias[unit]


def drop_auxiliary_head(model: NetworkFER) -> None:
    """Remove the auxiliary head, so it costs no time and its network record stores ``auxiliary: false``."""
    model.auxiliary_head = None
    model.auxiliary = False


def build_model(source: Source, num_classes: int, units: Sequence[int | None] | None, auxiliary: bool) -> NetworkFER:
    """Return the checkpoint's network with a head for ``num_classes`` classes, on the CPU.

    ``units`` None re-initialises the head; otherwise output i starts from the checkpoint's
    output ``units[i]`` (see ``copy_head_rows``).
    """
    model = source.build()
    if not auxiliary and model.auxiliary_head is not None:
        drop_auxiliary_head(model)
    if units is None:
        model.reset_classifier(num_classes)
    else:
        copy_head_rows(model, units)
    return model


# ---------------------------------------------------------------------------------------------
# Cross-validation


@dataclass
class Task:
    """A dataset, its folds and how the head is set up: what ``cross_validate`` runs."""

    name: str  # the dataset, for logs: CK+48, JAFFE
    dataset: LabDataset
    folds: list[Fold]
    protocol: str  # the --folds value
    notes: list[str]  # what the folds guarantee and what they do not
    head_units: list[int | None] | None  # None: re-initialise the head
    info: dict[str, Any] = field(default_factory=dict)  # extra fields for folds.json and summary.json

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.classes)

    def head_description(self, source: Source) -> str:
        if self.head_units is None:
            return f"re-initialised for the {len(self.classes)} classes {', '.join(self.classes)}"
        return "kept from the checkpoint, outputs mapped by class name: " + describe_mapping(
            source.classes, self.classes, self.head_units)


def check_fold_choice(fold: int, count: int, name: str, protocol: str) -> None:
    """Raise SystemExit when ``--fold`` is not -1 or a fold number."""
    if fold != -1 and not 0 <= fold < count:
        raise SystemExit(f"--fold {fold} is out of range: {name} with --folds {protocol} has {count} folds, "
                         f"numbered 0..{count - 1}; pass one of those, or -1 for every fold")


@dataclass
class RunContext:
    """Device and precision settings of one run."""

    device: torch.device
    memory_format: torch.memory_format
    autocast: Autocast


def make_context(args: argparse.Namespace) -> RunContext:
    """Select the device, thread count and precision from the arguments."""
    device = select_device(args.device)
    configure_cpu(args.threads)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    return RunContext(device, memory_format, autocast_factory(device, args.amp))


def fold_seed(seed: int, number: int) -> int:
    """Return the seed of fold ``number``, so each fold runs alike whether or not earlier folds ran."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1, np.uint32)[0])


def _fold_file(run_dir: Path, number: int, suffix: str) -> Path:
    return run_dir / f"fold_{number:02d}{suffix}"


def _predictions_to_json(pred: Predictions) -> dict[str, list]:
    return {"probs": pred.probs.tolist(), "labels": pred.labels.tolist(), "indices": pred.indices.tolist()}


def _predictions_from_json(data: dict[str, list], classes: int) -> Predictions:
    probs = torch.tensor(data["probs"], dtype=torch.float32).reshape(-1, classes)
    return Predictions(probs, torch.tensor(data["labels"], dtype=torch.int64),
                       torch.tensor(data["indices"], dtype=torch.int64))


@dataclass
class FoldRun:
    """Everything one fold trains with, and its progress."""

    number: int
    model: NetworkFER
    train: TensorBatches
    test: TensorBatches
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs completed
    best_acc: float = -1.0
    best_epoch: int = -1

    def checkpoint(self, task: Task, args: argparse.Namespace, crop: int, eval_size: int,
                   progress: bool) -> dict[str, Any]:
        """Return the fold's state as a checkpoint; ``progress`` adds what resuming needs."""
        payload: dict[str, Any] = {
            "kind": KIND,
            "network": network_record(self.model, task.classes, crop, eval_size),
            "model": self.model.state_dict(),
            "dataset": task.name,
            "fold": self.number,
            "epoch": self.epoch,
            "args": vars(args),
        }
        if progress:
            payload.update({
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "train_batches": self.train.state_dict(),
                "rng": rng_state(),
                "best_acc": self.best_acc,
                "best_epoch": self.best_epoch,
            })
        return payload

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Restore the model, optimizer, schedule, batch order, random state and progress."""
        restore_training(checkpoint, self.model, self.optimizer, self.scheduler, self.scaler)
        self.train.load_state_dict(checkpoint["train_batches"])
        set_rng_state(checkpoint["rng"])
        self.epoch = int(checkpoint["epoch"])
        self.best_acc = float(checkpoint["best_acc"])
        self.best_epoch = int(checkpoint["best_epoch"])


def _new_fold_run(task: Task, source: Source, args: argparse.Namespace, context: RunContext, number: int,
                  fold: Fold) -> FoldRun:
    seed = fold_seed(args.seed, number)
    seed_everything(seed)
    model = build_model(source, len(task.classes), task.head_units, args.auxiliary)
    model = model.to(device=context.device, memory_format=context.memory_format)
    pixels, labels = task.dataset.pixels, task.dataset.labels
    jitter = args.jitter if args.color_jitter else 0.0
    augment = make_augment(crop=source.train_size, flip=True, brightness=jitter, contrast=jitter)
    train = TensorBatches(pixels, labels, args.batch_size, shuffle=True, device=context.device, augment=augment,
                          seed=seed, indices=torch.from_numpy(fold.train), memory_format=context.memory_format)
    test = TensorBatches(pixels, labels, args.eval_batch_size, shuffle=False, device=context.device,
                         indices=torch.from_numpy(fold.test), memory_format=context.memory_format)
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = cosine_scheduler(optimizer, args.epochs, args.learning_rate_min)
    return FoldRun(number, model, train, test, optimizer, scheduler, grad_scaler(context.device, args.amp))


def _train_fold(run: FoldRun, task: Task, source: Source, args: argparse.Namespace, context: RunContext,
                run_dir: Path, metrics: MetricsCSV) -> Predictions:
    """Train the fold from ``run.epoch`` to the last epoch; return the last epoch's test predictions."""
    last_path = _fold_file(run_dir, run.number, "_last.pt")
    aux_weight = args.auxiliary_weight if run.model.auxiliary_head is not None else 0.0
    evaluate_each = args.test_every_epoch or args.report_best_epoch
    final: Predictions | None = None
    for epoch in range(run.epoch, args.epochs):
        lr = run.scheduler.get_last_lr()[0]
        run.model.drop_path_prob = drop_path_at(args.drop_path_prob, epoch, args.epochs)
        result = train_one_epoch(run.model, run.train, run.optimizer, epoch=epoch, aux_weight=aux_weight,
                                 grad_clip=args.grad_clip, autocast=context.autocast, scaler=run.scaler,
                                 report_freq=args.report_freq, progress=args.progress, total=len(run.train))
        run.scheduler.step()
        run.epoch = epoch + 1

        last = run.epoch == args.epochs
        test = predict(run.model, run.test, autocast=context.autocast) if evaluate_each or last else None
        if test is not None and test.accuracy > run.best_acc:
            run.best_acc, run.best_epoch = test.accuracy, epoch
        if last:
            final = test
        metrics.append({"fold": run.number, "epoch": epoch, "lr": lr, "drop_path_prob": run.model.drop_path_prob,
                        "train_loss": result.loss, "train_acc": result.acc,
                        "test_acc": test.accuracy if test is not None else "", "seconds": result.seconds,
                        "images_per_second": result.images_per_second})
        logger.info("fold %d epoch %d/%d: lr %.5f, train loss %.4f acc %.2f%%, test %s, %.1f images/s", run.number,
                    epoch, args.epochs - 1, lr, result.loss, result.acc,
                    f"{test.accuracy:.2f}%" if test is not None else "not evaluated", result.images_per_second)
        atomic_save(run.checkpoint(task, args, source.train_size, source.eval_size, progress=True), last_path)
    if final is None:  # resumed after the last epoch had been saved
        final = predict(run.model, run.test, autocast=context.autocast)
    return final


def _run_fold(task: Task, source: Source, args: argparse.Namespace, context: RunContext, run_dir: Path,
              metrics: MetricsCSV, number: int) -> dict[str, Any]:
    """Fine-tune and evaluate one fold, write ``fold_NN.json`` and return its content."""
    fold = task.folds[number]
    run = _new_fold_run(task, source, args, context, number, fold)
    last_path = _fold_file(run_dir, number, "_last.pt")
    if last_path.is_file():
        run.restore(load_checkpoint(last_path, kind=KIND, required=["optimizer", "rng", "train_batches"]))
        logger.info("fold %d: resumed after epoch %d from %s", number, run.epoch - 1, last_path)
    logger.info("fold %d: %d training and %d test images", number, len(fold.train), len(fold.test))

    plain = _train_fold(run, task, source, args, context, run_dir, metrics)
    result: dict[str, Any] = {"fold": number, "epochs": args.epochs, "train_images": len(fold.train),
                              "test_images": len(fold.test), "accuracy": plain.accuracy,
                              "predictions": {"plain": _predictions_to_json(plain)}}
    message = f"fold {number}: last-epoch accuracy {plain.accuracy:.2f}% on {len(fold.test)} images"
    if args.tta == "tencrop":
        tencrop = predict(run.model, run.test, autocast=context.autocast, tta="tencrop", crop=source.train_size)
        result["accuracy_tencrop"] = tencrop.accuracy
        result["predictions"]["tencrop"] = _predictions_to_json(tencrop)
        message += f", ten-crop {tencrop.accuracy:.2f}%"
    if args.report_best_epoch:
        result["best_epoch_selected_on_test"] = {"epoch": run.best_epoch, "accuracy": run.best_acc}
        message += f"; best epoch {run.best_epoch} (selected on test) {run.best_acc:.2f}%"
    logger.info(message)

    if args.save_fold_checkpoints:
        path = atomic_save(run.checkpoint(task, args, source.train_size, source.eval_size, progress=False),
                           _fold_file(run_dir, number, ".pt"))
        logger.info("fold %d: saved %s", number, path)
    write_json(result, _fold_file(run_dir, number, ".json"))
    last_path.unlink(missing_ok=True)
    return result


def _write_folds(task: Task, args: argparse.Namespace, run_dir: Path) -> None:
    """Write folds.json, or check that a resumed run's folds.json has the same folds."""
    path = run_dir / "folds.json"
    if path.is_file():
        saved = folds_from_json(path)
        same = len(saved) == len(task.folds) and all(
            np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test) for a, b in zip(saved, task.folds))
        if not same:
            raise SystemExit(f"--resume {run_dir}: the folds built from --data {args.data} differ from {path}; "
                             "resume with the data (and seed) the run started with")
        return
    folds_to_json(task.folds, path, dataset=task.name, protocol=task.protocol, seed=args.seed,
                  images=len(task.dataset), classes=task.classes, notes=task.notes, **task.info)


def _open_metrics(run_dir: Path, epochs_done: dict[int, int]) -> MetricsCSV:
    """Open metrics.csv, keeping the rows of epochs that finished folds or saved fold states contain."""
    path = run_dir / "metrics.csv"
    rows: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="") as file:
            rows = [row for row in csv.DictReader(file)
                    if int(row["epoch"]) < epochs_done.get(int(row["fold"]), 0)]
    metrics = MetricsCSV(path, METRIC_FIELDS)
    for row in rows:
        metrics.append(row)
    return metrics


def _epochs_done(run_dir: Path, folds: Sequence[int], epochs: int) -> dict[int, int]:
    done: dict[int, int] = {}
    for number in folds:
        if _fold_file(run_dir, number, ".json").is_file():
            done[number] = epochs
        elif _fold_file(run_dir, number, "_last.pt").is_file():
            done[number] = int(load_checkpoint(_fold_file(run_dir, number, "_last.pt"), kind=KIND)["epoch"])
    return done


def cross_validate(task: Task, source: Source, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Fine-tune every fold of ``task`` (or only ``args.fold``), skipping finished folds, then summarise."""
    context = make_context(args)
    seed_everything(args.seed)
    selected = list(range(len(task.folds))) if args.fold == -1 else [args.fold]
    logger.info("%s", format_counts(task.dataset))
    logger.info("checkpoint %s (stage %s): C=%d, %d layers, auxiliary head %s, classes %s", source.path,
                source.kind, source.record["init_channels"], source.record["layers"],
                "yes" if source.record["auxiliary"] else "no", ", ".join(source.classes))
    logger.info("head: %s", task.head_description(source))
    logger.info("folds: %s, %d folds; %s", task.protocol, len(task.folds), " ".join(task.notes))
    _write_folds(task, args, run_dir)

    metrics = _open_metrics(run_dir, _epochs_done(run_dir, selected, args.epochs))
    results = []
    for number in selected:
        done = _fold_file(run_dir, number, ".json")
        if done.is_file():
            logger.info("fold %d: finished earlier, read from %s", number, done)
            results.append(json.loads(done.read_text()))
            continue
        results.append(_run_fold(task, source, args, context, run_dir, metrics, number))
    return summarise(task, source, args, run_dir, results)


# ---------------------------------------------------------------------------------------------
# Reports


def mean_and_std(values: Sequence[float]) -> dict[str, float | None]:
    """Return the mean and the sample standard deviation (ddof=1; None for one value, where it is undefined)."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return {"mean": float(array.mean()), "std": std}


def _format_std(std: float | None) -> str:
    return "n/a (one fold)" if std is None else f"{std:.2f}%"


def _pooled(results: Sequence[dict[str, Any]], view: str, classes: Sequence[str]) -> dict[str, Any]:
    """Return the classification summary of every fold's predictions together (confusion summed over folds)."""
    parts = [_predictions_from_json(r["predictions"][view], len(classes)) for r in results]
    probs = torch.cat([p.probs for p in parts])
    labels = torch.cat([p.labels for p in parts])
    return classification_summary(probs, labels, classes)


def _fold_table(results: Sequence[dict[str, Any]]) -> str:
    header = "fold  images  accuracy"
    has_tencrop = "accuracy_tencrop" in results[0]
    has_best = "best_epoch_selected_on_test" in results[0]
    header += "  ten-crop" * has_tencrop + "  best epoch (selected on test)" * has_best
    lines = [header]
    for r in results:
        line = f"{r['fold']:>4}  {r['test_images']:>6}  {r['accuracy']:>7.2f}%"
        if has_tencrop:
            line += f"  {r['accuracy_tencrop']:>7.2f}%"
        if has_best:
            best = r["best_epoch_selected_on_test"]
            line += f"  {best['accuracy']:>7.2f}% at epoch {best['epoch']}"
        lines.append(line)
    return "\n".join(lines)


def summarise(task: Task, source: Source, args: argparse.Namespace, run_dir: Path,
              results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Write summary.json and confusion.png from the fold results, log them as text and return the summary."""
    classes = task.classes
    tested = np.concatenate([np.asarray(r["predictions"]["plain"]["indices"], dtype=np.int64) for r in results])
    counts = np.bincount(tested, minlength=len(task.dataset))
    all_folds = fold_coverage(task.folds, len(task.dataset))
    summary: dict[str, Any] = {
        "dataset": task.name,
        "data": str(args.data),
        "checkpoint": str(source.path),
        "head": task.head_description(source),
        "classes": classes,
        "protocol": {"folds": task.protocol, "count": len(task.folds), "notes": task.notes,
                     "coverage_of_all_folds": asdict(all_folds), **task.info},
        "folds_run": [int(r["fold"]) for r in results],
        "complete": len(results) == len(task.folds),
        "epochs": args.epochs,
        "reported": "each fold's last epoch, evaluated on its held-out images at full size",
        "tested_images": {"distinct": int(np.count_nonzero(counts)), "tested_once": int(np.sum(counts == 1)),
                          "tested_more_than_once": int(np.sum(counts > 1)), "of": len(task.dataset)},
        "per_fold": [{key: r[key] for key in ("fold", "test_images", "accuracy", "accuracy_tencrop",
                                              "best_epoch_selected_on_test") if key in r} for r in results],
        "accuracy": mean_and_std([r["accuracy"] for r in results]),
        "std_kind": "sample standard deviation over folds (ddof=1)",
        "summed_over_folds": {"plain": _pooled(results, "plain", classes)},
    }
    if args.tta == "tencrop":
        summary["accuracy_tencrop"] = mean_and_std([r["accuracy_tencrop"] for r in results])
        summary["summed_over_folds"]["tencrop"] = _pooled(results, "tencrop", classes)
    if args.report_best_epoch:
        best = [r["best_epoch_selected_on_test"]["accuracy"] for r in results]
        summary["best_epoch_selected_on_test"] = {
            **mean_and_std(best), "warning": "the epoch is selected on the test images; this is no unbiased estimate"}
    write_json(summary, run_dir / "summary.json")

    pooled = summary["summed_over_folds"]["plain"]
    accuracy = summary["accuracy"]
    folds_text = f"{len(results)} of {len(task.folds)} {task.protocol} folds"
    logger.info("%s, %s, last epoch (%d) of each fold:\n%s", task.name, folds_text, args.epochs, _fold_table(results))
    logger.info("accuracy over %d fold(s): mean %.2f%%, sample standard deviation %s", len(results),
                accuracy["mean"], _format_std(accuracy["std"]))
    if args.tta == "tencrop":
        logger.info("ten-crop accuracy over folds: mean %.2f%%, standard deviation %s",
                    summary["accuracy_tencrop"]["mean"], _format_std(summary["accuracy_tencrop"]["std"]))
    if args.report_best_epoch:
        logger.info("best epoch per fold, SELECTED ON TEST: mean %.2f%%, standard deviation %s",
                    summary["best_epoch_selected_on_test"]["mean"],
                    _format_std(summary["best_epoch_selected_on_test"]["std"]))
    logger.info("summed over folds (%d predictions of %d distinct images; %s):\n%s", pooled["images"],
                summary["tested_images"]["distinct"], " ".join(task.notes), format_summary(pooled, classes))
    plot_confusion(pooled["confusion"], classes, run_dir / "confusion.png",
                   title=f"{task.name}, {folds_text}, last epoch, summed over folds: "
                         f"{accuracy['mean']:.2f}% +- {_format_std(accuracy['std'])} (mean over folds)")
    return summary


def zero_shot(source: Source, dataset: LabDataset, name: str, args: argparse.Namespace,
              run_dir: Path) -> dict[str, Any]:
    """Evaluate the checkpoint on every image of ``dataset`` without training, classes matched by name.

    Only the checkpoint's outputs whose class occurs in the dataset take part in the argmax,
    renormalised over those outputs. Writes summary.json and confusion.png and logs the report.
    """
    units = match_classes(source.classes, dataset.classes)
    missing = [label for label, unit in zip(dataset.classes, units) if unit is None]
    if missing:
        raise SystemExit(f"--zero_shot: the checkpoint {source.path} has no output for the class(es) "
                         f"{', '.join(missing)} (its classes: {', '.join(source.classes)}); pass a FER2013 checkpoint")
    context = make_context(args)
    model = source.build().to(device=context.device, memory_format=context.memory_format)
    batches = TensorBatches(dataset.pixels, dataset.labels, args.eval_batch_size, shuffle=False,
                            device=context.device, memory_format=context.memory_format)
    logger.info("%s", format_counts(dataset))
    logger.info("zero-shot: checkpoint %s (stage %s) on %s, outputs mapped by class name: %s", source.path,
                source.kind, name, describe_mapping(source.classes, dataset.classes, units))
    views = {"plain": predict(model, batches, autocast=context.autocast)}
    if args.tta == "tencrop":
        views["tencrop"] = predict(model, batches, autocast=context.autocast, tta="tencrop", crop=source.train_size)

    summary: dict[str, Any] = {"dataset": name, "data": str(args.data), "checkpoint": str(source.path),
                               "protocol": "zero-shot: no training, every image tested once", "classes":
                               dataset.classes, "mapping": describe_mapping(source.classes, dataset.classes, units)}
    for view, pred in views.items():
        probs = pred.probs[:, units]
        probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
        summary[view] = classification_summary(probs, pred.labels, dataset.classes)
        logger.info("zero-shot %s (%s):\n%s", name, view, format_summary(summary[view], dataset.classes))
    write_json(summary, run_dir / "summary.json")
    plotted = "tencrop" if args.tta == "tencrop" else "plain"
    plot_confusion(summary[plotted]["confusion"], dataset.classes, run_dir / "confusion.png",
                   title=f"{name} zero-shot ({plotted}): {summary[plotted]['accuracy']:.2f}%")
    return summary
