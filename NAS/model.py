"""The evaluation network: a stack of cells built from one genotype, trained from scratch.

The layout follows the DARTS evaluation network for small images: a 3x3 stem with 3*C
channels, ``layers`` cells with reduction cells (channels doubled, size halved) at
``layers // 3`` and ``2 * layers // 3``, global average pooling and a linear classifier. An
optional auxiliary head reads the output of the second reduction cell. On FER2013 that output
is 11x11 for a 44x44 crop and 12x12 for the full 48x48 image, so the head pools globally after
its convolutions instead of assuming the 8x8 maps of CIFAR.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from NAS.genotypes import Genotype, validate
from NAS.operations import FactorizedReduce, Identity, ReLUConvBN, build_op


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of ``x`` with probability ``drop_prob`` and scale the rest by
    1 / (1 - drop_prob), so the expected value is unchanged. The mask is made on x's device."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class Cell(nn.Module):
    """One cell of the evaluation network: the genotype's eight operations on four nodes."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.inputs = [index for _, index in edges]
        self.concat = list(concat)
        self.multiplier = len(self.concat)
        self.ops = nn.ModuleList(
            build_op(name, C, 2 if reduction and index < 2 else 1, affine=True) for name, index in edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(len(self.ops) // 2):
            total = None
            for edge in (2 * node, 2 * node + 1):
                op = self.ops[edge]
                h = op(states[self.inputs[edge]])
                if self.training and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on the second reduction cell's output, for any map of at least 5x5."""

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 6:
            raise ValueError(f"the auxiliary head needs maps of at least 6x6, got {tuple(x.shape[-2:])}; "
                             "use larger inputs or --no-auxiliary")
        return self.classifier(self.features(x).flatten(1))


class NetworkFER(nn.Module):
    """The evaluation network for one-channel face images.

    ``forward`` returns the logits, or ``(logits, auxiliary_logits)`` in training mode when the
    auxiliary head is on. Set ``drop_path_prob`` before each training epoch.
    """

    def __init__(self, genotype: Genotype | Sequence, C: int = 36, num_classes: int = 7, layers: int = 12,
                 auxiliary: bool = True, in_channels: int = 1, stem_multiplier: int = 3) -> None:
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers must be at least 3 (two of them are reduction cells), got {layers}")
        if C < 2 or C % 2:
            raise ValueError(f"C must be an even number of at least 2, got {C}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.genotype = validate(genotype)
        self.C = C
        self.layers = layers
        self.auxiliary = auxiliary
        self.num_classes = num_classes
        self.drop_path_prob = 0.0
        self.aux_position = 2 * layers // 3

        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        C_aux = 0
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = Cell(self.genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_position:
                C_aux = C_prev
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        if logits_aux is not None:
            return logits, logits_aux
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (and the auxiliary classifier) with fresh ones for ``num_classes``."""
        device = self.classifier.weight.device
        self.classifier = nn.Linear(self.classifier.in_features, num_classes).to(device)
        if self.auxiliary_head is not None:
            in_features = self.auxiliary_head.classifier.in_features
            self.auxiliary_head.classifier = nn.Linear(in_features, num_classes).to(device)
        self.num_classes = num_classes

    def parameter_count(self, auxiliary: bool = False) -> int:
        """Return the number of parameters, without the auxiliary head unless ``auxiliary``."""
        total = sum(p.numel() for p in self.parameters())
        if not auxiliary and self.auxiliary_head is not None:
            total -= sum(p.numel() for p in self.auxiliary_head.parameters())
        return total


def multiply_adds(model: nn.Module, input_size: int, in_channels: int = 1) -> int:
    """Return the multiply-adds of convolutions and linear layers for one image in eval mode."""
    total = 0

    def conv_hook(module: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
        total += output.numel() // output.shape[0] * kernel

    def linear_hook(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        with torch.no_grad():
            model(parameter.new_zeros((1, in_channels, input_size, input_size)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total
