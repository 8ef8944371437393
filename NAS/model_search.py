"""The supernet that the search trains: every edge of a cell mixes all candidate operations.

Each cell type (normal, reduce) has 14 edges: node ``j`` (0..3) reads the two cell inputs and
the ``j`` earlier nodes. Every edge is in one of three states, stored in ``decisions``:

* ``UNDECIDED`` (-1): the edge computes the softmax-weighted sum of all operations but ``none``
  (``none`` contributes zero, so it costs nothing);
* ``PRUNED`` (0, the index of ``none``): the edge computes nothing;
* ``k > 0``: the edge was decided for ``PRIMITIVES[k]`` and runs that operation alone.

The architecture weights are registered parameters, one vector per edge, so a decided edge
can be frozen on its own by turning off its ``requires_grad``.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from NAS.operations import (PRIMITIVES, FactorizedReduce, ReLUConvBN, SepConv, build_op, count_parameters,
                            leads_with_relu, scaled_forward)

NODES = 4
EDGES = sum(2 + node for node in range(NODES))
UNDECIDED = -1
PRUNED = 0
CELL_TYPES = ("normal", "reduce")


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient dense in the input's memory format.

    The gradient that reaches a node through ``torch.cat`` is a channel slice, which is not dense
    in channels-last memory. Batch-norm backward on such a slice takes a much slower path on
    the CPU, so one copy here saves time in every operation of the node.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.memory_format = (torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                             and not x.is_contiguous() else torch.contiguous_format)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=ctx.memory_format)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the sum of ``a * b``, without an intermediate tensor when both share one layout."""
    if a.stride() == b.stride():
        # Flattening both in memory order is a view for a dense tensor in any memory format.
        order = sorted(range(a.dim()), key=lambda dim: -a.stride(dim))
        return torch.dot(a.permute(order).reshape(-1), b.permute(order).reshape(-1))
    return (a * b).sum()


