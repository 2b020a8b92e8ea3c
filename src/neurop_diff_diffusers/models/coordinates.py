"""Pixel-centre coordinates and cell sizes, shared by the neural operator, the data pipeline and training.

Conventions (docs/method.md section 9): coordinates live in ``[-1, 1]``, they are the centres of a regular grid,
component 0 is the row (y) and component 1 the column (x). ``torch.nn.functional.grid_sample`` wants ``(x, y)``, so
callers pass ``coord.flip(-1)`` with ``align_corners=False``. The cell of a grid of ``H x W`` pixels is
``(2 / H, 2 / W)``.
"""

from __future__ import annotations

import torch


def make_coord_1d(
    n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Centres of ``n`` equal cells covering ``[-1, 1]``: ``-1 + 1/n + 2i/n`` for ``i = 0 .. n-1``.

    Args:
        n (`int`): number of cells, at least 1.
        device (`torch.device | str | None`, *optional*): torch device of the result.
        dtype (`torch.dtype`, defaults to `torch.float32`): floating dtype of the result.

    Example:
        >>> make_coord_1d(2).tolist()
        [-0.5, 0.5]
    """
    if n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n}.")
    r = 1.0 / n
    return -1.0 + r + (2.0 * r) * torch.arange(n, device=device, dtype=dtype)


def make_coord(
    size: tuple[int, int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Grid-centre coordinates of an image of ``size = (H, W)`` pixels, shape ``(H, W, 2)``, ``[..., 0]`` the row.

    Args:
        size (`tuple[int, int]`): ``(height, width)`` of the grid.
        device (`torch.device | str | None`, *optional*): torch device of the result.
        dtype (`torch.dtype`, defaults to `torch.float32`): floating dtype of the result.

    Example:
        >>> make_coord((2, 3)).shape
        torch.Size([2, 3, 2])
    """
    h, w = size
    ys = make_coord_1d(h, device=device, dtype=dtype)
    xs = make_coord_1d(w, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


def make_cell(
    size: tuple[int, int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The cell size ``(2 / H, 2 / W)`` of an output grid of ``size = (H, W)`` pixels, shape ``(batch_size, 2)``.

    Args:
        size (`tuple[int, int]`): ``(height, width)`` of the output grid.
        batch_size (`int`, defaults to `1`): number of rows of the result.
        device (`torch.device | str | None`, *optional*): torch device of the result.
        dtype (`torch.dtype`, defaults to `torch.float32`): floating dtype of the result.

    Example:
        >>> make_cell((4, 8)).tolist()
        [[0.5, 0.25]]
    """
    h, w = size
    return torch.tensor([2.0 / h, 2.0 / w], device=device, dtype=dtype).expand(batch_size, 2).clone()
