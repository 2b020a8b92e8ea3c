"""Data order and data helpers for exact resume: [`EpochShuffleSampler`] (the order is a function of seed and
epoch), [`resume_position`], and [`drop_unreadable_images`]."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from typing import Any

import PIL.Image
import torch

from ..utils import seeded_generator


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random order of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Call ``set_epoch`` before each epoch (Accelerate's prepared data loaders do). The same ``(seed, epoch)`` gives
    the same order in every process and after a restart, which is what mid-epoch resumption and sharding need.

    Args:
        num_samples (`int`): size of the dataset.
        seed (`int`, defaults to `0`): non-negative int.
        shuffle (`bool`, defaults to `True`): ``False`` gives ``0, 1, 2, ...`` every epoch.

    Example:
        >>> s = EpochShuffleSampler(5, seed=0)
        >>> s.set_epoch(1)
        >>> sorted(s) == [0, 1, 2, 3, 4] and list(s) == list(s)
        True
    """

    _STREAM = 1

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = seeded_generator(self.seed, self._STREAM, self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def resume_position(global_step: int, num_batches_per_epoch: int, gradient_accumulation_steps: int) -> tuple[int, int]:
    """Where a run that has done ``global_step`` optimizer steps continues: ``(epoch, batches to skip in it)``.

    An epoch of ``n`` batches makes ``ceil(n / gradient_accumulation_steps)`` optimizer steps (Accelerate steps at
    the end of the data loader even when the last accumulation is incomplete).

    Args:
        global_step (`int`): optimizer steps done.
        num_batches_per_epoch (`int`): batches per epoch (per process).
        gradient_accumulation_steps (`int`): batches per optimizer step.

    Example:
        >>> resume_position(4, 3, 1), resume_position(3, 3, 2)
        ((1, 1), (1, 2))
    """
    steps_per_epoch = math.ceil(num_batches_per_epoch / gradient_accumulation_steps)
    epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
    return epoch, step_in_epoch * gradient_accumulation_steps


def _iter_column(dataset: Any, column: str, batch_size: int = 64) -> Iterator[Any]:
    """The values of a column, read a batch at a time (a whole column of encoded images may not fit in memory)."""
    for start in range(0, len(dataset), batch_size):
        yield from dataset[start : start + batch_size][column]


def drop_unreadable_images(dataset: Any, image_column: str = "image") -> tuple[Any, list[str]]:
    """Decode every image of a ``datasets.Dataset`` once; drop those that fail, with one counted warning.

    Local folders are already screened by their file headers when loaded; this also catches files whose header is
    valid but whose pixels are not (truncated files), and broken images of hub datasets, before training starts.

    Args:
        dataset (`Any`): a ``datasets.Dataset`` with an image column.
        image_column (`str`, defaults to `'image'`): its name.

    Returns:
        ``(dataset without the unreadable images, their names)``.
    """
    import datasets as hf_datasets

    raw = dataset.cast_column(image_column, hf_datasets.Image(decode=False))
    names = dataset["file_name"] if "file_name" in dataset.column_names else [None] * len(dataset)
    bad: list[int] = []
    labels: list[str] = []
    for i, item in enumerate(_iter_column(raw, image_column)):
        item = item or {}
        try:
            source: Any = io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"]
            with PIL.Image.open(source) as image:
                image.convert("RGB").load()
        except Exception:  # any failure to decode means "unreadable"
            bad.append(i)
            labels.append(names[i] or item.get("path") or f"#{i}")
    if not bad:
        return dataset, []
    warnings.warn(
        f"Skipped {len(bad)} unreadable image(s) out of {len(dataset)}, e.g. {labels[:5]}.", UserWarning, stacklevel=2
    )
    keep = sorted(set(range(len(dataset))) - set(bad))
    return dataset.select(keep), labels
