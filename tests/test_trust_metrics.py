"""The weight-free trust metrics on constructed arrays whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurop_diff_diffusers.metrics.trust import (
    CORRECTNESS_CLASSES,
    consistency,
    correctness,
    correctness_map_image,
    correctness_scores,
    downsample_to,
    phase_correlation_shift,
    pixel_l1,
    spectral_angle,
    synthesis,
    trust_metrics,
    upsample_lr,
)


def _smooth_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A band-limited random image (sum of low-frequency cosines) in [0, 1]: no aliasing when downsampled x4."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        field = sum(
            rng.normal() * np.cos(2 * np.pi * (rng.integers(0, 4) * x + rng.integers(0, 4) * y) + rng.uniform(0, 6))
            for _ in range(6)
        )
        channels.append(field)
    image = np.stack(channels)
    return (image - image.min()) / (image.max() - image.min()) * 0.8 + 0.1


def test_spectral_angle_of_proportional_spectra_is_zero_and_orthogonal_is_90():
    x = np.random.default_rng(1).random((4, 9, 7))
    assert spectral_angle(x, 0.3 * x) == 0.0
    a = np.zeros((3, 2, 2))
    b = np.zeros((3, 2, 2))
    a[0], b[1] = 1.0, 1.0
    assert spectral_angle(a, b) == pytest.approx(90.0)
    # Both zero: 0; one zero: 90.
    assert spectral_angle(np.zeros((3, 1, 1)), np.zeros((3, 1, 1))) == 0.0
    assert spectral_angle(np.zeros((3, 1, 1)), np.ones((3, 1, 1))) == 90.0
    # A known angle: (1, 0) against (1, 1) is 45 degrees.
    assert spectral_angle(np.array([[[1.0]], [[0.0]]]), np.array([[[1.0]], [[1.0]]])) == pytest.approx(45.0)


@pytest.mark.parametrize("shift", [(3, -5), (0, 0), (-7, 2), (10, 10)])
def test_phase_correlation_finds_a_circular_shift(shift):
    x = np.random.default_rng(2).random((3, 64, 48))
    moved = np.roll(x, shift, axis=(1, 2))
    dy, dx = phase_correlation_shift(x, moved)
    assert dy == pytest.approx(shift[0], abs=0.25)
    assert dx == pytest.approx(shift[1], abs=0.25)


def test_phase_correlation_of_a_constant_image_is_zero_and_small_images_are_refused():
    assert phase_correlation_shift(np.full((3, 8, 8), 0.5), np.full((3, 8, 8), 0.5)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least 4x4"):
        phase_correlation_shift(np.zeros((3, 3, 8)), np.zeros((3, 3, 8)))


def test_consistency_of_an_hr_against_its_own_lr_is_exact():
    hr = _smooth_image()
    lr = downsample_to(hr, (16, 16))
    result = consistency(torch.from_numpy(hr).float(), lr)
    assert result["reflectance_l1"] == pytest.approx(0.0, abs=1e-7)
    assert result["spectral_angle"] == pytest.approx(0.0, abs=1e-3)
    assert result["shift"] == pytest.approx(0.0, abs=0.05)


def test_consistency_measures_an_offset_and_a_shift():
    hr = _smooth_image()
    lr = downsample_to(hr, (16, 16))
    # A uniform brightening by 10 levels: the downsampled output is 10 levels above the LR everywhere.
    brighter = np.clip(hr + 10 / 255, 0, 1)
    assert consistency(brighter, lr)["reflectance_l1_255"] == pytest.approx(10.0, abs=0.6)
    # A shift of the output by 8 HR pixels = 2 LR pixels (circular, band-limited image: exact at the LR scale).
    shifted = np.roll(hr, (8, 0), axis=(1, 2))
    result = consistency(shifted, lr)
    assert result["shift_y"] == pytest.approx(2.0, abs=0.2)
    assert result["shift_x"] == pytest.approx(0.0, abs=0.2)


def test_consistency_rejects_bad_inputs():
    with pytest.raises(ValueError, match="no larger"):
        consistency(np.zeros((3, 8, 8)), np.zeros((3, 16, 16)))
    with pytest.raises(TypeError, match="floats"):
        consistency(np.zeros((3, 8, 8), np.uint8), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        consistency(np.full((3, 8, 8), np.nan), np.zeros((3, 4, 4)))
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        consistency([[0.0]], np.zeros((3, 4, 4)))


def test_synthesis_is_zero_for_the_upsampled_lr_and_the_mean_l1_otherwise():
    lr = _smooth_image(16)
    up = upsample_lr(lr, (64, 64))
    assert synthesis(up, up) == 0.0
    assert synthesis(np.clip(up + 0.1, 0, 1), up) == pytest.approx(np.abs(np.clip(up + 0.1, 0, 1) - up).mean())
    assert pixel_l1(up, up + 0.25).max() == pytest.approx(0.25)


def test_correctness_known_answers():
    rng = np.random.default_rng(3)
    hr, up = rng.random((3, 32, 32)), rng.random((3, 32, 32))
    # The output is the HR: all improvement.
    result = correctness(hr, hr, up)
    assert result.fractions == {"improvement": 1.0, "omission": 0.0, "hallucination": 0.0}
    # The output is the upsampled LR: all omission.
    assert correctness(up, hr, up).fractions == {"improvement": 0.0, "omission": 1.0, "hallucination": 0.0}
    # An output far from both (the inverse of the HR where HR and LR differ): hallucination.
    far = np.clip(hr + 4 * (hr - up), -10, 10)
    assert correctness(far, hr, up).fractions["hallucination"] == 1.0
    # The 75th percentile: a quarter of the pixels (ties aside) are classified.
    assert result.classified_fraction == pytest.approx(0.25, abs=1 / (32 * 32))
    assert ((result.classes >= 0) == (result.probabilities.sum(axis=0) > 0)).all()
    assert set(np.unique(result.classes)) == {-1, 0}


def test_correctness_scores_and_probabilities():
    improvement, omission, hallucination = correctness_scores(np.array([1.0]), np.array([0.0]))
    assert (improvement[0], omission[0], hallucination[0]) == (1.0, 0.0, 1.0)
    # d_im = d_om = 3: H = 5, improvement = omission = 3 + 3 (1 - e^-0.25), hallucination = e^-0.45.
    improvement, omission, hallucination = correctness_scores(np.array([3.0]), np.array([3.0]))
    assert improvement[0] == pytest.approx(3 + 3 * (1 - math.exp(-0.25)))
    assert hallucination[0] == pytest.approx(math.exp(-0.45))
    rng = np.random.default_rng(4)
    hr, up, out = rng.random((3, 16, 16)), rng.random((3, 16, 16)), rng.random((3, 16, 16))
    result = correctness(out, hr, up)
    classified = result.classes >= 0
    assert np.allclose(result.probabilities[:, classified].sum(axis=0), 1.0)
    # The most probable class is the class; a lower temperature sharpens the probabilities, same classes.
    assert (result.probabilities[:, classified].argmax(axis=0) == result.classes[classified]).all()
    sharp = correctness(out, hr, up, temperature=0.01)
    assert (sharp.classes == result.classes).all()
    confidence = result.probabilities[:, classified].max(axis=0).mean()
    assert sharp.probabilities[:, classified].max(axis=0).mean() > confidence
    assert sum(result.fractions.values()) == pytest.approx(1.0)


def test_correctness_without_detail_to_recover_classifies_nothing():
    up = np.full((3, 8, 8), 0.5)
    result = correctness(up, up, up)
    assert result.fractions == dict.fromkeys(CORRECTNESS_CLASSES)
    assert result.classified_fraction == 0.0 and (result.classes == -1).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"percentile": 0}, "percentile"), ({"percentile": 101}, "at most 100"), ({"temperature": -1}, "temperature")],
)
def test_correctness_rejects_bad_parameters(kwargs, match):
    x = np.zeros((3, 8, 8))
    with pytest.raises(ValueError, match=match):
        correctness(x, x, x, **kwargs)
    with pytest.raises(ValueError, match="same shape"):
        correctness(x, np.zeros((3, 8, 9)), x)


def test_correctness_map_image_colours_the_classes():
    rng = np.random.default_rng(5)
    hr, up = rng.random((3, 16, 16)), rng.random((3, 16, 16))
    result = correctness(hr, hr, up)
    picture = correctness_map_image(result, background=hr)
    assert picture.shape == (16, 16, 3) and picture.dtype == np.uint8
    classified = result.classes == 0
    assert (picture[classified][:, 1] > picture[classified][:, 0]).all()  # improvement is green
    assert (picture[~classified] == picture[~classified][:, :1]).all()  # unclassified is grey


def test_trust_metrics_without_and_with_an_hr():
    hr = _smooth_image()
    lr = downsample_to(hr, (16, 16))
    up = upsample_lr(lr, (64, 64))
    no_reference = trust_metrics(up, lr)
    assert no_reference["improvement"] is None and no_reference["synthesis"] == 0.0
    row = trust_metrics(hr, lr, hr)
    assert row["improvement"] == 1.0 and row["hallucination"] == 0.0
    assert row["lr_l1_255"] == pytest.approx(0.0, abs=1e-5)
