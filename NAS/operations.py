"""Candidate operations of the search space and the building blocks of both networks.

The pooling, separable, dilated and factorized-reduce operations follow DARTS (Liu et al.,
ICLR 2019). ``ghost`` is a GhostNet module (Han et al., CVPR 2020). Each operation maps
``C`` channels to ``C`` channels and divides the spatial size by ``stride``.

Operations whose first layer is a ReLU are built without it when ``relu_first=False``. The
supernet then applies one shared ReLU to each input state and feeds the result to all of
them (see ``leads_with_relu``). This gives the same function with less work.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "ghost",
    "conv_1x1",
    "conv_3x3",
)


def batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, weight: torch.Tensor | None,
               bias: torch.Tensor | None) -> torch.Tensor:
    """Apply ``bn``'s statistics with the given affine ``weight`` and ``bias``."""
    training = bn.training or bn.running_mean is None
    if bn.training and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 0.0
    return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, training, momentum, bn.eps)


class ReLUConvBN(nn.Module):
    """ReLU, convolution, batch norm."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True, relu_first: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReLU(inplace=False)] if relu_first else []
        if kernel_size == 1 and padding == 0:
            conv: nn.Module = PointwiseConv(C_in, C_out, stride)
        else:
            conv = nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False)
        layers += [conv, nn.BatchNorm2d(C_out, affine=affine)]
        self.op = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.op[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output before the final batch norm."""
        for layer in self.op[:-1]:
            x = layer(x)
        return x


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution; with stride 2 it convolves the even rows and columns at stride 1.

    Both forms give the same result. The strided form is avoided because PyTorch 2.14.1 corrupts
    memory in its channels-last CPU backward of 1x1 stride-2 convolutions with fewer than 16
    channels and batch sizes that are not a multiple of 8 (seen as crashes on 2 cores).
    """

    def __init__(self, C_in: int, C_out: int, stride: int = 1) -> None:
        super().__init__(C_in, C_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = self.stride[0]
        if step == 1:
            return super().forward(x)
        return F.conv2d(x[:, :, ::step, ::step], self.weight)


class StridedDilatedConv(nn.Conv2d):
    """A depthwise convolution with dilation 2 and stride 2, computed as an undilated
    convolution of the even rows and columns.

    With stride 2, dilation 2 and an even padding p, every tap of the dilated kernel lands on
    an even row and column, so the result equals an ordinary convolution of x[::2, ::2] with
    padding p/2. On the CPU this runs several times faster than the dilated form (oneDNN has
    no fast channels-last path for strided dilated depthwise convolutions). The weights keep
    the shape and name of the ``nn.Conv2d`` they replace.
    """

    def __init__(self, channels: int, kernel_size: int, padding: int) -> None:
        if padding % 2:
            raise ValueError(f"StridedDilatedConv needs an even padding, got {padding}")
        super().__init__(channels, channels, kernel_size, stride=2, padding=padding, dilation=2,
                         groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x[:, :, ::2, ::2], self.weight, None, 1, self.padding[0] // 2, 1, self.groups)


def _depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """Return the weight gradient of a stride-1, same-padded depthwise convolution.

    oneDNN computes this gradient quickly only for undilated kernels at most 3 wide. A wider or
    dilated kernel is therefore treated as its dense span (a k x k kernel of dilation d spans
    d(k-1)+1 pixels), whose gradient is computed in blocks of 3 columns and then subsampled.
    """
    channels, width = x.shape[1], x.shape[-1]
    span = dilation * (kernel_size - 1) + 1
    pad = (span - 1) // 2
    # Columns are zero-padded here because each block reads a shifted window. Rows are padded by
    # the convolution itself.
    padded = F.pad(x, (pad, pad, 0, 0))
    template = x.new_empty(channels, 1, span, 3)
    dense = x.new_zeros(channels, 1, span, span)
    for start in sorted(set(range(0, span - 3, 3)) | {span - 3}):
        window = padded[:, :, :, start:start + width + 2]
        dense[:, :, :, start:start + 3] = torch.ops.aten.convolution_backward(
            grad, window, template, None, (1, 1), (pad, 0), (1, 1), False, (0, 0), channels, (False, True, False))[1]
    return dense[:, :, ::dilation, ::dilation]


class _DepthwiseConvFunction(torch.autograd.Function):
    """A stride-1, same-padded depthwise convolution with a backward built from fast CPU kernels.

    The input gradient equals a forward convolution of the output gradient with the kernel
    flipped in both directions, with the same padding and dilation. oneDNN's forward kernels are
    fast where its backward ones are slow: dilated and 5x5 depthwise kernels on channels-last
    tensors. The weight gradient comes from ``_depthwise_weight_grad``.
    """

    @staticmethod
    def forward(ctx, x, weight, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight, None, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-2, -1), None, 1, ctx.padding, ctx.dilation, x.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = _depthwise_weight_grad(x, grad, weight.shape[-1], ctx.dilation)
        return grad_x, grad_w, None, None


class DepthwiseConv(nn.Conv2d):
    """A depthwise convolution (``groups`` = channels) without bias.

    On channels-last CPU tensors at stride 1, a 5x5 or dilated kernel trains through
    ``_DepthwiseConvFunction``, which computes the same gradients several times faster than
    PyTorch's own backward. The weights keep the shape and name of the ``nn.Conv2d`` it replaces.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> None:
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=channels, bias=False)
        same = padding == dilation * (kernel_size - 1) // 2
        self.fast_backward = stride == 1 and same and (kernel_size > 3 or dilation > 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x, self.weight)

    def convolve(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Return the convolution of ``x`` with ``weight`` in place of the module's own weight."""
        if (self.fast_backward and x.device.type == "cpu" and torch.is_grad_enabled()
                and (x.requires_grad or weight.requires_grad) and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
            return _DepthwiseConvFunction.apply(x, weight, self.padding[0], self.dilation[0])
        return self._conv_forward(x, weight, None)


class DilConv(nn.Module):
    """ReLU, dilated depthwise convolution, pointwise convolution, batch norm."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True, relu_first: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReLU(inplace=False)] if relu_first else []
        if stride == 2 and dilation == 2 and padding % 2 == 0:
            depthwise: nn.Module = StridedDilatedConv(C_in, kernel_size, padding)
        else:
            depthwise = DepthwiseConv(C_in, kernel_size, stride=stride, padding=padding, dilation=dilation)
        layers += [
            depthwise,
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        ]
        self.op = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.op[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output before the final batch norm."""
        for layer in self.op[:-1]:
            x = layer(x)
        return x


class SepConv(nn.Module):
    """Two stacked ReLU, depthwise, pointwise, batch-norm blocks; the first carries the stride.

    With ``recompute=True`` the middle of the operation (batch norm, ReLU, depthwise and
    pointwise convolution) keeps only its input for backward and runs again there. The
    supernet uses this to keep two fewer maps per separable convolution.
    """

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True, relu_first: bool = True, recompute: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReLU(inplace=False)] if relu_first else []
        layers += [
            DepthwiseConv(C_in, kernel_size, stride=stride, padding=padding),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            DepthwiseConv(C_in, kernel_size, padding=padding),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        ]
        self.op = nn.Sequential(*layers)
        self.recompute = recompute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_bn(self.features(x))

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.op[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output before the final batch norm."""
        if not (self.recompute and torch.is_grad_enabled()):
            for layer in self.op[:-1]:
                x = layer(x)
            return x
        for layer in self.op[:-5]:
            x = layer(x)
        bn, _, depthwise, pointwise = self.op[-5:-1]
        params = [depthwise.weight, pointwise.weight]
        if bn.affine:
            params += [bn.weight, bn.bias]
        return _RecomputedMiddle.apply(self, x, *params)

    def middle(self, x: torch.Tensor, params: list[torch.Tensor], update_statistics: bool) -> torch.Tensor:
        """Run the batch norm, ReLU, depthwise and pointwise convolution of the second block, with
        ``params`` as their weights.

        Without ``update_statistics`` a training-mode batch norm normalises with the batch
        statistics and leaves its running statistics alone.
        """
        bn, _, depthwise, pointwise = self.op[-5:-1]
        weight, bias = (params[2], params[3]) if bn.affine else (None, None)
        if update_statistics or not bn.training:
            x = batch_norm(x, bn, weight, bias)
        else:
            x = F.batch_norm(x, None, None, weight, bias, True, 0.0, bn.eps)
        x = depthwise.convolve(F.relu(x), params[0])
        return F.conv2d(x, params[1])


class _RecomputedMiddle(torch.autograd.Function):
    """The middle of a ``SepConv``, which keeps only its input for backward and runs again there.

    Its normalised, rectified and depthwise-convolved maps are not kept, which saves two maps
    per separable convolution for the price of running the four layers twice. The running
    statistics move once, in the first run.

    NOTE: tested on the CPU only. On CUDA it runs the same tensor operations, but no CUDA run
    has been made.
    """

    @staticmethod
    def forward(ctx, op: "SepConv", x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.op = op
        ctx.save_for_backward(x, *params)
        # An autograd function's forward already runs without recording a graph.
        return op.middle(x, list(params), update_statistics=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        # Grad mode is on here only for a double backward (``create_graph=True``). The run then
        # starts from the saved tensors themselves, so its gradients stay differentiable.
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            inputs = [x, *params]
            if not create_graph:
                inputs = [t.detach().requires_grad_(need) for t, need in zip(inputs, needs)]
            out = ctx.op.middle(inputs[0], inputs[1:], update_statistics=False)
            needed = [t for t, need in zip(inputs, needs) if need]
            grads = iter(torch.autograd.grad(out, needed, grad, create_graph=create_graph) if needed else ())
        return (None, *[next(grads) if need else None for need in needs])


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset 1x1 convolutions of stride 2, concatenated."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True, relu_first: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False) if relu_first else nn.Identity()
        self.conv_1 = PointwiseConv(C_in, C_out // 2, stride=2)
        self.conv_2 = PointwiseConv(C_in, C_out // 2, stride=2)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.features(x))

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output before the final batch norm."""
        x = self.relu(x)
        # The second path reads the input shifted by one pixel. On odd sizes its strided output
        # would be one row and column smaller, so the shifted map is padded at the end.
        shifted = x[:, :, 1:, 1:]
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            shifted = nn.functional.pad(shifted, (0, 1, 0, 1))
        return torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1)


class GhostModule(nn.Module):
    """GhostNet module: a 1x1 convolution to ceil(C/2) channels, then a cheap 3x3 depthwise
    convolution of those channels. Both outputs are concatenated and cut to ``C_out`` channels.

    The stride is applied in the 1x1 convolution, so a reduction edge halves the size first.
    """

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool = True) -> None:
        super().__init__()
        self.C_out = C_out
        init_channels = math.ceil(C_out / 2)
        self.primary_conv = nn.Sequential(
            PointwiseConv(C_in, init_channels, stride),
            nn.BatchNorm2d(init_channels, affine=affine),
            nn.ReLU(inplace=False),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_channels, init_channels, 3, padding=1, groups=init_channels, bias=False),
            nn.BatchNorm2d(init_channels, affine=affine),
            nn.ReLU(inplace=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary_conv(x)
        cheap = self.cheap_operation(primary)
        return torch.cat([primary, cheap], dim=1)[:, : self.C_out]

    def scaled(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Return ``scale * self(x)``, scaling both halves before they are concatenated.

        The halves are ReLU outputs, which backward keeps anyway. Scaling them keeps nothing more,
        where scaling the concatenation would keep a copy of both.
        """
        primary = self.primary_conv(x)
        cheap = self.cheap_operation(primary)
        return torch.cat([primary * scale, cheap * scale], dim=1)[:, : self.C_out]


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` operation: a zero map of the output size. The supernet never calls it."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class PoolBN(nn.Module):
    """A 3x3 pooling, optionally followed by a non-affine batch norm (as in the supernet)."""

    def __init__(self, kind: str, C: int, stride: int, with_bn: bool) -> None:
        super().__init__()
        if kind == "max":
            self.pool: nn.Module = nn.MaxPool2d(3, stride=stride, padding=1)
        else:
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(C, affine=False) if with_bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(x))

    @property
    def final_bn(self) -> nn.BatchNorm2d | None:
        return self.bn if isinstance(self.bn, nn.BatchNorm2d) else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output before the final batch norm."""
        return self.pool(x)


OpFactory = Callable[[int, int, bool, bool], nn.Module]


def _skip(C: int, stride: int, affine: bool, relu_first: bool) -> nn.Module:
    if stride == 1:
        return Identity()
    return FactorizedReduce(C, C, affine=affine, relu_first=relu_first)


# Each factory takes (C, stride, affine, relu_first).
OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine, relu_first: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine, relu_first: PoolBN("max", C, stride, with_bn=False),
    "avg_pool_3x3": lambda C, stride, affine, relu_first: PoolBN("avg", C, stride, with_bn=False),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine, relu_first: SepConv(C, C, 3, stride, 1, affine, relu_first),
    "sep_conv_5x5": lambda C, stride, affine, relu_first: SepConv(C, C, 5, stride, 2, affine, relu_first),
    "dil_conv_3x3": lambda C, stride, affine, relu_first: DilConv(C, C, 3, stride, 2, 2, affine, relu_first),
    "dil_conv_5x5": lambda C, stride, affine, relu_first: DilConv(C, C, 5, stride, 4, 2, affine, relu_first),
    "ghost": lambda C, stride, affine, relu_first: GhostModule(C, C, stride, affine),
    "conv_1x1": lambda C, stride, affine, relu_first: ReLUConvBN(C, C, 1, stride, 0, affine, relu_first),
    "conv_3x3": lambda C, stride, affine, relu_first: ReLUConvBN(C, C, 3, stride, 1, affine, relu_first),
}


def leads_with_relu(name: str, stride: int) -> bool:
    """Return whether operation ``name`` at ``stride`` starts with a ReLU of its input."""
    if name == "skip_connect":
        return stride != 1
    return name in {"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "conv_1x1", "conv_3x3"}


def build_op(name: str, C: int, stride: int, affine: bool = True, relu_first: bool = True,
             pool_bn: bool = False) -> nn.Module:
    """Build candidate operation ``name`` on ``C`` channels.

    ``relu_first=False`` drops the leading ReLU of operations that have one, for callers that
    apply it themselves. ``pool_bn=True`` follows the pooling operations with a non-affine
    batch norm, as the supernet does.
    """
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; expected one of {', '.join(PRIMITIVES)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return PoolBN(name[:3], C, stride, with_bn=pool_bn)
    return OPS[name](C, stride, affine, relu_first)


def scaled_forward(op: nn.Module, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Return ``scale * op(x)`` for a scalar tensor ``scale``.

    An operation with a ``scaled(x, scale)`` method computes the product itself. When ``op``
    ends in a non-affine batch norm, ``scale`` becomes that batch norm's weight, which gives
    the same result without a separate multiplication pass over the output.
    """
    scaled = getattr(op, "scaled", None)
    if scaled is not None:
        return scaled(x, scale)
    bn = getattr(op, "final_bn", None)
    if bn is None or bn.affine or not bn.track_running_stats or bn.momentum is None:
        return op(x) * scale
    y = op.features(x)
    return batch_norm(y, bn, scale.expand(y.shape[1]).contiguous(), None)


def count_parameters(module: nn.Module) -> int:
    """Return the number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
