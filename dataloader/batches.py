"""In-memory batches and batched augmentation for the training data path.

A whole split stays in memory as one uint8 tensor on the target device. Batches are built by
indexing that tensor, converted to float there, and augmented as a batch, so no per-image
Python code or PIL runs while training.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

PIXEL_SCALE = 1.0 / 255.0
# The only input preprocessing of the project, recorded in checkpoints: x = pixel * scale, then (x - mean) / std.
PREPROCESSING: dict[str, float] = {"scale": PIXEL_SCALE, "mean": 0.0, "std": 1.0}

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def to_float(pixels_uint8: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images (N, H, W) or (N, 1, H, W) to float32 (N, 1, H, W) in [0, 1]."""
    if pixels_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 pixels, got {pixels_uint8.dtype}")
    if pixels_uint8.dim() == 3:
        pixels_uint8 = pixels_uint8.unsqueeze(1)
    elif pixels_uint8.dim() != 4 or pixels_uint8.shape[1] != 1:
        raise ValueError(f"to_float expects shape (N, H, W) or (N, 1, H, W), got {tuple(pixels_uint8.shape)}")
    return pixels_uint8.to(torch.float32).mul_(PIXEL_SCALE)


def _uniform(
    count: int, low: float, high: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Draw ``count`` floats uniform in [low, high] from ``generator`` and move them to ``device``."""
    source = generator.device if generator is not None else device
    values = torch.rand(count, generator=generator, device=source)
    return (low + (high - low) * values).to(device)


def _randint(count: int, high: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Draw ``count`` integers uniform in [0, high) from ``generator`` and move them to ``device``."""
    source = generator.device if generator is not None else device
    return torch.randint(high, (count,), generator=generator, device=source).to(device)


def augment_batch(
    x: torch.Tensor,
    crop: int = 44,
    flip: bool = True,
    brightness: float = 0.0,
    contrast: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Randomly crop, flip and jitter a batch of grey images (N, C, H, W) in [0, 1].

    Each image gets its own crop offset and a horizontal flip with probability 0.5. A brightness
    factor uniform in [max(0, 1 - brightness), 1 + brightness] multiplies the image. A contrast
    factor uniform in [max(0, 1 - contrast), 1 + contrast] blends the image with its mean grey
    level. Both jitters clamp to [0, 1] as torchvision's ColorJitter does, but they always run
    in this order. Random numbers come from ``generator`` (the global RNG
    when None), so a seeded generator gives the same output. ``crop`` equal to H and W means
    no crop. Returns a new tensor of shape (N, C, crop, crop).
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects shape (N, C, H, W), got {tuple(x.shape)}")
    count, channels, height, width = x.shape
    if not 0 < crop <= min(height, width):
        raise ValueError(f"crop {crop} must be in 1..{min(height, width)} for images of {height}x{width}")
    if brightness < 0 or contrast < 0:
        raise ValueError(f"brightness {brightness} and contrast {contrast} must be >= 0")
    device = x.device

    # One gather does crop and flip: build each image's flat source index for every output pixel.
    top = _randint(count, height - crop + 1, generator, device)
    left = _randint(count, width - crop + 1, generator, device)
    steps = torch.arange(crop, device=device)
    rows = top[:, None] + steps  # (N, crop)
    columns = left[:, None] + steps  # (N, crop)
    if flip:
        mirrored = _uniform(count, 0.0, 1.0, generator, device) < 0.5
        columns = torch.where(mirrored[:, None], columns.flip(1), columns)
    source = (rows[:, :, None] * width + columns[:, None, :]).reshape(count, 1, crop * crop)
    out = x.reshape(count, channels, height * width).gather(2, source.expand(count, channels, crop * crop))
    out = out.reshape(count, channels, crop, crop)

    if brightness > 0:
        factor = _uniform(count, max(0.0, 1.0 - brightness), 1.0 + brightness, generator, device)
        out = (out * factor.to(out.dtype).view(count, 1, 1, 1)).clamp_(0.0, 1.0)
    if contrast > 0:
        factor = _uniform(count, max(0.0, 1.0 - contrast), 1.0 + contrast, generator, device).to(out.dtype)
        factor = factor.view(count, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (factor * out + (1.0 - factor) * mean).clamp_(0.0, 1.0)
    return out


def make_augment(crop: int = 44, flip: bool = True, brightness: float = 0.0, contrast: float = 0.0) -> Augment:
    """Return ``augment(x, generator)`` that calls augment_batch with these settings, for TensorBatches."""

    def augment(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return augment_batch(x, crop, flip, brightness, contrast, generator=generator)

    return augment


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Return the central ``size`` x ``size`` window of the last two dimensions of ``x``."""
    height, width = x.shape[-2], x.shape[-1]
    if not 0 < size <= min(height, width):
        raise ValueError(f"crop size {size} must be in 1..{min(height, width)} for images of {height}x{width}")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def _mixed_seed(*values: int) -> int:
    """Return a well-mixed 63-bit seed derived from the given integers."""
    state = np.random.SeedSequence([int(value) for value in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class TensorBatches:
    """Shuffled mini-batches drawn from an in-memory uint8 image tensor.

    Iterating yields ``(images, labels, batch_indices)``: float32 images (B, 1, h, w) in
    [0, 1] and int64 labels on ``device``, and int64 indices on the CPU into the original
    ``pixels`` and ``labels`` (not into ``indices``). Each pass shuffles with a generator
    seeded from ``(seed, epoch)``, where ``epoch`` counts the passes started. ``state_dict``
    stores that counter, so a resumed run gets the same order. The batch size is read when
    a pass starts, so changing ``batch_size`` takes effect from the next pass.
    """

    def __init__(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        device: torch.device | str = "cpu",
        augment: Augment | None = None,
        drop_last: bool = False,
        seed: int = 0,
        indices: torch.Tensor | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if pixels.dtype != torch.uint8 or pixels.dim() != 3:
            raise TypeError(f"pixels must be uint8 of shape (N, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
        if labels.dim() != 1 or labels.shape[0] != pixels.shape[0]:
            raise ValueError(f"labels must have shape ({pixels.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point():
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if memory_format not in (torch.contiguous_format, torch.channels_last):
            raise ValueError(f"memory_format must be torch.contiguous_format or torch.channels_last, got {memory_format}")

        if indices is None:
            selected = torch.arange(pixels.shape[0], dtype=torch.int64)
        else:
            selected = torch.as_tensor(indices, dtype=torch.int64).cpu().reshape(-1)
            if selected.numel() and (selected.min() < 0 or selected.max() >= pixels.shape[0]):
                raise ValueError(
                    f"indices must be in 0..{pixels.shape[0] - 1}, got {int(selected.min())}..{int(selected.max())}"
                )

        self.device = torch.device(device)
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = int(seed)
        self.memory_format = memory_format
        self.epoch = 0
        self.batch_size = batch_size
        self._indices = selected
        # The selected images move to the device once, and each batch indexes them there.
        self._pixels = pixels.cpu()[selected].to(self.device)
        self._labels = labels.cpu()[selected].to(torch.int64).to(self.device)

    @property
    def batch_size(self) -> int:
        """Number of images per batch. A change takes effect from the next pass."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if int(value) != value or value < 1:
            raise ValueError(f"batch_size must be a positive integer, got {value}")
        self._batch_size = int(value)

    @property
    def indices(self) -> torch.Tensor:
        """Indices into the original arrays of the images these batches draw from."""
        return self._indices

    @property
    def num_samples(self) -> int:
        """Number of images these batches draw from."""
        return int(self._indices.numel())

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self._batch_size
        return math.ceil(self.num_samples / self._batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(_mixed_seed(self.seed, epoch, 0))
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # The order and the counter are fixed here, before the first batch is requested.
        epoch = self.epoch
        self.epoch += 1
        order = self._order(epoch)
        generator = None
        if self.augment is not None:
            # NOTE: untested on CUDA, where this creates the generator on the GPU.
            generator = torch.Generator(device=self.device).manual_seed(_mixed_seed(self.seed, epoch, 1))
        return self._batches(order, self._batch_size, generator)

    def _batches(
        self, order: torch.Tensor, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        stop = len(order) - len(order) % batch_size if self.drop_last else len(order)
        for start in range(0, stop, batch_size):
            positions = order[start : start + batch_size]
            on_device = positions.to(self.device, non_blocking=True)
            images = to_float(self._pixels[on_device])
            if self.augment is not None:
                images = self.augment(images, generator)
            images = images.contiguous(memory_format=self.memory_format)
            yield images, self._labels[on_device], self._indices[positions]

    def state_dict(self) -> dict[str, Any]:
        """Return the pass counter and seed, which fix the order of the next pass.

        Saved during a pass, the state resumes at the start of the following pass.
        """
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the pass counter saved by ``state_dict``."""
        if int(state.get("seed", self.seed)) != self.seed:
            logger.warning(
                "batch order was saved with seed %s but this loader uses seed %s; the order will differ",
                state["seed"],
                self.seed,
            )
        self.epoch = int(state["epoch"])
