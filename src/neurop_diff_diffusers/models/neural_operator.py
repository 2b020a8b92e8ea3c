"""The Galerkin neural operator of NeurOp-Diff (SRNO, EDSR-baseline encoder), docs/method.md sections 3 and 9."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .coordinates import make_cell, make_coord

#: Output pixels per chunk when ``chunk_size`` is left at ``None``. For the paper-size operator one chunk of this many
#: pixels needs about 1 GB in float32 inference, so a 2560 x 2560 output stays within a few GB.
DEFAULT_CHUNK_SIZE = 65536

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


def _head_layer_norm(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The authors' per-head layer norm: ``(t - mean) / (unbiased std + eps) * weight + bias`` over the last dim."""
    mean = t.mean(dim=-1, keepdim=True)
    std = t.std(dim=-1, keepdim=True)
    return (t - mean) / (std + _NORM_EPS) * weight + bias


class GalerkinAttentionBlock(nn.Module):
    """Galerkin-type attention (kernel integral) block with the authors' residual layout.

    ``A = q (LN(k)^T LN(v)) / N`` per head, ``u = A + z``, ``out = z + W_2 GELU(W_1 u)``. The Galerkin sum
    ``LN(k)^T LN(v)`` is exposed separately ([`key_value_sum`]) so that it can be accumulated over chunks of pixels.
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

    def _qkv(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Channels are grouped by head: head j owns [3dj, 3dj + 3d) = its q | k | v.
        b = z.shape[0]
        d = self.head_dim
        qkv = self.qkv_proj(z).reshape(b, self.num_heads, 3 * d, -1).transpose(-1, -2)  # (B, heads, N, 3d)
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        k = _head_layer_norm(k, self.k_norm_weight, self.k_norm_bias)
        v = _head_layer_norm(v, self.v_norm_weight, self.v_norm_bias)
        return q, k, v

    def key_value_sum(self, z: torch.Tensor) -> torch.Tensor:
        """``sum over pixels of LN(k)^T LN(v)``, shape ``(B, heads, d, d)``; divide by the pixel count before use."""
        _, k, v = self._qkv(z)
        return k.transpose(-1, -2) @ v

    def forward(self, z: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the block to ``z`` (B, width, H, W); ``kv`` is the normalised Galerkin sum, or ``None`` to use z's."""
        q, k, v = self._qkv(z)
        if kv is None:
            kv = (k.transpose(-1, -2) @ v) / (z.shape[-2] * z.shape[-1])
        a = (q @ kv).transpose(-1, -2).reshape(z.shape)
        u = a + z
        return z + self.o_proj2(F.gelu(self.o_proj1(u)))


