"""bicubic_degrade: output sizes, argument checks, and agreement with PIL's bicubic on real 8-bit images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from neurop_diff_diffusers.data import (
    bicubic_degrade,
    degraded_size,
    from_uint8_levels,
    pil_to_tensor,
    tensor_to_pil,
    to_uint8_levels,
)

SCALES = (1, 1.5, 2.5, 4, 7.3, 8)
# A few real images of different content: fields, roads and buildings (sharp edges), water, forest.
REAL_IMAGES = (
    "UCMerced_LandUse/agricultural/agricultural00.tif",
    "UCMerced_LandUse/freeway/freeway20.tif",
    "UCMerced_LandUse/intersection/intersection15.tif",
    "UCMerced_LandUse/mobilehomepark/mobilehomepark22.tif",  # 253 x 256
    "RSSCN7/cIndustry/c001.jpg",
    "RSSCN7/gParking/g001.jpg",
)


def _random_image(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _pil_bicubic(image: PIL.Image.Image, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return np.asarray(image.resize((width, height), PIL.Image.BICUBIC)).astype(np.int16)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("size", [(256, 256), (253, 256), (150, 150)])
def test_output_sizes(scale, size):
    expected = tuple(math.floor(side / scale + 0.5) for side in size)
    assert degraded_size(size, scale) == expected
    assert bicubic_degrade(_random_image(3, *size), scale).shape == (3, *expected)
    assert bicubic_degrade(_random_image(2, 3, *size), scale).shape == (2, 3, *expected)


def test_size_rounding_is_half_up():
    assert degraded_size((5, 7), 2) == (3, 4)  # 2.5 -> 3, 3.5 -> 4 (Python's round would give 2 and 4)
    assert degraded_size((256, 256), 1.5) == (171, 171)
    assert degraded_size((3, 3), 8) == (1, 1)  # never below one pixel


def test_scale_one_returns_the_input_unchanged():
    hr = _random_image(3, 20, 20)
    assert bicubic_degrade(hr, 1) is hr
    assert bicubic_degrade(hr, size=(20, 20)) is hr


def test_explicit_size_for_stage1_patches():
    hr = _random_image(3, 120, 120)
    assert bicubic_degrade(hr, size=(48, 48)).shape == (3, 48, 48)
    assert bicubic_degrade(hr, size=(48, 30)).shape == (3, 48, 30)


def test_quantized_output_is_on_8bit_levels_and_keeps_dtype():
    hr = _random_image(1, 3, 40, 40).double()
    lr = bicubic_degrade(hr, 3)
    assert lr.dtype == torch.float64
    levels = (lr + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), atol=1e-9, rtol=0)
    lr_float = bicubic_degrade(hr.float(), 3, quantize=False)
    assert lr_float.dtype == torch.float32 and lr_float.min() >= -1 and lr_float.max() <= 1


def test_batch_matches_single_images():
    hr = _random_image(3, 3, 64, 48)
    batch = bicubic_degrade(hr, 2.5)
    for i in range(3):
        torch.testing.assert_close(batch[i], bicubic_degrade(hr[i], 2.5))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0.5,), {}, ValueError, "finite number >= 1"),
        ((float("nan"),), {}, ValueError, "finite number >= 1"),
        ((float("inf"),), {}, ValueError, "finite number >= 1"),
        (("2",), {}, TypeError, "real number >= 1"),
        ((True,), {}, TypeError, "real number >= 1"),
        ((), {}, ValueError, "exactly one of"),
        ((2,), {"size": (8, 8)}, ValueError, "exactly one of"),
        ((), {"size": (40, 8)}, ValueError, "`size` must lie between"),
        ((), {"size": (8.0, 8)}, TypeError, "pair of ints"),
        ((2,), {"value_range": (1, -1)}, ValueError, "`value_range`"),
    ],
)
def test_argument_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        bicubic_degrade(_random_image(3, 32, 32), *args, **kwargs)


def test_rejects_integer_tensors():
    with pytest.raises(TypeError, match="floating-point"):
        bicubic_degrade(torch.zeros(3, 8, 8, dtype=torch.uint8), 2)


def test_uint8_level_mapping_round_trips():
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8_levels(from_uint8_levels(levels)), levels)
    image = PIL.Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    assert np.array_equal(np.asarray(tensor_to_pil(pil_to_tensor(image))), np.asarray(image))


@pytest.mark.parametrize("scale", SCALES[1:])
def test_agrees_with_pil_bicubic_on_real_images(shared_data: Path, scale):
    """Measured on all 1,245 shared images: 99.7% identical, max |diff| 2 levels (a few values at s=1.5), else 1."""
    for name in REAL_IMAGES:
        image = PIL.Image.open(shared_data / name).convert("RGB")
        size = degraded_size((image.height, image.width), scale)
        reference = _pil_bicubic(image, size)
        hr = pil_to_tensor(image)
        ours = np.asarray(tensor_to_pil(bicubic_degrade(hr, scale))).astype(np.int16)
        diff = np.abs(ours - reference)
        assert diff.max() <= 2, (name, scale)
        assert (diff == 2).sum() <= 3, (name, scale)
        assert (diff > 0).mean() < 0.01, (name, scale)
        # without quantisation (no 8-bit intermediate): still close on average, a few levels at worst
        loose = np.asarray(tensor_to_pil(bicubic_degrade(hr, scale, quantize=False))).astype(np.int16)
        assert np.abs(loose - reference).mean() < 0.5, (name, scale)


def test_agrees_with_pil_bicubic_on_synthetic_uint8():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(array)
    for size in ((48, 48), (20, 37), (97, 100)):
        ours = np.asarray(tensor_to_pil(bicubic_degrade(pil_to_tensor(image), size=size))).astype(np.int16)
        assert np.abs(ours - _pil_bicubic(image, size)).max() <= 1