class _WeightedSum(torch.autograd.Function):
    """Weighted sum of maps, ``sum_i coefficients[i] * maps[i]``.

    Forward makes one pass per map. Backward makes one dot product per coefficient and one
    scaled copy of the gradient per map.
    """

    @staticmethod
    def forward(ctx, coefficients: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(coefficients, *maps)
        out = maps[0] * coefficients[0]
        for index in range(1, len(maps)):
            out.addcmul_(maps[index], coefficients[index])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        coefficients, *maps = ctx.saved_tensors
        grad_coefficients = None
        if ctx.needs_input_grad[0]:
            grad_coefficients = torch.stack([_dot(grad, m) for m in maps]).to(coefficients.dtype)
        grad_maps = [grad * coefficients[index] if ctx.needs_input_grad[index + 1] else None
                     for index in range(len(maps))]
        return (grad_coefficients, *grad_maps)


def weighted_sum(coefficients: torch.Tensor, maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return ``sum_i coefficients[i] * maps[i]`` for a 1-D ``coefficients`` and equal-shape maps."""
    if coefficients.shape != (len(maps),):
        raise ValueError(f"invalid coefficients of shape {tuple(coefficients.shape)}: expected shape "
                         f"({len(maps)},), one coefficient per map")
    return _WeightedSum.apply(coefficients, *maps)


def edge_sources() -> list[tuple[int, int]]:
    """Return ``(node, input)`` for every edge, in the order of the architecture weights."""
    return [(node, source) for node in range(NODES) for source in range(node + 2)]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal channel groups (ShuffleNet)."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


class MixedOp(nn.Module):
    """All non-``none`` candidate operations of one edge.

    With ``partial_channels`` K > 1 (PC-DARTS, Xu et al., ICLR 2020) the operations see only
    the first C/K channels; the other channels bypass them (max-pooled on a reduction edge)
    and the two parts are concatenated and channel-shuffled.
    """

    def __init__(self, C: int, stride: int, partial_channels: int = 1, recompute: bool = True) -> None:
        super().__init__()
        if partial_channels < 1 or C % partial_channels:
            raise ValueError(f"partial_channels must divide the channel count {C}, got {partial_channels}")
        self.stride = stride
        self.partial_channels = partial_channels
        self.op_channels = C // partial_channels
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        # Index k of ``ops`` is the operation PRIMITIVES[k + 1].
        self.ops = nn.ModuleList(
            build_op(name, self.op_channels, stride, affine=False, relu_first=False, pool_bn=True)
            for name in PRIMITIVES[1:])
        self.wants_relu = [leads_with_relu(name, stride) for name in PRIMITIVES[1:]]
        for op in self.ops:
            if isinstance(op, SepConv):
                op.recompute = recompute

    def needs_relu(self, decision: int) -> bool:
        if decision == PRUNED:
            return False
        if decision == UNDECIDED:
            return any(self.wants_relu)
        return self.wants_relu[decision - 1]

    def forward(self, x: torch.Tensor, x_relu: torch.Tensor | None, weights: torch.Tensor,
                decision: int, skip_shared: bool = False) -> torch.Tensor | None:
        """Return the edge's output, or ``None`` for a pruned edge.

        With ``skip_shared=True`` an undecided edge leaves out the operations that
        ``shared_count`` counts. The cell adds them from maps it computes once per input state.
        """
        if decision == PRUNED:
            return None
        if self.partial_channels == 1:
            return self._mix(x, x_relu, weights, decision, self.shared_count() if skip_shared else 0)
        part = self.op_channels
        mixed = self._mix(x[:, :part], None if x_relu is None else x_relu[:, :part], weights, decision, 0)
        bypass = self.bypass_pool(x[:, part:])
        return channel_shuffle(torch.cat([mixed, bypass], dim=1), self.partial_channels)

    def shared_count(self) -> int:
        """Return how many leading operations have no parameters: max and average pooling, and
        ``skip_connect`` at stride 1. Every edge that reads the same state at the same stride
        computes the same output for them."""
        return 3 if self.stride == 1 else 2

    def pooled(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the batch-normalised max and average pooling of ``x``, not yet scaled."""
        return [self.ops[0](x), self.ops[1](x)]

    @torch.no_grad()
    def copy_pool_statistics(self, source: "MixedOp") -> None:
        """Copy the running statistics of ``source``'s pooling batch norms, which saw the same
        input, into this edge's."""
        for index in (0, 1):
            for name, buffer in self.ops[index].bn.named_buffers():
                buffer.copy_(source.ops[index].bn.get_buffer(name))

    def _mix(self, x: torch.Tensor, x_relu: torch.Tensor | None, weights: torch.Tensor,
             decision: int, first: int) -> torch.Tensor | None:
        if decision != UNDECIDED:
            op_input = x_relu if self.wants_relu[decision - 1] else x
            return self.ops[decision - 1](op_input)
        total: torch.Tensor | None = None
        for index in range(first, len(self.ops)):
            op = self.ops[index]
            term = scaled_forward(op, x_relu if self.wants_relu[index] else x, weights[index + 1])
            total = term if total is None else total.add_(term)
        return total


class SearchCell(nn.Module):
    """A cell of the supernet: two preprocessed inputs, four nodes, 14 mixed edges."""

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool,
                 partial_channels: int = 1, recompute: bool = True) -> None:
        super().__init__()
        self.reduction = reduction
        # Partial-channel edges see different channels of a state, so they share nothing.
        self.share_pooling = partial_channels == 1
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for node, source in edge_sources():
            stride = 2 if reduction and source < 2 else 1
            self.edges.append(MixedOp(C, stride, partial_channels, recompute))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                decisions: Sequence[int]) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        relu_states: list[torch.Tensor | None] = [None, None]
        # The parameter-free operations of undecided edges give the same map on every edge that
        # reads one state at one stride, so each map is computed once and weighted per edge.
        pooled: dict[tuple[int, int], tuple[list[torch.Tensor], MixedOp]] = {}
        edge = 0
        for node in range(NODES):
            total: torch.Tensor | None = None
            coefficients: list[torch.Tensor] = []
            maps: list[torch.Tensor] = []
            for source in range(node + 2):
                mixed = self.edges[edge]
                decision = decisions[edge]
                shared = self.share_pooling and decision == UNDECIDED
                if mixed.needs_relu(decision) and relu_states[source] is None:
                    relu_states[source] = F.relu(states[source])
                if shared:
                    key = (source, mixed.stride)
                    if key not in pooled:
                        pooled[key] = (mixed.pooled(states[source]), mixed)
                    elif mixed.training:
                        mixed.copy_pool_statistics(pooled[key][1])
                    maps.extend(pooled[key][0])
                    if mixed.stride == 1:
                        maps.append(states[source])
                    coefficients.append(weights[edge, 1:1 + mixed.shared_count()])
                out = mixed(states[source], relu_states[source], weights[edge], decision, skip_shared=shared)
                if out is not None:
                    total = out if total is None else total + out
                edge += 1
            if maps:
                term = weighted_sum(torch.cat(coefficients), maps)
                total = term if total is None else total + term
            if total is None:
                # Every input edge of this node was pruned: the node is a zero map.
                reference = states[1] if not self.reduction else states[1][:, :, ::2, ::2]
                total = torch.zeros_like(reference)
            states.append(_ContiguousGrad.apply(total))
            relu_states.append(None)
        return torch.cat(states[2:], dim=1)


