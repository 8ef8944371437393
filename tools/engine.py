"""Training and evaluation loops shared by every stage."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tools.experiment import AccuracyMeter, AverageMeter
from tools.runtime import autocast_or_null

logger = logging.getLogger(__name__)

Autocast = Callable[[], ContextManager[Any]] | None
# Maps (logits, labels, dataset indices) of a training batch to the targets of the loss.
TargetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TTA_CHOICES = ("none", "tencrop")


@dataclass
class SearchEpochResult:
    train_loss: float
    train_acc: float
    arch_loss: float
    arch_acc: float
    seconds: float
    images: int


def search_one_epoch(model: nn.Module, architect: Any, weight_batches: Iterable, arch_batches: Iterable,
                     optimizer: torch.optim.Optimizer, lr: float, grad_clip: float, *, epoch: int,
                     autocast: Autocast = None, report_freq: int = 50, progress: bool = True,
                     total: int | None = None) -> SearchEpochResult:
    """Run one search epoch: for each pair of batches, one architecture step on the
    architecture-half batch, then one SGD step of the network weights on the weight-half batch."""
    model.train()
    train_loss, arch_loss = AverageMeter(), AverageMeter()
    train_acc, arch_acc = AccuracyMeter(), AccuracyMeter()
    start = time.perf_counter()
    images = 0
    bar = tqdm(total=total, desc=f"search epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    weight_parameters = list(model.weight_parameters())
    for step, ((x, y, _), (x_arch, y_arch, _)) in enumerate(zip(weight_batches, arch_batches)):
        loss_a, logits_a = architect.step(x, y, x_arch, y_arch, lr, optimizer)
        arch_loss.update(float(loss_a), y_arch.numel())
        arch_acc.update(logits_a, y_arch)

        optimizer.zero_grad(set_to_none=True)
        with autocast_or_null(autocast):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        nn.utils.clip_grad_norm_(weight_parameters, grad_clip)
        optimizer.step()

        train_loss.update(float(loss.detach()), y.numel())
        train_acc.update(logits.detach(), y)
        images += y.numel()
        bar.update(1)
        if report_freq and step % report_freq == 0:
            elapsed = time.perf_counter() - start
            logger.info("search epoch %d step %d: train loss %.4f acc %.2f%%, arch loss %.4f acc %.2f%%, "
                        "%.1f images/s", epoch, step, train_loss.average, train_acc.percent, arch_loss.average,
                        arch_acc.percent, images / max(elapsed, 1e-9))
    bar.close()
    return SearchEpochResult(train_loss.average, train_acc.percent, arch_loss.average, arch_acc.percent,
                             time.perf_counter() - start, images)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, *, autocast: Autocast = None,
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """Return (mean cross-entropy, top-1 accuracy in percent) of ``model`` in eval mode."""
    model.eval()
    loss_meter, acc = AverageMeter(), AccuracyMeter()
    for x, y, _ in batches:
        if transform is not None:
            x = transform(x)
        with autocast_or_null(autocast):
            logits = model(x)
        logits = logits[0] if isinstance(logits, tuple) else logits
        loss_meter.update(float(F.cross_entropy(logits.float(), y)), y.numel())
        acc.update(logits, y)
    return loss_meter.average, acc.percent


@dataclass
class TrainEpochResult:
    loss: float
    acc: float
    seconds: float
    images: int

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, *, epoch: int,
                    aux_weight: float = 0.0, grad_clip: float = 5.0, autocast: Autocast = None,
                    scaler: torch.amp.GradScaler | None = None, target_fn: TargetFn | None = None,
                    report_freq: int = 50, progress: bool = True, total: int | None = None) -> TrainEpochResult:
    """Train ``model`` for one pass over ``batches`` of (images, labels, indices).

    The loss is cross-entropy against ``target_fn(logits, labels, indices)`` when given, and
    against the labels otherwise. The relabeling stage changes targets through ``target_fn``.
    Auxiliary logits, when the model returns them, add ``aux_weight`` times the same loss. The
    reported accuracy is always measured against the original labels.
    """
    model.train()
    loss_meter, acc = AverageMeter(), AccuracyMeter()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    start = time.perf_counter()
    images = 0
    bar = tqdm(total=total, desc=f"epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for step, (x, y, indices) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        with autocast_or_null(autocast):
            output = model(x)
        logits, logits_aux = output if isinstance(output, tuple) else (output, None)
        logits = logits.float()
        targets = y if target_fn is None else target_fn(logits.detach(), y, indices)
        loss = F.cross_entropy(logits, targets)
        if logits_aux is not None and aux_weight:
            loss = loss + aux_weight * F.cross_entropy(logits_aux.float(), targets)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(parameters, grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, grad_clip)
            optimizer.step()

        loss_meter.update(float(loss.detach()), y.numel())
        acc.update(logits.detach(), y)
        images += y.numel()
        bar.update(1)
        if report_freq and step % report_freq == 0:
            logger.info("epoch %d step %d: loss %.4f, train acc %.2f%%, %.1f images/s", epoch, step,
                        loss_meter.average, acc.percent, images / max(time.perf_counter() - start, 1e-9))
    bar.close()
    return TrainEpochResult(loss_meter.average, acc.percent, time.perf_counter() - start, images)


def ten_crop(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Return the ten ``size`` x ``size`` views of a batch (N, C, H, W): top-left, top-right,
    bottom-left, bottom-right and centre crops, then the same five mirrored left to right."""
    height, width = x.shape[-2:]
    if not 0 < size <= min(height, width):
        raise ValueError(f"ten-crop size {size} must be in 1..{min(height, width)} for images of {height}x{width}")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (top, left)]
    crops = [x[..., r:r + size, c:c + size] for r, c in corners]
    return crops + [crop.flip(-1) for crop in crops]


@dataclass
class Predictions:
    """Softmax outputs of one model (or ensemble) on one split, on the CPU."""

    probs: torch.Tensor  # float32 (N, classes)
    labels: torch.Tensor  # int64 (N,)
    indices: torch.Tensor  # int64 (N,), positions in the split

    @property
    def accuracy(self) -> float:
        if not len(self.labels):
            return 0.0
        return 100.0 * float((self.probs.argmax(1) == self.labels).float().mean())


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, *, autocast: Autocast = None, tta: str = "none",
            crop: int = 44, logits: bool = False) -> Predictions:
    """Return the model's softmax outputs (or raw logits) over ``batches`` in eval mode.

    ``tta="tencrop"`` averages the softmax (or logits) of the ten ``crop`` x ``crop`` views.
    """
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta {tta!r} is invalid; use one of {', '.join(TTA_CHOICES)}")
    model.eval()
    outputs, labels, indices = [], [], []
    for x, y, index in batches:
        views: Sequence[torch.Tensor] = ten_crop(x, crop) if tta == "tencrop" else [x]
        total = None
        for view in views:
            with autocast_or_null(autocast):
                out = model(view)
            out = out[0] if isinstance(out, tuple) else out
            out = out.float() if logits else F.softmax(out.float(), dim=1)
            total = out if total is None else total + out
        outputs.append((total / len(views)).cpu())
        labels.append(y.cpu())
        indices.append(index.cpu())
    if not outputs:
        return Predictions(torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    return Predictions(torch.cat(outputs), torch.cat(labels), torch.cat(indices))
