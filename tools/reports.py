"""Classification reports: accuracy, per-class accuracy, macro F1 and confusion matrices."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score

logger = logging.getLogger(__name__)


def classification_summary(probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                           mask: torch.Tensor | None = None) -> dict[str, Any]:
    """Return accuracy, per-class accuracy, macro F1 and the confusion matrix (rows: true class)
    of the predictions ``probs.argmax(1)``, optionally restricted to the images where ``mask``."""
    predicted = probs.argmax(1).cpu().numpy()
    truth = labels.cpu().numpy()
    if mask is not None:
        keep = mask.cpu().numpy().astype(bool)
        predicted, truth = predicted[keep], truth[keep]
    indices = list(range(len(classes)))
    matrix = confusion_matrix(truth, predicted, labels=indices) if len(truth) else np.zeros((len(classes),) * 2, int)
    totals = matrix.sum(axis=1)
    per_class = {name: (float(100.0 * matrix[i, i] / totals[i]) if totals[i] else None)
                 for i, name in enumerate(classes)}
    return {
        "images": int(len(truth)),
        "accuracy": float(100.0 * (predicted == truth).mean()) if len(truth) else 0.0,
        "macro_f1": float(f1_score(truth, predicted, labels=indices, average="macro", zero_division=0))
        if len(truth) else 0.0,
        "per_class_accuracy": per_class,
        "confusion": matrix.tolist(),
    }


def format_summary(summary: dict[str, Any], classes: Sequence[str]) -> str:
    """Return per-class accuracy and the confusion matrix as aligned text."""
    width = max(len(name) for name in classes) + 1
    lines = [f"accuracy {summary['accuracy']:.2f}% on {summary['images']} images, macro F1 {summary['macro_f1']:.4f}",
             " " * width + "".join(f"{name[:7]:>8}" for name in classes) + "  per-class acc"]
    for i, name in enumerate(classes):
        row = summary["confusion"][i]
        value = summary["per_class_accuracy"][name]
        lines.append(f"{name:<{width}}" + "".join(f"{v:>8d}" for v in row)
                     + (f"  {value:6.2f}%" if value is not None else "       -"))
    return "\n".join(lines)


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                   title: str = "") -> Path:
    """Draw a confusion matrix (rows: true class, normalised per row, with counts) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion, dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    figure, axes = plt.subplots(figsize=(1.0 + 0.9 * len(classes), 0.8 + 0.8 * len(classes)))
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(classes)):
        for j in range(len(classes)):
            axes.text(j, i, f"{share[i, j]:.2f}\n({int(matrix[i, j])})", ha="center", va="center", fontsize=7,
                      color="white" if share[i, j] > 0.5 else "black")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if title:
        axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