class SearchNetwork(nn.Module):
    """The one-channel supernet: stem, ``layers`` search cells, global pooling, classifier.

    ``recompute=True`` runs the middle of every separable convolution again in backward
    instead of keeping its maps. At the original search configuration on 2 CPU cores this took
    about a sixth less memory and 4-8% more time per step.
    """

    def __init__(self, C: int = 16, num_classes: int = 7, layers: int = 8, stem_multiplier: int = 3,
                 in_channels: int = 1, partial_channels: int = 1, recompute: bool = True) -> None:
        super().__init__()
        if layers < 3:
            raise ValueError(f"layers must be at least 3 (two reduction cells and a normal cell), got {layers}")
        if C < 2 or C % 2:
            raise ValueError(f"init_channels must be a positive even number, got {C}")
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.partial_channels = partial_channels
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for index in range(layers):
            reduction = index in self.reduction_layers()
            if reduction:
                C_curr *= 2
            cell = SearchCell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev, partial_channels, recompute)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, NODES * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        # Architecture weights: one vector over PRIMITIVES per edge and cell type, near uniform.
        self.alphas_normal = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(len(PRIMITIVES))) for _ in range(EDGES))
        self.alphas_reduce = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(len(PRIMITIVES))) for _ in range(EDGES))
        self.decisions = {cell_type: [UNDECIDED] * EDGES for cell_type in CELL_TYPES}

    def reduction_layers(self) -> tuple[int, int]:
        return (self.layers // 3, 2 * self.layers // 3)

    # Architecture weights and decisions.

    def alphas(self, cell_type: str) -> nn.ParameterList:
        if cell_type not in CELL_TYPES:
            raise ValueError(f"unknown cell type {cell_type!r}; expected 'normal' or 'reduce'")
        return self.alphas_normal if cell_type == "normal" else self.alphas_reduce

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas_normal) + list(self.alphas_reduce)

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def arch_weights(self, cell_type: str) -> torch.Tensor:
        """Return the (14, 11) softmax of the architecture weights of ``cell_type``."""
        return F.softmax(torch.stack(list(self.alphas(cell_type))), dim=-1)

    def set_decisions(self, decisions: dict[str, Sequence[int]]) -> None:
        """Install edge decisions (for example from a checkpoint) and freeze decided edges."""
        for cell_type in CELL_TYPES:
            values = [int(v) for v in decisions[cell_type]]
            if len(values) != EDGES or any(v < UNDECIDED or v >= len(PRIMITIVES) for v in values):
                raise ValueError(f"invalid {cell_type} decisions {values}: expected {EDGES} values in "
                                 f"-1..{len(PRIMITIVES) - 1}")
            self.decisions[cell_type] = values
            for alpha, value in zip(self.alphas(cell_type), values):
                alpha.requires_grad_(value == UNDECIDED)
                if value != UNDECIDED:
                    alpha.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {cell_type: self.arch_weights(cell_type) for cell_type in CELL_TYPES}
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            cell_type = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, weights[cell_type], self.decisions[cell_type])
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    # Operation sizes, for the complexity penalty.

    def operation_shares(self, cell_type: str) -> torch.Tensor:
        """Return a (14, 11) tensor: each operation's share of its edge's parameters.

        Parameter counts are summed over every cell of ``cell_type`` as built, so the share is
        the fraction of that edge's parameters that the operation owns.
        """
        counts = torch.zeros(EDGES, len(PRIMITIVES))
        for cell in self.cells:
            if cell.reduction != (cell_type == "reduce"):
                continue
            for edge, mixed in enumerate(cell.edges):
                for index, op in enumerate(mixed.ops):
                    counts[edge, index + 1] += count_parameters(op)
        return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def original_operation_shares(C: int = 12) -> torch.Tensor:
    """Return the 11 parameter shares of the original penalty: each operation's parameters
    over the total of all operations, counted at stride 1 on ``C`` channels."""
    counts = torch.tensor([float(count_parameters(build_op(name, C, 1, affine=False)))
                           for name in PRIMITIVES])
    return counts / counts.sum()