class GalerkinNeuralOperator(ModelMixin, ConfigMixin):
    r"""The neural-operator prior of NeurOp-Diff: an LR image to an image of any size (docs/method.md section 9).

    An EDSR-baseline encoder gives LR features; every output pixel centre is lifted from its four nearest LR features
    (LIIF local ensemble, area weights, relative coordinates and the relative cell) to ``width`` channels; two
    Galerkin-attention blocks integrate over all output pixels; a two-layer head adds the bilinear upsampling of the
    input. The output lives in the same ``[-1, 1]`` space as the input.

    The Galerkin sums are global, but with ``chunk_size`` they are streamed over chunks of output pixels, exactly (up
    to float summation order): pass ``l`` accumulates block ``l``'s sum, recomputing the blocks before it per chunk,
    and a last pass emits the output per chunk. Memory then grows with the chunk, not with the output size. Outputs
    that fit in one chunk are computed in one pass, as the authors do.

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
    def _lift(self, feat_pos: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Lift query points ``coord`` (B, 1, n, 2) from LR features + their coordinates ``feat_pos`` to ``width``."""
        h, w = feat_pos.shape[-2:]
        rels, feats, areas = [], [], []
        coord_cf = coord.permute(0, 3, 1, 2)  # (B, 2, 1, n)
        for vx in (-1, 1):
            for vy in (-1, 1):
                shifted = coord.clone()
                shifted[..., 0] += vx / h + _SHIFT_EPS
                shifted[..., 1] += vy / w + _SHIFT_EPS
                shifted.clamp_(-1 + _SHIFT_EPS, 1 - _SHIFT_EPS)
                sampled = F.grid_sample(feat_pos, shifted.flip(-1), mode="nearest", align_corners=False)
                old_coord = sampled[:, -2:]
                rel = coord_cf - old_coord
                rel[:, 0] *= h
                rel[:, 1] *= w
                rels.append(rel)
                feats.append(sampled[:, :-2])
                areas.append(torch.abs(rel[:, 0] * rel[:, 1]) + 1e-9)
        total = torch.stack(areas).sum(dim=0)
        # Each neighbour is weighted by the area of the rectangle opposite to it.
        areas = [areas[3], areas[2], areas[1], areas[0]]
        feats = [f * (a / total).unsqueeze(1) for f, a in zip(feats, areas)]
        rel_cell = cell.clone()
        rel_cell[:, 0] *= h
        rel_cell[:, 1] *= w
        rel_cell = rel_cell[:, :, None, None].expand(-1, -1, *coord.shape[1:3])
        return self.lift(torch.cat([*rels, *feats, rel_cell], dim=1))

    def _trunk(
        self, feat_pos: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, kvs: list[torch.Tensor]
    ) -> torch.Tensor:
        """Lift, then apply the first ``len(kvs)`` Galerkin blocks with the given normalised sums."""
        z = self._lift(feat_pos, coord, cell)
        for block, kv in zip(self.galerkin_blocks, kvs):
            z = block(z, kv)
        return z

    def _head(self, z: torch.Tensor, image: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        residual = F.grid_sample(image, coord.flip(-1), mode="bilinear", padding_mode="border", align_corners=False)
        return self.fc2(F.gelu(self.fc1(z))) + residual

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
            chunk_size (`int`, *optional*): query points per chunk (``None``: ``DEFAULT_CHUNK_SIZE``).

        Returns:
            `torch.Tensor`: ``(B, out_channels, *spatial)``.

        Raises:
            ValueError: if ``chunk_size`` is neither ``None`` nor a positive int.
        """
        chunk_size = _check_chunk_size(chunk_size)
        b = image.shape[0]
        spatial = coord.shape[1:-1]
        coord = coord.reshape(b, 1, -1, 2).to(image.dtype)
        cell = cell.to(image.dtype)
        n = coord.shape[2]
        feat_pos = self.encode(image)
        if n <= chunk_size:
            z = self._lift(feat_pos, coord, cell)
            for block in self.galerkin_blocks:
                z = block(z)
            out = self._head(z, image, coord)
        else:
            kvs: list[torch.Tensor] = []
            for block in self.galerkin_blocks:
                total = None
                for part in _chunks(coord, chunk_size):
                    s = block.key_value_sum(self._trunk(feat_pos, part, cell, kvs))
                    total = s if total is None else total + s
                kvs.append(total / n)
            out = torch.cat(
                [
                    self._head(self._trunk(feat_pos, part, cell, kvs), image, part)
                    for part in _chunks(coord, chunk_size)
                ],
                dim=-1,
            )
        return out.reshape(b, out.shape[1], *spatial)

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
            chunk_size (`int`, *optional*): output pixels per chunk; ``None`` uses ``DEFAULT_CHUNK_SIZE`` (65536). The
                result does not depend on it (up to float summation order); peak memory grows with it.
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


def _chunks(coord: torch.Tensor, chunk_size: int) -> Iterator[torch.Tensor]:
    n = coord.shape[2]
    for start in range(0, n, chunk_size):
        yield coord[:, :, start : start + chunk_size]


__all__ = ["DEFAULT_CHUNK_SIZE", "GalerkinNeuralOperator", "GalerkinNeuralOperatorOutput"]
