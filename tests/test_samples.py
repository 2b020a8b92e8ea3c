"""Training samples of both stages: shapes, alignment of coordinates and values, reproducibility, collation."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from neurop_diff_diffusers.data import (
    Stage1Dataset,
    Stage2Dataset,
    bicubic_degrade,
    collate_stage1,
    collate_stage2,
    degraded_size,
    load_rs_dataset,
    make_stage1_sample,
    make_stage2_sample,
    random_dihedral,
    sample_scale,
)
from neurop_diff_diffusers.models.coordinates import make_cell, make_coord


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ramp(size: int = 256) -> torch.Tensor:
    """Channel 0 = row index, channel 1 = column index, channel 2 = 0, scaled into [-1, 1]."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows, cols, torch.zeros_like(rows)]).float() / size * 2 - 1


# ---------------------------------------------------------------- stage 1


def test_stage1_sample_shapes_and_ranges():
    sample = make_stage1_sample(_ramp(), generator=_gen())
    assert sample["lr"].shape == (3, 48, 48)
    assert sample["coord"].shape == (2304, 2) and sample["gt"].shape == (2304, 3)
    assert sample["cell"].shape == (2,)
    assert 1.0 < sample["scale"] <= 4.0
    hr_size = math.floor(48 * sample["scale"] + 0.5)
    torch.testing.assert_close(sample["cell"], make_cell((hr_size, hr_size))[0])
    for key in ("lr", "coord", "gt"):
        assert sample[key].min() >= -1 and sample[key].max() <= 1


def test_stage1_queries_are_distinct_pixel_centres_of_the_helper_grid():
    sample = make_stage1_sample(_ramp(), generator=_gen(3))
    hr_size = math.floor(48 * sample["scale"] + 0.5)
    grid = make_coord((hr_size, hr_size))
    # every query coordinate is exactly one of the helper's pixel centres, each at most once
    pixel = ((sample["coord"] + 1) * hr_size / 2 - 0.5).round().long()
    assert torch.equal(grid[pixel[:, 0], pixel[:, 1]], sample["coord"])
    assert (pixel[:, 0] * hr_size + pixel[:, 1]).unique().numel() == 2304


def test_stage1_values_sit_at_their_coordinates():
    """Without augmentation, gt at a query is the HR pixel at that coordinate: on a ramp, row/col offsets agree."""
    sample = make_stage1_sample(_ramp(), generator=_gen(5), augment=False)
    hr_size = math.floor(48 * sample["scale"] + 0.5)
    pixel = (sample["coord"] + 1) * hr_size / 2 - 0.5  # row, column of the query inside the patch
    image_pixel = (sample["gt"][:, :2] + 1) * 256 / 2  # row, column in the 256 px image
    offset = image_pixel - pixel
    torch.testing.assert_close(offset, offset[:1].expand_as(offset), atol=1e-3, rtol=0)
    assert torch.allclose(offset, offset.round(), atol=1e-3)  # the crop starts on a pixel


def test_stage1_lr_is_the_bicubic_degradation_of_the_patch():
    image = torch.rand(3, 100, 100, generator=_gen(1)) * 2 - 1
    sample = make_stage1_sample(image, generator=_gen(2), lr_patch=16, scale_min=6.25, scale_max=6.25, augment=False)
    assert sample["scale"] == 6.25  # round(16 * 6.25) = 100: the patch is the whole image
    torch.testing.assert_close(sample["lr"], bicubic_degrade(image, size=(16, 16)))


def test_stage1_is_reproducible_from_the_generator():
    image = torch.rand(3, 256, 256, generator=_gen(1)) * 2 - 1
    a, b = make_stage1_sample(image, generator=_gen(7)), make_stage1_sample(image, generator=_gen(7))
    c = make_stage1_sample(image, generator=_gen(8))
    for key in ("lr", "coord", "cell", "gt"):
        assert torch.equal(a[key], b[key])
    assert a["scale"] == b["scale"] != c["scale"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale_max": 6.0}, r"too small for HR patches of up to round\(48 \* 6\) = 288 px"),
        ({"scale_min": 3.0, "scale_max": 2.0}, "scale_min"),
        ({"scale_min": 0.5}, "`scale_min` must be a finite number >= 1"),
        ({"num_queries": 48 * 48 + 1}, "`num_queries` must be at most 2304"),
        ({"lr_patch": 0}, "`lr_patch` must be a positive int"),
    ],
)
def test_stage1_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_stage1_sample(torch.zeros(3, 256, 256), generator=_gen(), **kwargs)


