"""Training and evaluation loops shared by every stage."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tools.experiment import AccuracyMeter, AverageMeter
from tools.runtime import autocast_or_null

logger = logging.getLogger(__name__)

Autocast = Callable[[], ContextManager[Any]] | None


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
