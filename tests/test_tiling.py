"""Tiled denoising: tile layout, exact blending, one tile == untiled, and no seams on a smooth image."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from neurop_diff_diffusers import NeurOpDiffPipeline, build_pipeline, default_scheduler
from neurop_diff_diffusers.pipelines.tiling import num_tiles, tile_starts, tiled_apply


@pytest.mark.parametrize(
    "length, tile, overlap", [(100, 32, 8), (2560, 512, 64), (97, 40, 20), (64, 64, 8), (65, 64, 0)]
)
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours overlap by >= overlap
    assert starts == sorted(set(starts))


def test_tiled_apply_of_identity_is_exact():
    x = torch.randn(2, 3, 70, 45, generator=torch.Generator().manual_seed(0))
    out = tiled_apply(lambda t, _: t.clone(), x, tile_size=24, overlap=6)
    assert (out - x).abs().max().item() <= 1e-6
    assert num_tiles((70, 45), 24, 6) == len(tile_starts(70, 24, 6)) * len(tile_starts(45, 24, 6))


def test_one_tile_is_identical_to_untiled():
    pipe = build_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    lr = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)

    def run(**kw):
        return pipe(
            lr, scale=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np", **kw
        )

    untiled = run(tile_size=None).images
    np.testing.assert_array_equal(run(tile_size=48).images, untiled)  # 40x48 fits one 48 px tile
    tiled = run(tile_size=16, tile_overlap=4).images
    assert tiled.shape == untiled.shape


def test_tiles_bound_unet_inputs_and_progress_counts_them():
    pipe = build_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    sizes = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:])))
    try:
        out = pipe(
            np.zeros((30, 40, 3), np.uint8),
            scale=2,
            num_inference_steps=2,
            tile_size=24,
            tile_overlap=8,
            output_type="np",
        ).images
    finally:
        hook.remove()
    assert out.shape == (1, 60, 80, 3)
    assert set(sizes) == {(24, 24)}
    assert len(sizes) == 2 * num_tiles((60, 80), 24, 8)


class OracleUNet(ModelMixin, ConfigMixin):
    """A stand-in denoiser that knows the clean image (the prior) up to a per-tile offset, like a network whose
    prediction depends on the context a tile gives it. Hard stitching would show the offsets as seams."""

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (8, 8, 8),
        offset: float = 0.03,
        tiles: int = 1,
        in_channels: int = 6,  # what the pipeline checks a NeurOp-Diff UNet by: noisy image + prior in, RGB out
        out_channels: int = 3,
    ):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, sample, timestep):
        x, prior = sample[:, :3], sample[:, 3:]
        g = timestep.reshape(-1, 1, 1, 1)
        y0 = prior + self.config.offset * ((self.calls % self.config.tiles) % 2)
        self.calls += 1
        return SimpleNamespace(sample=(x - g * y0) / torch.sqrt(1 - g**2))


def _seam_ratio(out: np.ndarray, starts: list[int], tile: int) -> tuple[float, float]:
    """Largest jump between neighbouring columns at tile edges, and inside tiles (away from any edge)."""
    jumps = np.abs(np.diff(out[0], axis=1)).max(axis=(0, 2))
    edges = {s - 1 for s in starts[1:]} | {s + tile - 1 for s in starts[:-1]}
    inside = [j for j in range(len(jumps)) if j not in edges]
    return float(jumps[sorted(edges)].max()), float(jumps[inside].max())


@pytest.mark.parametrize("overlap, seamless", [(16, True), (0, False)])
def test_no_seam_on_a_smooth_image(overlap, seamless):
    width, tile = 96, 32
    # the prior of this stand-in pipeline is the bicubic upsampling of a smooth ramp: slope 0.6 / 96 per pixel
    lr = np.stack(np.meshgrid(np.linspace(0.2, 0.8, 48), np.linspace(0.3, 0.5, 24)), -1)[..., [0, 1, 0]]
    tiles = num_tiles((48, width), tile, overlap)
    pipe = NeurOpDiffPipeline(unet=OracleUNet(tiles=tiles), neural_operator=None, scheduler=default_scheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        lr.astype(np.float32), scale=2, num_inference_steps=10, tile_size=tile, tile_overlap=overlap, output_type="np"
    ).images
    at_edges, inside = _seam_ratio(out, tile_starts(width, tile, overlap), tile)
    if seamless:
        assert at_edges <= inside * 1.05, (at_edges, inside)
    else:  # the same offsets without blending make visible seams: the check above can fail
        assert at_edges > 2 * inside, (at_edges, inside)
