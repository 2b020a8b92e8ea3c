"""The Galerkin neural operator of NeurOp-Diff (SRNO, EDSR-baseline encoder), docs/method.md sections 3 and 9."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .coordinates import make_cell, make_coord

#: Largest tile of output pixels when ``chunk_size`` is left at ``None`` (a CPU uses smaller ones, ``CPU_TILE_BYTES``).
#: For the paper-size operator a tile of this many pixels needs under 1 GB in float32 inference.
DEFAULT_CHUNK_SIZE = 65536

#: Bytes of one tile's tokens on a CPU: the output pixels go through the per-pixel layers in tiles of
#: ``CPU_TILE_BYTES / (width * element size)`` pixels (at most ``chunk_size``; 2,048 for width 64, 512 for width 256),
#: small enough that a tile's activations stay in the CPU's caches, large enough for full-speed matrix products.
CPU_TILE_BYTES = 2**19

#: Memory for keeping every output pixel's tokens (``width`` values each) between the passes over the
#: Galerkin blocks. Outputs that need more recompute the earlier blocks tile by tile in every pass instead.
ACTIVATION_CACHE_BYTES = 512 * 2**20

_NORM_EPS = 1e-5
_SHIFT_EPS = 1e-6


@dataclass
class GalerkinNeuralOperatorOutput(BaseOutput):
    """Output of [`GalerkinNeuralOperator`].

    Args:
        sample (`torch.Tensor` of shape `(batch_size, out_channels, height, width)`):
            The operator's image at the requested size, in the same ``[-1, 1]`` space as its input.
    """

    sample: torch.Tensor


class ResidualBlock(nn.Module):
    """EDSR residual block: ``x + conv(relu(conv(x)))`` (res_scale 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class EDSREncoder(nn.Module):
    """EDSR-baseline without its upsampling tail: ``f = body(head(x)) + head(x)``."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int):
        super().__init__()
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList([ResidualBlock(channels) for _ in range(num_blocks)])
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        f = h
        for block in self.blocks:
            f = block(f)
        return self.conv_out(f) + h


class GalerkinAttentionBlock(nn.Module):
    """Galerkin-type attention (kernel integral) block with the authors' residual layout.

    ``A = q (LN(k)^T LN(v)) / N`` per head, ``u = A + z``, ``out = z + W_2 GELU(W_1 u)``, where ``LN`` is the authors'
    per-head layer norm ``(t - mean) / (unbiased std + eps) * weight + bias`` over a head's channels. The block works
    on pixels as tokens, ``z`` of shape ``(n, width)`` (its 1 x 1 convolutions are matrix products), in two halves so
    that the Galerkin sum over all pixels can be accumulated over tiles of pixels: [`galerkin_sums`] gives a tile's
    part of the sum, [`finish`] a tile's output once the whole sum is known.

    The same function, rearranged so that a CPU spends its time in large matrix products (equal up to float rounding,
    checked against a literal implementation of the authors' code to 1e-5):

    - the mean over a head's channels is a linear function of ``z``: subtracted from the key / value projection's
      weights, so that the projection gives the deviations directly; the std is the deviations' norm;
    - the layer norm's weight and bias are applied to the summed ``d x d`` matrices, not to every token;
    - with the sum ``S = LN(k)^T LN(v) / N`` known, ``q S`` is a linear function of ``z`` too: the query projection,
      ``S`` and ``W_1`` are multiplied into one ``width x width`` matrix, so a tile's output costs two matrix products.
    """

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads != 0:
            raise ValueError(f"`width` ({width}) must be divisible by `num_heads` ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.qkv_proj = nn.Conv2d(width, 3 * width, 1)
        self.o_proj1 = nn.Conv2d(width, width, 1)
        self.o_proj2 = nn.Conv2d(width, width, 1)
        self.k_norm_weight = nn.Parameter(torch.ones(num_heads, 1, self.head_dim))
        self.k_norm_bias = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))
        self.v_norm_weight = nn.Parameter(torch.ones(num_heads, 1, self.head_dim))
        self.v_norm_bias = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))

    def _split_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Output channels are grouped by head: head j owns [3dj, 3dj + 3d) = its q | k | v.
        h, d = self.num_heads, self.head_dim
        weight = _matrix(self.qkv_proj.weight).view(h, 3, d, -1).transpose(0, 1)  # (q|k|v, heads, d, width)
        return weight, self.qkv_proj.bias.view(h, 3, d).transpose(0, 1)

    def centred_key_value_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``(2 * width, width)`` and bias ``(2 * width, 1)`` giving the keys' then the values' deviations from
        their head's mean (rows ordered key / value, head, channel)."""
        weight, bias = self._split_qkv()
        weight, bias = weight[1:], bias[1:]
        weight = weight - weight.mean(dim=2, keepdim=True)
        bias = bias - bias.mean(dim=2, keepdim=True)
        return weight.reshape(-1, weight.shape[-1]), bias.reshape(-1, 1)

    def galerkin_sums(self, z: torch.Tensor, projection: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """This tile's part of the Galerkin sum, before the layer norm's weight and bias.

        Args:
            z (`torch.Tensor`): tokens ``(n, width)``.
            projection (`tuple[torch.Tensor, torch.Tensor]`): [`centred_key_value_projection`].

        Returns:
            `torch.Tensor`: ``(heads, d + 1, d + 1)``: with ``K``, ``V`` the keys and values normalised by their
            head's mean and unbiased std + eps (``(n, d)`` per head), ``[K 1]^T [V 1]`` summed over the tokens, i.e.
            ``K^T V``, the column sums of ``K`` and ``V`` and the token count.
        """
        h, d, n = self.num_heads, self.head_dim, z.shape[0]
        dev = torch.addmm(projection[1], projection[0], z.t()).view(2 * h, d, n)  # (k|v x heads, d, n)
        # 1 / (unbiased std + eps) of every head's key and value at every token
        scale = 1 / ((dev * dev).sum(dim=1, keepdim=True).div(d - 1).sqrt() + _NORM_EPS)
        k, v = dev.view(2, h, d, n).unbind(0)
        k_scale, v_scale = scale.view(2, h, 1, n).unbind(0)
        cross = torch.bmm(k * (k_scale * v_scale), v.transpose(1, 2))  # K^T V: (heads, d, d)
        sums = torch.bmm(dev, scale.transpose(1, 2)).view(2, h, d, 1)  # column sums of K and V
        count = cross.new_full((h, 1, 1), n)
        return torch.cat(
            [torch.cat([cross, sums[0]], dim=2), torch.cat([sums[1].transpose(1, 2), count], dim=2)], dim=1
        )

    def galerkin_matrix(self, sums: torch.Tensor) -> torch.Tensor:
        """``LN(k)^T LN(v) / N`` per head ``(heads, d, d)`` from [`galerkin_sums`] added over all ``N`` tokens."""
        kw, kb = self.k_norm_weight[:, 0, :, None], self.k_norm_bias[:, 0, :, None]  # (heads, d, 1)
        vw, vb = self.v_norm_weight[:, 0, None, :], self.v_norm_bias[:, 0, None, :]  # (heads, 1, d)
        kv, k_sum, v_sum, n = sums[:, :-1, :-1], sums[:, :-1, -1:], sums[:, -1:, :-1], sums[:, -1:, -1:]
        # sum (K diag(kw) + 1 kb^T)^T (V diag(vw) + 1 vb^T), expanded
        total = kw * kv * vw + (kw * k_sum) * vb + kb * (v_sum * vw) + n * (kb * vb)
        return total / n

    def output_projection(self, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``(width, width)`` and bias of ``u -> W_1 u`` as a function of ``z`` given ``galerkin_matrix``.

        ``u = z + q S`` per head with ``q = W_q z + b_q``, so ``W_1 u + b_1 = W_1 (I + W_q^T S)^T z + W_1 S^T b_q +
        b_1`` with ``S`` the block-diagonal Galerkin matrix.
        """
        weight, bias = self._split_qkv()
        w_q, b_q = weight[0], bias[0]  # (heads, d, width), (heads, d)
        attended = torch.einsum("hdi,hde->ihe", w_q, matrix).reshape(w_q.shape[-1], -1)  # (width in, width)
        attended_bias = torch.einsum("hd,hde->he", b_q, matrix).reshape(-1)
        w_1 = _matrix(self.o_proj1.weight)
        identity = torch.eye(w_1.shape[1], dtype=w_1.dtype, device=w_1.device)
        return (identity + attended) @ w_1.t(), w_1 @ attended_bias + self.o_proj1.bias

    def finish(self, z: torch.Tensor, output_projection: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The block's output for tokens ``z`` ``(n, width)`` given [`output_projection`]."""
        hidden = F.gelu(torch.addmm(output_projection[1], z, output_projection[0]))
        return torch.addmm(z + self.o_proj2.bias, hidden, _matrix(self.o_proj2.weight).t())

    def forward(self, z: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the block to ``z`` (B, width, H, W); ``matrix`` is the Galerkin matrix (B, heads, d, d) of
        [`galerkin_matrix`], or ``None`` for z's own."""
        outs = []
        projection = self.centred_key_value_projection()
        for i in range(z.shape[0]):
            tokens = z[i].flatten(1).t()
            m = self.galerkin_matrix(self.galerkin_sums(tokens, projection)) if matrix is None else matrix[i]
            outs.append(self.finish(tokens, self.output_projection(m)).t())
        return torch.stack(outs).view(z.shape)


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """A 1 x 1 convolution's weight ``(out, in, 1, 1)`` as the matrix ``(out, in)``."""
    return weight.view(weight.shape[0], weight.shape[1])


@dataclass
class _Lattice:
    """One image's LR features as a table of tokens, with what lifting any query point from them needs."""

    features: torch.Tensor  # (h * w, F), row-major
    positions: torch.Tensor  # (h * w, 2): the cells' centre coordinates
    index_map: torch.Tensor  # (1, 2, h, w): each cell's (row, column), to be sampled with grid_sample
    shifts: torch.Tensor  # (4, 2): the offsets to the four neighbours' cells, as the authors add them
    scale: torch.Tensor  # (h, w)
    lift_weight: torch.Tensor  # (4 * (2 + F), width): the lifting layer's weight for [rel_i, feature_i]_i
    lift_bias: torch.Tensor  # (width,): its bias plus the constant relative-cell term

    @classmethod
    def build(cls, feat: torch.Tensor, cell: torch.Tensor, lift: nn.Conv2d) -> "_Lattice":
        """The lattice of ``feat`` ``(F, h, w)`` for the output cell ``cell`` ``(2,)`` and the lifting layer."""
        c, h, w = feat.shape
        kwargs = {"device": feat.device, "dtype": feat.dtype}
        grid_dtype = feat.dtype if feat.dtype in (torch.float32, torch.float64) else torch.float32
        rows = torch.arange(h, device=feat.device, dtype=grid_dtype).view(h, 1).expand(h, w)
        cols = torch.arange(w, device=feat.device, dtype=grid_dtype).view(1, w).expand(h, w)
        shifts = [[vx / h + _SHIFT_EPS, vy / w + _SHIFT_EPS] for vx in (-1, 1) for vy in (-1, 1)]
        scale = torch.tensor([h, w], **kwargs)
        # The lifting layer's input is [rel_0..3 (2 each), feature_0..3 (F each), relative cell (2)]; here a token's
        # input is [rel_0, feature_0, ..., rel_3, feature_3] and the cell's term, the same for all, joins the bias.
        weight = _matrix(lift.weight)
        rel_w, feat_w, cell_w = weight[:, :8].view(-1, 4, 2), weight[:, 8 : 8 + 4 * c].view(-1, 4, c), weight[:, -2:]
        return cls(
            features=feat.flatten(1).t().contiguous(),
            positions=make_coord((h, w), **kwargs).view(-1, 2),
            index_map=torch.stack([rows, cols]).unsqueeze(0),
            shifts=torch.tensor(shifts, device=feat.device, dtype=grid_dtype),
            scale=scale,
            lift_weight=torch.cat([rel_w, feat_w], dim=2).view(weight.shape[0], -1).t(),
            lift_bias=torch.addmv(lift.bias, cell_w, cell * scale),
        )


class GalerkinNeuralOperator(ModelMixin, ConfigMixin):
    r"""The neural-operator prior of NeurOp-Diff: an LR image to an image of any size (docs/method.md section 9).

    An EDSR-baseline encoder gives LR features; every output pixel centre is lifted from its four nearest LR features
    (LIIF local ensemble, area weights, relative coordinates and the relative cell) to ``width`` channels; two
    Galerkin-attention blocks integrate over all output pixels; a two-layer head adds the bilinear upsampling of the
    input. The output lives in the same ``[-1, 1]`` space as the input.

    The output pixels are tokens (the 1 x 1 convolutions are matrix products) processed in tiles of at most
    ``chunk_size`` pixels (on a CPU, of ``CPU_TILE_BYTES`` of tokens, to stay in its caches). The Galerkin sums are
    global, so they are streamed over the tiles, exactly (up to float summation order): pass ``l`` accumulates block
    ``l``'s sum, and a last pass emits the output tile by tile. Between the passes every pixel's tokens are kept when
    they fit in ``ACTIVATION_CACHE_BYTES`` (512 MiB: a 1024 x 1024 output at width 256), so that each block runs once
    per pixel; larger outputs recompute the blocks before ``l`` per tile in pass ``l``, and their memory then grows
    with the tile, not with the output size. The blocks are computed in an order that suits a CPU (see
    [`GalerkinAttentionBlock`]); a literal implementation of the authors' code agrees to 1e-5.

    Args:
        in_channels (`int`, defaults to `3`): channels of the input image.
        out_channels (`int`, defaults to `3`): channels of the output image (equal to ``in_channels`` for the
            bilinear residual).
        encoder_channels (`int`, defaults to `64`): features of the EDSR encoder (paper: 64).
        encoder_num_blocks (`int`, defaults to `16`): residual blocks of the EDSR encoder (paper: 16).
        width (`int`, defaults to `256`): channels of the lifted representation (paper: 256).
        num_heads (`int`, defaults to `16`): heads of each Galerkin block (paper: 16).
        num_galerkin_blocks (`int`, defaults to `2`): Galerkin blocks (paper: 2).
        head_channels (`int`, defaults to `256`): hidden channels of the output head (paper: 256).

    Raises:
        ValueError: if ``out_channels`` differs from ``in_channels``, or ``width`` is not divisible by
            ``num_heads``.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers import GalerkinNeuralOperator
        >>> op = GalerkinNeuralOperator(encoder_channels=8, encoder_num_blocks=1, width=16, num_heads=2)
        >>> op(torch.zeros(1, 3, 12, 10), output_size=(37, 29)).sample.shape
        torch.Size([1, 3, 37, 29])
    """

    # Loaded in float32 whatever `torch_dtype` a pipeline is loaded with: in bfloat16 the Galerkin sums over all output
    # pixels lose up to 2.7 on the [-1, 1] scale (measured, paper preset, 64 -> 256 px) and run no faster on a CPU.
    _keep_in_fp32_modules = ["encoder", "lift", "galerkin_blocks", "fc1", "fc2"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_channels: int = 64,
        encoder_num_blocks: int = 16,
        width: int = 256,
        num_heads: int = 16,
        num_galerkin_blocks: int = 2,
        head_channels: int = 256,
    ):
        super().__init__()
        if out_channels != in_channels:
            raise ValueError(
                f"`out_channels` ({out_channels}) must equal `in_channels` ({in_channels}): the output adds the "
                "bilinear upsampling of the input."
            )
        self.encoder = EDSREncoder(in_channels, encoder_channels, encoder_num_blocks)
        self.lift = nn.Conv2d(4 * 2 + 4 * encoder_channels + 2, width, 1)
        self.galerkin_blocks = nn.ModuleList(
            [GalerkinAttentionBlock(width, num_heads) for _ in range(num_galerkin_blocks)]
        )
        self.fc1 = nn.Conv2d(width, head_channels, 1)
        self.fc2 = nn.Conv2d(head_channels, out_channels, 1)

    # ------------------------------------------------------------------------------------------------------------
    # Pieces of the forward pass
    # ------------------------------------------------------------------------------------------------------------
    def _lift(self, lattice: _Lattice, coord: torch.Tensor) -> torch.Tensor:
        """Lift the query points ``coord`` ``(n, 2)`` to tokens ``(n, width)`` from the LR lattice (local ensemble)."""
        n, w = coord.shape[0], lattice.index_map.shape[-1]
        shifted = (coord.to(lattice.shifts.dtype).unsqueeze(1) + lattice.shifts).clamp_(
            -1 + _SHIFT_EPS, 1 - _SHIFT_EPS
        )
        # The nearest LR cell of each neighbour exactly as grid_sample picks it: sample the map of (row, column).
        rc = F.grid_sample(lattice.index_map, shifted.flip(-1).unsqueeze(0), mode="nearest", align_corners=False)
        rc = rc[0].long()
        index = rc[0] * w + rc[1]  # (n, 4)
        rel = (coord.unsqueeze(1) - lattice.positions[index]) * lattice.scale  # (n, 4, 2)
        area = torch.abs(rel[..., 0] * rel[..., 1]) + 1e-9
        # Each neighbour is weighted by the area of the rectangle opposite to it.
        weight = area.flip(1) / area.sum(dim=1, keepdim=True)
        feats = lattice.features[index] * weight.unsqueeze(-1)  # (n, 4, F)
        return torch.addmm(lattice.lift_bias, torch.cat([rel, feats], dim=2).view(n, -1), lattice.lift_weight)

    def _trunk(self, lattice: _Lattice, coord: torch.Tensor, outputs: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """Lift, then apply the first ``len(outputs)`` Galerkin blocks with their output projections."""
        z = self._lift(lattice, coord)
        for block, projection in zip(self.galerkin_blocks, outputs):
            z = block.finish(z, projection)
        return z

    def _head(self, z: torch.Tensor, image: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        """Output ``(out_channels, n)`` of tokens ``z`` ``(n, width)``: the head plus the bilinear residual."""
        n = coord.shape[0]
        grid = coord.flip(-1).view(1, 1, n, 2)
        residual = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        hidden = F.gelu(F.linear(z, _matrix(self.fc1.weight), self.fc1.bias))
        return torch.addmm(residual.view(-1, n), _matrix(self.fc2.weight), hidden.t()) + self.fc2.bias[:, None]

    def _run_cached(self, lattice: _Lattice, image: torch.Tensor, tiles: list[torch.Tensor]) -> torch.Tensor:
        """All passes over the tiles, keeping every tile's tokens between the passes."""
        blocks = list(self.galerkin_blocks)
        state: list[Any] = [None] * len(tiles)
        output = None
        for index, block in enumerate(blocks):
            projection = block.centred_key_value_projection()
            total = None
            for i, coord in enumerate(tiles):
                z = self._lift(lattice, coord) if index == 0 else blocks[index - 1].finish(state[i], output)
                state[i] = z
                s = block.galerkin_sums(z, projection)
                total = s if total is None else total + s
            output = block.output_projection(block.galerkin_matrix(total))
        outs = []
        for i, coord in enumerate(tiles):
            z = blocks[-1].finish(state[i], output) if blocks else self._lift(lattice, coord)
            state[i] = None
            outs.append(self._head(z, image, coord))
        return torch.cat(outs, dim=1)

    def _run_streamed(self, lattice: _Lattice, image: torch.Tensor, tiles: list[torch.Tensor]) -> torch.Tensor:
        """All passes over the tiles, recomputing the earlier blocks of each tile in every pass (bounded memory)."""
        outputs: list[tuple[torch.Tensor, ...]] = []
        for block in self.galerkin_blocks:
            projection = block.centred_key_value_projection()
            total = None
            for coord in tiles:
                s = block.galerkin_sums(self._trunk(lattice, coord, outputs), projection)
                total = s if total is None else total + s
            outputs.append(block.output_projection(block.galerkin_matrix(total)))
        return torch.cat([self._head(self._trunk(lattice, coord, outputs), image, coord) for coord in tiles], dim=1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """LR features of ``image`` (B, C, h, w) with their grid-centre coordinates appended: (B, F + 2, h, w)."""
        feat = self.encoder(image)
        pos = make_coord(feat.shape[-2:], device=feat.device, dtype=feat.dtype).permute(2, 0, 1)
        return torch.cat([feat, pos.unsqueeze(0).expand(feat.shape[0], -1, -1, -1)], dim=1)

    def query(
        self,
        image: torch.Tensor,
        coord: torch.Tensor,
        cell: torch.Tensor,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Evaluate the operator at arbitrary query points (used for training on sampled HR pixels).

        The Galerkin sums run over the given query points (a Monte-Carlo estimate of the kernel integral).

        Args:
            image (`torch.Tensor`): LR image ``(B, C, h, w)`` in ``[-1, 1]``.
            coord (`torch.Tensor`): query coordinates ``(B, *spatial, 2)`` in ``[-1, 1]`` (row, column), see
                [`~neurop_diff_diffusers.models.coordinates.make_coord`].
            cell (`torch.Tensor`): the output cell ``(B, 2)`` = ``(2 / H_out, 2 / W_out)``.
            chunk_size (`int`, *optional*): at most this many query points go through the per-pixel layers at once
                (``None``: ``DEFAULT_CHUNK_SIZE``).

        Returns:
            `torch.Tensor`: ``(B, out_channels, *spatial)``.

        Raises:
            ValueError: if ``chunk_size`` is neither ``None`` nor a positive int.
        """
        chunk_size = _check_chunk_size(chunk_size)
        b = image.shape[0]
        spatial = coord.shape[1:-1]
        coord = coord.reshape(b, -1, 2).to(image.dtype)
        cell = cell.to(image.dtype)
        n = coord.shape[1]
        tile = chunk_size
        if image.device.type == "cpu":
            tile = max(1, min(chunk_size, CPU_TILE_BYTES // (self.config.width * image.element_size())))
        cached = n * self.config.width * image.element_size() <= ACTIVATION_CACHE_BYTES
        run = self._run_cached if cached else self._run_streamed
        feat = self.encoder(image)
        outs = []
        for i in range(b):
            lattice = _Lattice.build(feat[i], cell[i], self.lift)
            tiles = [coord[i, start : start + tile] for start in range(0, n, tile)]
            outs.append(run(lattice, image[i : i + 1], tiles))
        return torch.stack(outs).reshape(b, -1, *spatial)

    def forward(
        self,
        image: torch.Tensor,
        output_size: tuple[int, int],
        chunk_size: int | None = None,
        return_dict: bool = True,
    ) -> GalerkinNeuralOperatorOutput | tuple[torch.Tensor]:
        """Map an LR image to an image of ``output_size`` (any size: non-square, non-integer scales, any factor).

        Args:
            image (`torch.Tensor`): ``(B, C, h, w)`` in ``[-1, 1]``.
            output_size (`tuple[int, int]`): ``(height, width)`` of the output.
            chunk_size (`int`, *optional*): at most this many output pixels go through the per-pixel layers at once;
                ``None`` uses ``DEFAULT_CHUNK_SIZE`` (65536). The result does not depend on it (up to float summation
                order).
            return_dict (`bool`, defaults to `True`): return a [`GalerkinNeuralOperatorOutput`] rather than a tuple.

        Returns:
            [`GalerkinNeuralOperatorOutput`] or `tuple`: [`GalerkinNeuralOperatorOutput`] with ``.sample`` of shape
            ``(B, out_channels, height, width)``; with ``return_dict=False``, the tuple ``(sample,)``.

        Raises:
            ValueError: if ``image`` is not ``(B, in_channels, h, w)``, ``output_size`` is not two positive ints, or
                ``chunk_size`` is neither ``None`` nor a positive int.
        """
        if image.ndim != 4 or image.shape[1] != self.config.in_channels:
            raise ValueError(
                f"`image` must have shape (B, {self.config.in_channels}, h, w), got {tuple(image.shape)}."
            )
        output_size = _check_output_size(output_size)
        coord = make_coord(output_size, device=image.device, dtype=image.dtype)
        coord = coord.unsqueeze(0).expand(image.shape[0], -1, -1, -1)
        cell = make_cell(output_size, image.shape[0], device=image.device, dtype=image.dtype)
        sample = self.query(image, coord, cell, chunk_size=chunk_size)
        if not return_dict:
            return (sample,)
        return GalerkinNeuralOperatorOutput(sample=sample)

    # ------------------------------------------------------------------------------------------------------------
    # The authors' checkpoint
    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_official_state_dict(cls, state_dict: Mapping[str, Any]) -> "GalerkinNeuralOperator":
        """Build the operator from the authors' SRNO checkpoint (names and shapes: docs/method.md section 9).

        The configuration is read off the shapes; ``encoder.sub_mean`` / ``encoder.add_mean`` are dropped (the
        authors do not apply them). A dict nested under ``"model"`` (their checkpoint file) or with DDP ``module.``
        prefixes is accepted.

        Args:
            state_dict (`Mapping[str, Any]`): the authors' state dict, or their checkpoint dict holding it under
                ``"model"``.

        Returns:
            [`GalerkinNeuralOperator`]: the operator with the authors' weights.

        Raises:
            TypeError: if ``state_dict`` is not a mapping.
            ValueError: if the state dict has keys that do not map to the operator, lacks some, or its shapes do not
                match.

        Example:
            >>> import torch
            >>> ckpt = torch.load("srno.pth", map_location="cpu")  # doctest: +SKIP
            >>> op = GalerkinNeuralOperator.from_official_state_dict(ckpt)  # doctest: +SKIP
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"`state_dict` must be a mapping, got {type(state_dict).__name__}.")
        if "model" in state_dict and isinstance(state_dict["model"], Mapping):
            state_dict = state_dict["model"]
            if "sd" in state_dict and isinstance(state_dict["sd"], Mapping):
                state_dict = state_dict["sd"]
        official = {k.removeprefix("module."): v for k, v in state_dict.items()}
        mapped = {}
        unknown = []
        for key, value in official.items():
            if key.startswith(("encoder.sub_mean.", "encoder.add_mean.")):
                continue
            new_key = _map_official_key(key)
            if new_key is None:
                unknown.append(key)
            else:
                mapped[new_key] = value
        if unknown:
            raise ValueError(f"Unexpected keys in the official state dict: {sorted(unknown)[:10]}")
        try:
            config = {
                "in_channels": mapped["encoder.head.weight"].shape[1],
                "out_channels": mapped["fc2.weight"].shape[0],
                "encoder_channels": mapped["encoder.head.weight"].shape[0],
                "encoder_num_blocks": len({k.split(".")[2] for k in mapped if k.startswith("encoder.blocks.")}),
                "width": mapped["lift.weight"].shape[0],
                "num_heads": mapped["galerkin_blocks.0.k_norm_weight"].shape[0],
                "num_galerkin_blocks": len({k.split(".")[1] for k in mapped if k.startswith("galerkin_blocks.")}),
                "head_channels": mapped["fc1.weight"].shape[0],
            }
        except KeyError as err:
            raise ValueError(f"The official state dict lacks {err.args[0]!r} (after renaming).") from None
        model = cls(**config)
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise ValueError(f"Official state dict does not match: missing {missing}, unexpected {unexpected}.")
        return model

    def to_official_state_dict(self) -> dict[str, torch.Tensor]:
        """This operator's weights under the authors' parameter names: the inverse of [`from_official_state_dict`]
        (their mean-shift buffers, constants of the encoder, are left out).

        Example:
            >>> op = GalerkinNeuralOperator(encoder_channels=8, encoder_num_blocks=1, width=16, num_heads=2,
            ...                             head_channels=8)
            >>> back = GalerkinNeuralOperator.from_official_state_dict(op.to_official_state_dict())
            >>> all(torch.equal(a, b) for a, b in zip(op.state_dict().values(), back.state_dict().values()))
            True
        """
        out = {}
        for key, value in self.state_dict().items():
            if key.startswith("encoder.conv_out."):  # the authors' last encoder layer follows their blocks
                out[f"encoder.body.{self.config.encoder_num_blocks}.{key.rsplit('.', 1)[1]}"] = value
                continue
            for pattern, repl in _TO_OFFICIAL_KEY_RULES:
                if pattern.match(key):
                    out[pattern.sub(repl, key)] = value
                    break
            else:
                raise ValueError(f"no official name for {key!r}")
        return out


_OFFICIAL_KEY_RULES = [
    (re.compile(r"^encoder\.head\.0\.(weight|bias)$"), r"encoder.head.\1"),
    (re.compile(r"^encoder\.body\.(\d+)\.body\.0\.(weight|bias)$"), r"encoder.blocks.\1.conv1.\2"),
    (re.compile(r"^encoder\.body\.(\d+)\.body\.2\.(weight|bias)$"), r"encoder.blocks.\1.conv2.\2"),
    (re.compile(r"^encoder\.body\.(\d+)\.(weight|bias)$"), r"encoder.conv_out.\2"),
    (re.compile(r"^conv00\.(weight|bias)$"), r"lift.\1"),
    (re.compile(r"^conv(\d+)\.(qkv_proj|o_proj1|o_proj2)\.(weight|bias)$"), r"galerkin_blocks.\1.\2.\3"),
    (re.compile(r"^conv(\d+)\.kln\.(weight|bias)$"), r"galerkin_blocks.\1.k_norm_\2"),
    (re.compile(r"^conv(\d+)\.vln\.(weight|bias)$"), r"galerkin_blocks.\1.v_norm_\2"),
    (re.compile(r"^(fc1|fc2)\.(weight|bias)$"), r"\1.\2"),
]

#: The inverse of ``_OFFICIAL_KEY_RULES``, ours -> the authors' (``GalerkinNeuralOperator.to_official_state_dict``).
_TO_OFFICIAL_KEY_RULES = [
    (re.compile(r"^encoder\.head\.(weight|bias)$"), r"encoder.head.0.\1"),
    (re.compile(r"^encoder\.blocks\.(\d+)\.conv1\.(weight|bias)$"), r"encoder.body.\1.body.0.\2"),
    (re.compile(r"^encoder\.blocks\.(\d+)\.conv2\.(weight|bias)$"), r"encoder.body.\1.body.2.\2"),
    (re.compile(r"^lift\.(weight|bias)$"), r"conv00.\1"),
    (re.compile(r"^galerkin_blocks\.(\d+)\.(qkv_proj|o_proj1|o_proj2)\.(weight|bias)$"), r"conv\1.\2.\3"),
    (re.compile(r"^galerkin_blocks\.(\d+)\.k_norm_(weight|bias)$"), r"conv\1.kln.\2"),
    (re.compile(r"^galerkin_blocks\.(\d+)\.v_norm_(weight|bias)$"), r"conv\1.vln.\2"),
    (re.compile(r"^(fc1|fc2)\.(weight|bias)$"), r"\1.\2"),
]


def _map_official_key(key: str) -> str | None:
    for pattern, repl in _OFFICIAL_KEY_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def _check_chunk_size(chunk_size: int | None) -> int:
    if chunk_size is None:
        return DEFAULT_CHUNK_SIZE
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int (output pixels per chunk) or None, got {chunk_size!r}.")
    return chunk_size


def _check_output_size(output_size: Any) -> tuple[int, int]:
    ok = (
        isinstance(output_size, (tuple, list))
        and len(output_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in output_size)
    )
    if not ok:
        raise ValueError(f"`output_size` must be two positive ints (height, width), got {output_size!r}.")
    return int(output_size[0]), int(output_size[1])


__all__ = [
    "ACTIVATION_CACHE_BYTES",
    "CPU_TILE_BYTES",
    "DEFAULT_CHUNK_SIZE",
    "GalerkinNeuralOperator",
    "GalerkinNeuralOperatorOutput",
]
