"""Self-describing network checkpoints: everything needed to rebuild an evaluation network.

Every stage that trains a ``NetworkFER`` stores a ``network`` record beside the weights: the
genotype (as lists), C, layers, auxiliary head, class names and the input preprocessing. Later
stages (relabeling, ensembles, fine-tuning, prediction) rebuild the network from the file alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from dataloader.batches import PREPROCESSING
from NAS import genotypes as genotype_io
from NAS.model import NetworkFER
from tools.checkpoint import CheckpointError, load_checkpoint

# Stages whose checkpoints hold a trained NetworkFER.
NETWORK_KINDS = ("retrain", "relabel", "finetune")
RECORD_FIELDS = ("genotype", "init_channels", "layers", "auxiliary", "classes", "preprocessing")


def network_record(model: NetworkFER, classes: Sequence[str], train_size: int, eval_size: int) -> dict[str, Any]:
    """Return the plain-type description of ``model`` stored in checkpoints."""
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a network with {model.num_classes} outputs")
    return {
        "genotype": genotype_io.to_dict(model.genotype),
        "init_channels": model.C,
        "layers": model.layers,
        "auxiliary": model.auxiliary,
        "classes": list(classes),
        "preprocessing": {"channels": 1, "train_size": int(train_size), "eval_size": int(eval_size),
                          **PREPROCESSING},
    }


def build_network(record: dict[str, Any], source: str | Path = "checkpoint") -> NetworkFER:
    """Build an untrained network from a ``network`` record."""
    missing = [field for field in RECORD_FIELDS if field not in record]
    if missing:
        raise CheckpointError(f"{source}: the network record lacks {', '.join(missing)}")
    try:
        genotype = genotype_io.from_dict(record["genotype"])
    except genotype_io.GenotypeError as error:
        raise CheckpointError(f"{source}: invalid genotype: {error}") from None
    return NetworkFER(genotype, int(record["init_channels"]), len(record["classes"]), int(record["layers"]),
                      auxiliary=bool(record["auxiliary"]))


def load_network(path: str | Path, device: torch.device | str = "cpu",
                 memory_format: torch.memory_format = torch.contiguous_format) -> tuple[NetworkFER, dict[str, Any]]:
    """Load a trained network from any stage's checkpoint; return (model in eval mode, checkpoint)."""
    checkpoint = load_checkpoint(path, kind=NETWORK_KINDS, required=["network", "model"])
    model = build_network(checkpoint["network"], path)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path}: the weights do not fit the network it describes ({error})") from None
    model = model.to(device=device, memory_format=memory_format)
    model.eval()
    return model, checkpoint
