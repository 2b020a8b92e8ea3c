"""Tiled denoising for large outputs (MultiDiffusion-style): overlapping tiles, smoothly blended noise predictions.

At every step the UNet sees overlapping tiles of the (padded) image; their noise predictions are averaged with
weights that ramp smoothly (raised cosine) across the overlaps, so there are no seams, and the scheduler then takes
one step on the whole image. The prior is not tiled: it is computed once, globally, by the streamed operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..defaults import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE  # noqa: F401 (re-exported)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``[0, length)`` with at least ``overlap`` px of overlap.

    The last tile is aligned to the end; a length that fits one tile gives ``[0]``.

    Args:
        length (`int`): the side to cover.
        tile (`int`): the tile side.
        overlap (`int`): the minimum overlap between neighbouring tiles (``< tile``).

    Example:
        >>> tile_starts(1000, 512, 64)
        [0, 244, 488]
        >>> tile_starts(300, 512, 64)
        [0]
    """
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    last = length - tile
    return [round(i * last / (n - 1)) for i in range(n)]


def _ramp(length: int, overlap_before: int, overlap_after: int) -> torch.Tensor:
    """1-D weights: a raised-cosine ramp over each overlap (never 0), 1 elsewhere."""
    w = torch.ones(length, dtype=torch.float64)
    for n, flip in ((overlap_before, False), (overlap_after, True)):
        if n > 0:
            r = (1 - torch.cos(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n)) / 2
            if flip:
                w[length - n :] = torch.minimum(w[length - n :], r.flip(0))
            else:
                w[:n] = torch.minimum(w[:n], r)
    return w


def tile_weights(
    starts_y: list[int], starts_x: list[int], tile: tuple[int, int], size: tuple[int, int]
) -> dict[tuple[int, int], torch.Tensor]:
    """Blending weights of every tile, shape ``(tile_h, tile_w)``, ramping only where a tile meets a neighbour.

    Args:
        starts_y (`list[int]`): tile offsets along the height.
        starts_x (`list[int]`): tile offsets along the width.
        tile (`tuple[int, int]`): ``(tile_h, tile_w)``.
        size (`tuple[int, int]`): ``(height, width)`` of the whole image.
    """
    th, tw = tile

    def ramps(starts: list[int], t: int) -> list[torch.Tensor]:
        out = []
        for i, s in enumerate(starts):
            before = starts[i - 1] + t - s if i > 0 else 0
            after = s + t - starts[i + 1] if i + 1 < len(starts) else 0
            out.append(_ramp(t, max(before, 0), max(after, 0)))
        return out

    ry, rx = ramps(starts_y, th), ramps(starts_x, tw)
    return {
        (y, x): (ry[i][:, None] * rx[j][None, :]).float()
        for i, y in enumerate(starts_y)
        for j, x in enumerate(starts_x)
    }


def num_tiles(size: tuple[int, int], tile_size: int, overlap: int) -> int:
    """How many tiles [`tiled_apply`] uses for an image of ``size = (H, W)``."""
    h, w = size
    return len(tile_starts(h, min(tile_size, h), overlap)) * len(tile_starts(w, min(tile_size, w), overlap))


def tiled_apply(
    fn: Callable[[torch.Tensor, tuple[slice, slice]], torch.Tensor],
    sample: torch.Tensor,
    tile_size: int,
    overlap: int,
    out_channels: int | None = None,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``sample`` (B, C, H, W) and blend the outputs with smooth weights.

    With an image that fits one tile, ``fn`` is called once on the whole image and its output returned unchanged.

    Args:
        fn (`Callable[[torch.Tensor, tuple[slice, slice]], torch.Tensor]`): ``fn(tile, (rows, cols))`` -> output of the
            tile's spatial size.
        sample (`torch.Tensor`): the input, whose spatial size is a multiple of what ``fn`` requires.
        tile_size (`int`): the tile side (clipped to the image).
        overlap (`int`): the overlap between tiles.
        out_channels (`int | None`, *optional*): channels of ``fn``'s output (default: the input's).

    Example:
        >>> x = torch.arange(2 * 3 * 40 * 56, dtype=torch.float32).reshape(2, 3, 40, 56)
        >>> torch.allclose(tiled_apply(lambda t, _: t * 2, x, tile_size=16, overlap=4), x * 2)
        True
    """
    h, w = sample.shape[-2:]
    th, tw = min(tile_size, h), min(tile_size, w)
    if th == h and tw == w:
        return fn(sample, (slice(0, h), slice(0, w)))
    starts_y, starts_x = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    weights = tile_weights(starts_y, starts_x, (th, tw), (h, w))
    channels = sample.shape[1] if out_channels is None else out_channels
    acc = torch.zeros(sample.shape[0], channels, h, w, dtype=torch.float32, device=sample.device)
    norm = torch.zeros(h, w, dtype=torch.float32, device=sample.device)
    for y in starts_y:
        for x in starts_x:
            region = (slice(y, y + th), slice(x, x + tw))
            out = fn(sample[:, :, region[0], region[1]], region)
            wt = weights[(y, x)].to(sample.device)
            acc[:, :, region[0], region[1]] += out.float() * wt
            norm[region] += wt
    return (acc / norm).to(sample.dtype)
