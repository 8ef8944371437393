"""The architecture step of DARTS: Adam on the architecture weights, first or second order.

The second-order step (``unrolled``) follows DARTS (Liu et al., ICLR 2019, eq. 7-8): one
virtual SGD step of the network weights w' = w - xi * (momentum * v + dL_train/dw + wd * w),
the validation gradient at w', and the Hessian-vector product approximated by a central finite
difference with epsilon = 0.01 / ||dL_val/dw'||. The virtual weights are evaluated with
``torch.func.functional_call`` on the one network, never on a copy of it.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from NAS.model_search import CELL_TYPES, UNDECIDED, SearchNetwork, original_operation_shares

logger = logging.getLogger(__name__)

PENALTIES = ("expected", "original")


class Architect:
    """Updates the architecture weights of a ``SearchNetwork``.

    ``complexity_penalty="expected"`` adds ``complexity_weight`` times the mean, over every
    undecided edge of both cell types, of the expected parameter share of the edge's operations
    under the softmax weights. ``"original"`` reproduces the original Auto-FERNet term:
    ``complexity_weight * sum(alpha^2 * share)`` over the raw weights of the first normal edge,
    with shares counted at C=12.
    """

    def __init__(self, model: SearchNetwork, *, lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999),
                 weight_decay: float = 1e-3, momentum: float = 0.9, network_weight_decay: float = 3e-4,
                 unrolled: bool = False, complexity_weight: float = 0.5,
                 complexity_penalty: str = "expected", hessian_epsilon: float = 0.01,
                 autocast: Callable[[], object] | None = None) -> None:
        if complexity_penalty not in PENALTIES:
            raise ValueError(f"complexity_penalty must be one of {PENALTIES}, got {complexity_penalty!r}")
        if complexity_weight < 0:
            raise ValueError(f"complexity_weight must be >= 0, got {complexity_weight}")
        if hessian_epsilon <= 0:
            raise ValueError(f"hessian_epsilon must be positive, got {hessian_epsilon}")
        self.model = model
        self.unrolled = unrolled
        # The finite-difference step is hessian_epsilon / ||v||, as in DARTS (0.01). Gradients of a
        # ReLU network jump where a unit changes sign, so a large step averages over those jumps.
        self.hessian_epsilon = hessian_epsilon
        self.momentum = momentum
        self.network_weight_decay = network_weight_decay
        self.complexity_weight = complexity_weight
        self.complexity_penalty = complexity_penalty
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
        self.autocast = autocast
        device = next(model.parameters()).device
        self.shares = {t: model.operation_shares(t).to(device) for t in CELL_TYPES}
        self.original_shares = original_operation_shares().to(device)

    def describe_penalty(self) -> str:
        if self.complexity_weight == 0:
            return "complexity penalty: off"
        if self.complexity_penalty == "original":
            return (f"complexity penalty: original formula, {self.complexity_weight} x sum(alpha^2 x share) "
                    "over the raw weights of the first normal edge (shares at C=12)")
        return (f"complexity penalty: {self.complexity_weight} x mean expected parameter share over the "
                "undecided edges of both cell types")

    def complexity_loss(self) -> torch.Tensor:
        """Return the complexity term that is added to the architecture loss."""
        model = self.model
        zero = model.alphas_normal[0].new_zeros(())
        if self.complexity_weight == 0:
            return zero
        if self.complexity_penalty == "original":
            alpha = model.alphas_normal[0]
            return self.complexity_weight * (alpha.pow(2) * self.original_shares).sum()
        terms = []
        for cell_type in CELL_TYPES:
            weights = model.arch_weights(cell_type)
            for edge, decision in enumerate(model.decisions[cell_type]):
                if decision == UNDECIDED:
                    terms.append((weights[edge] * self.shares[cell_type][edge]).sum())
        if not terms:
            return zero
        return self.complexity_weight * torch.stack(terms).mean()

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast is None:
            return self.model(x)
        with self.autocast():
            return self.model(x)

    def trainable_alphas(self) -> list[nn.Parameter]:
        return [p for p in self.model.arch_parameters() if p.requires_grad]

    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_valid: torch.Tensor, y_valid: torch.Tensor,
             eta: float, network_optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        """Take one architecture step on a validation batch; return its (loss, logits), detached."""
        alphas = self.trainable_alphas()
        if not alphas:
            return self._validation_only(x_valid, y_valid)
        if self.unrolled:
            loss, logits, grads = self._unrolled_gradients(x_train, y_train, x_valid, y_valid, eta,
                                                           network_optimizer, alphas)
        else:
            # Gradients for the architecture weights only. With the network weights frozen,
            # autograd neither saves tensors for nor computes any weight gradient, custom
            # backward functions included.
            with _frozen(self.model.weight_parameters()):
                logits = self._forward(x_valid)
                loss = self._loss(logits, y_valid)
                total = loss + self.complexity_loss()
                grads = torch.autograd.grad(total, alphas)
        # Clear every architecture gradient first: a weight step's backward leaves gradients on
        # the architecture weights, and a stale one on a newly frozen edge would move it.
        self.optimizer.zero_grad(set_to_none=True)
        for alpha, grad in zip(alphas, grads):
            alpha.grad = grad.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), logits.detach()

    @torch.no_grad()
    def _validation_only(self, x_valid: torch.Tensor, y_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._forward(x_valid)
        return self._loss(logits, y_valid), logits

    # Second order.

    def _unrolled_gradients(self, x_train, y_train, x_valid, y_valid, eta, network_optimizer, alphas):
        model = self.model
        names = [name for name, p in model.named_parameters() if not _is_alpha(name)]
        params = dict(model.named_parameters())
        weights = [params[name] for name in names]
        alpha_names = [name for name in params if _is_alpha(name)]
        # Running statistics are copied so that the virtual forward passes leave the model's alone.
        buffers = {name: b.clone() for name, b in model.named_buffers()}

        def call(weight_values: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            mapping = dict(zip(names, weight_values))
            mapping.update({name: params[name] for name in alpha_names})
            mapping.update(buffers)
            if self.autocast is None:
                return functional_call(model, mapping, (x,))
            with self.autocast():
                return functional_call(model, mapping, (x,))

        # One virtual SGD step with momentum and weight decay.
        train_loss = self._loss(call(weights, x_train), y_train)
        train_grads = torch.autograd.grad(train_loss, weights, allow_unused=True)
        virtual = []
        with torch.no_grad():
            for w, g in zip(weights, train_grads):
                if g is None:
                    virtual.append(w.detach().clone())
                    continue
                state = network_optimizer.state.get(w, {})
                buffer = state.get("momentum_buffer")
                step = g + self.network_weight_decay * w
                if buffer is not None:
                    step = step + self.momentum * buffer
                virtual.append(w.detach() - eta * step)
        virtual = [v.requires_grad_() for v in virtual]

        # Validation gradients at the virtual weights.
        logits = call(virtual, x_valid)
        loss = self._loss(logits, y_valid)
        total = loss + self.complexity_loss()
        grads = torch.autograd.grad(total, alphas + virtual, allow_unused=True)
        alpha_grads = [g if g is not None else torch.zeros_like(a) for a, g in zip(alphas, grads[: len(alphas)])]
        vector = [g if g is not None else torch.zeros_like(v) for v, g in zip(virtual, grads[len(alphas):])]

        # Finite-difference Hessian-vector product around the real weights.
        norm = torch.sqrt(sum((v.detach() ** 2).sum() for v in vector))
        epsilon = self.hessian_epsilon / norm.clamp_min(1e-12)
        hessian = self._finite_difference(call, weights, vector, epsilon, x_train, y_train, alphas)
        alpha_grads = [g.detach() - eta * h for g, h in zip(alpha_grads, hessian)]
        return loss, logits, alpha_grads

    def _finite_difference(self, call, weights, vector, epsilon, x, y, alphas):
        gradients = []
        for sign in (1.0, -1.0):
            shifted = [w.detach() + sign * epsilon * v.detach() for w, v in zip(weights, vector)]
            loss = self._loss(call(shifted, x), y)
            grads = torch.autograd.grad(loss, alphas, allow_unused=True)
            gradients.append([g if g is not None else torch.zeros_like(a) for a, g in zip(alphas, grads)])
        return [(gp - gn) / (2 * epsilon) for gp, gn in zip(*gradients)]


@contextmanager
def _frozen(parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """Turn off ``requires_grad`` of the trainable ``parameters`` inside the block."""
    trainable = [p for p in parameters if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def _is_alpha(name: str) -> bool:
    return name.startswith("alphas_normal.") or name.startswith("alphas_reduce.")