def test_collate_stage1():
    image = torch.rand(3, 256, 256, generator=_gen(1)) * 2 - 1
    batch = collate_stage1([make_stage1_sample(image, generator=_gen(i)) for i in range(3)])
    assert batch["lr"].shape == (3, 3, 48, 48)
    assert batch["coord"].shape == (3, 2304, 2) and batch["gt"].shape == (3, 2304, 3)
    assert batch["cell"].shape == (3, 2) and batch["scale"].shape == (3,)


# ---------------------------------------------------------------- stage 2


@pytest.mark.parametrize("seed", range(5))
def test_stage2_sample(seed):
    sample = make_stage2_sample(torch.rand(3, 80, 90) * 2 - 1, generator=_gen(seed), resolution=64)
    assert sample["hr"].shape == (3, 64, 64)
    assert 1.0 < sample["scale"] <= 8.0
    assert tuple(sample["lr"].shape[-2:]) == degraded_size((64, 64), sample["scale"])


def test_stage2_errors():
    with pytest.raises(ValueError, match="`resolution`=256 is larger"):
        make_stage2_sample(torch.zeros(3, 100, 100), resolution=256)
    with pytest.raises(ValueError, match="`scale_max` must be a finite number >= 1"):
        make_stage2_sample(torch.zeros(3, 64, 64), resolution=64, scale_max=float("inf"))


def test_collate_stage2_keeps_lrs_of_different_sizes():
    image = torch.rand(3, 64, 64, generator=_gen(1)) * 2 - 1
    samples = [make_stage2_sample(image, generator=_gen(i), resolution=64) for i in range(4)]
    batch = collate_stage2(samples)
    assert batch["hr"].shape == (4, 3, 64, 64)
    assert isinstance(batch["lr"], list) and len(batch["lr"]) == 4
    assert len({tuple(lr.shape) for lr in batch["lr"]}) > 1
    torch.testing.assert_close(batch["scale"], torch.tensor([s["scale"] for s in samples]))


def test_sample_scale_range_and_augmentation_group():
    g = _gen()
    scales = [sample_scale(1.0, 8.0, g) for _ in range(2000)]
    assert min(scales) > 1.0 and max(scales) <= 8.0 and abs(np.mean(scales) - 4.5) < 0.2
    assert sample_scale(2.0, 2.0, g) == 2.0
    square = torch.arange(9.0).reshape(1, 3, 3)
    seen = {tuple(random_dihedral(square, g).flatten().tolist()) for _ in range(200)}
    assert len(seen) == 8


# ---------------------------------------------------------------- datasets and loaders


def test_stage_datasets_over_a_synthetic_dataset_and_dataloader():
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (70, 80, 3), dtype=np.uint8)) for _ in range(6)]
    source = load_rs_dataset(datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 3}), "train")
    stage1 = Stage1Dataset(source, hr_resolution=64, seed=1, lr_patch=16, num_queries=100)
    loader = torch.utils.data.DataLoader(stage1, batch_size=2, collate_fn=collate_stage1)
    batch = next(iter(loader))
    assert batch["lr"].shape == (2, 3, 16, 16) and batch["gt"].shape == (2, 100, 3)

    stage2 = Stage2Dataset(source, hr_resolution=64, seed=1, resolution=32)
    batch = collate_stage2([stage2[0], stage2[1]])
    assert batch["hr"].shape == (2, 3, 32, 32) and len(batch["lr"]) == 2


def test_stage_datasets_reproduce_a_seed_and_vary_with_epoch():
    images = [torch.rand(3, 64, 64, generator=_gen(i)) * 2 - 1 for i in range(3)]
    a = Stage2Dataset(images, seed=5, resolution=32)
    b = Stage2Dataset(images, seed=5, resolution=32)
    assert all(torch.equal(a[i]["lr"], b[i]["lr"]) and a[i]["scale"] == b[i]["scale"] for i in range(3))
    first = a[0]["scale"]
    a.set_epoch(1)
    assert a[0]["scale"] != first
    assert Stage2Dataset(images, seed=6, resolution=32)[0]["scale"] != first


def test_stage_dataset_rejects_unknown_sample_arguments():
    with pytest.raises(TypeError, match="resolution"):
        Stage1Dataset([torch.zeros(3, 64, 64)], resolution=64)


def test_stage_datasets_on_real_ucmerced_images(shared_data: Path):
    source = load_rs_dataset(shared_data / "UCMerced_LandUse", ["tenniscourt/tenniscourt14.tif", "river/river30.tif"])
    batch = collate_stage1([Stage1Dataset(source, seed=0)[i] for i in range(2)])
    assert batch["lr"].shape == (2, 3, 48, 48) and batch["coord"].shape == (2, 2304, 2)
    batch = collate_stage2([Stage2Dataset(source, seed=0, resolution=128)[i] for i in range(2)])
    assert batch["hr"].shape == (2, 3, 128, 128)
