"""The weight-free trust metrics on constructed arrays whose answers are known."""

from __future__ import annotations

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


def test_consistency_sees_low_frequencies_and_is_blind_above_the_lr_nyquist():
    """What the LR agreement can and cannot see: an offset of the low frequencies moves it by the offset; a pattern
    at the HR's Nyquist frequency (invented detail the LR cannot hold) barely moves it; the shift is measured."""
    hr = _smooth_image()
    lr = downsample_to(hr, (16, 16), quantize=False)
    y, x = np.mgrid[0:64, 0:64]
    checker = 0.08 * np.where((x + y) % 2 == 0, 1.0, -1.0)
    invented = consistency(np.clip(hr + checker, 0, 1), lr, quantize=False)
    brighter = consistency(np.clip(hr + 0.08, 0, 1), lr, quantize=False)
    assert brighter["reflectance_l1"] == pytest.approx(0.08, abs=0.005)
    assert invented["reflectance_l1"] < 0.1 * brighter["reflectance_l1"]
    assert invented["shift"] == pytest.approx(0.0, abs=0.05)


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


def _known_answer_image(seed: int = 3) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """An HR, its upsampled LR (each pixel's reference distance delta drawn in [0.05, 0.25]) and outputs placed at
    known points of the (d_im, d_om) plane, each on a different set of pixels spread over the image."""
    rng = np.random.default_rng(seed)
    size = 48
    up = rng.uniform(0.3, 0.7, (3, size, size))
    delta = rng.uniform(0.05, 0.25, (size, size))
    sign = rng.choice([-1.0, 1.0], (3, size, size))
    hr = up + sign * delta  # every channel delta away: d(LR_up, HR) = delta
    kind = rng.integers(0, 5, (size, size))
    offsets = {
        "hr": 1.0,  # d_im 0, d_om 1: improvement
        "most_of_the_way": 0.8,  # d_im 0.2, d_om 0.8: improvement
        "a_little": 0.2,  # d_im 0.8, d_om 0.2: omission
        "away_from_the_hr": -2.0,  # d_im 3, d_om 2: hallucination
        "past_the_hr": 3.0,  # d_im 2, d_om 3: hallucination
    }
    output = up.copy()
    masks = {}
    for k, (name, a) in enumerate(offsets.items()):
        masks[name] = kind == k
        output[:, masks[name]] = (up + a * sign * delta)[:, masks[name]]
    return hr, up, masks, output


def test_correctness_known_answers_spread_over_the_plane():
    hr, up, masks, output = _known_answer_image()
    result = correctness(output, hr, up)
    expected = {"hr": 0, "most_of_the_way": 0, "a_little": 1, "away_from_the_hr": 2, "past_the_hr": 2}
    for name, k in expected.items():
        classified = masks[name] & (result.classes >= 0)
        assert classified.sum() > 20, name
        assert (result.classes[classified] == k).all(), name
    # A move of twice the reference distance or more is classified wherever that exceeds the threshold.
    large = (masks["away_from_the_hr"] | masks["past_the_hr"]) & (2 * np.abs(up - hr).mean(axis=0) > result.threshold)
    assert large.sum() > 100 and (result.classes[large] == 2).all()
    # Shares: of the classified pixels and of all pixels, consistent with the class map.
    assert sum(result.fractions.values()) == pytest.approx(1.0)
    assert sum(result.shares_of_all.values()) == pytest.approx(result.classified_fraction)
    assert result.shares_of_all["hallucination"] == pytest.approx((result.classes == 2).mean())
    assert result.threshold == pytest.approx(np.percentile(np.abs(up - hr).mean(axis=0), 75))


def test_the_output_equal_to_the_hr_or_to_the_upsampled_lr():
    rng = np.random.default_rng(3)
    hr, up = rng.random((3, 32, 32)), rng.random((3, 32, 32))
    assert correctness(hr, hr, up).fractions == {"improvement": 1.0, "omission": 0.0, "hallucination": 0.0}
    assert correctness(up, hr, up).fractions == {"improvement": 0.0, "omission": 1.0, "hallucination": 0.0}
    # Neither moves further than the reference distance: the pixels above its 75th percentile are classified.
    assert correctness(hr, hr, up).classified_fraction == pytest.approx(0.25, abs=1 / (32 * 32))


def test_invented_texture_on_flat_ground_is_hallucination():
    """Flat ground (the HR holds no detail there) on which the output invents texture: the rule that classes only
    the pixels where the HR differs most from the upsampled LR never looks there; the union rule does."""
    rng = np.random.default_rng(7)
    size = 64
    hr = np.empty((3, size, size))
    detail = 0.06 * rng.standard_normal((3, size, size // 2))  # fine detail the LR loses
    hr[:, :, : size // 2] = np.clip(_smooth_image(size, seed=1)[:, :, : size // 2] + detail, 0, 1)
    hr[:, :, size // 2 :] = 0.45 + 0.004 * rng.standard_normal((3, size, size // 2))  # flat, sensor noise
    lr = downsample_to(hr, (16, 16), quantize=False)
    up = upsample_lr(lr, (size, size))
    y, x = np.mgrid[0:size, 0:size]
    texture = 0.12 * np.sin(1.9 * x) * np.cos(1.7 * y)
    output = up.copy()
    flat = np.zeros((size, size), dtype=bool)
    flat[4:-4, size // 2 + 4 : -4] = True  # the flat half, away from the textured half's blur
    output[:, flat] = np.clip(up + texture, 0, 1)[:, flat]
    output[:, ~flat] = hr[:, ~flat]  # the textured half restored perfectly
    result = correctness(output, hr, up)
    invented = flat & (np.abs(texture) > 0.03)
    assert (result.classes[invented] == 2).mean() >= 0.5  # 0.84 here: the rest is below the threshold
    assert result.shares_of_all["hallucination"] >= 0.5 * invented.mean()
    # The restored half: the classified pixels there are improvement.
    restored = ~flat
    restored[:, size // 2 - 4 :] = False
    assert (result.classes[restored & (result.classes >= 0)] == 0).all()


def test_lambda_sets_where_hallucination_begins():
    """Along the diagonal d_im = d_om = d, the published lambda 0.05 calls d = 0.9 a (poor) improvement / omission
    and d = 1.5 a hallucination; a lambda of 0.8 (OpenSR-test's function default, not its config) calls 0.9 one."""
    d = np.array([0.9, 1.5])
    scores = np.stack(correctness_scores(d, d))
    assert scores.argmin(axis=0).tolist() == [0, 2]
    assert np.stack(correctness_scores(d, d, lam=0.8)).argmin(axis=0).tolist() == [2, 2]


def test_correctness_probabilities_and_temperature():
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
    assert result.mean_probabilities["hallucination"] == pytest.approx(result.probabilities[2][classified].mean())


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


def _opensr_fixture(seed: int, size: int = 96, scale: int = 4, shift=(0, 0), gain: float = 1.0, noise: float = 0.05):
    """A detailed HR, its LR (antialiased bilinear), and an SR: the HR shifted, scaled and with noise added."""
    rng = np.random.default_rng(seed)
    base = torch.from_numpy(rng.random((3, size // 8, size // 8)))
    hr = torch.nn.functional.interpolate(base[None], size=(size, size), mode="bicubic", align_corners=False)[0]
    hr = (hr.clamp(0, 1) + 0.1 * torch.from_numpy(rng.random((3, size, size)))).clamp(0, 1) * 0.8 + 0.1
    lr = torch.nn.functional.interpolate(hr[None], scale_factor=1 / scale, mode="bilinear", antialias=True)[0]
    sr = torch.roll(hr, shift, dims=(1, 2)) * gain + noise * torch.from_numpy(rng.standard_normal((3, size, size)))
    return lr.double(), sr.double().clamp(0, 1), hr.double()


OPENSR_FIXTURES = {
    "noise": {},
    "shifted": {"shift": (1, -2)},
    "darker": {"gain": 0.8, "noise": 0.1},
    "x2": {"scale": 2, "size": 64},
    "much_noise": {"noise": 0.3},
}


@pytest.mark.parametrize("name", sorted(OPENSR_FIXTURES))
def test_opensr_mode_equals_opensr_test(name):
    """The OpenSR-test-compatible mode against OpenSR-test 1.3.3 itself (its defaults: ``Metrics().compute``)."""
    opensr_test = pytest.importorskip(
        "opensr_test", reason="opensr-test is not installed (pip install '.[opensr]')", exc_type=ImportError
    )
    from neurop_diff_diffusers.metrics.opensr import opensr_test_metrics

    if getattr(opensr_test, "__version__", None) != "1.3.3":
        pytest.skip(f"the comparison is with opensr-test 1.3.3, found {getattr(opensr_test, '__version__', None)}")
    lr, sr, hr = _opensr_fixture(3, **OPENSR_FIXTURES[name])
    metrics = opensr_test.Metrics()
    reference = metrics.compute(lr=lr, sr=sr, hr=hr)
    ours = opensr_test_metrics(lr, sr, hr)
    for key, value in ours.as_dict().items():
        assert value == pytest.approx(reference[key], abs=1e-6, nan_ok=True), key
    theirs = metrics.classification.cpu().numpy()  # the last correctness run: NaN where not classified
    assert ((ours.correctness.classes == -1) == np.isnan(theirs)).all()
    classified = ours.correctness.classes >= 0
    assert (ours.correctness.classes[classified] == theirs[classified]).mean() > 0.999


def test_opensr_mode_differs_from_the_default_where_documented():
    """Without opensr-test: the mode's own known answers (integer scale, border, its figures)."""
    from neurop_diff_diffusers.metrics.opensr import opensr_test_metrics

    lr, sr, hr = _opensr_fixture(3)
    result = opensr_test_metrics(lr, hr, hr)  # the SR is the HR: all improvement, synthesis = |HR - LR_up|
    assert result.correctness.mean_probabilities["improvement"] > 0.9
    assert result.correctness.classes.shape == (96 - 32, 96 - 32)  # the 16 px border is cropped
    assert result.spatial < 0.05  # LR against the downsampled HR: within a few 1/50 px steps
    assert set(result.as_dict()) == {"reflectance", "spectral", "spatial", "synthesis", "ha_metric", "om_metric",
                                     "im_metric"}  # fmt: skip
    with pytest.raises(ValueError, match="integer multiple"):
        opensr_test_metrics(lr[:, :, :-1], sr, hr)
    with pytest.raises(ValueError, match="`border` must be an int"):
        opensr_test_metrics(lr, sr, hr, border=48)


def test_lr_agreement_after_back_projection_under_an_independent_kernel():
    """Back-projection makes the training kernel's LR agreement ~0 by construction; a bilinear kernel still sees
    the difference, so the table reports both."""
    from neurop_diff_diffusers.metrics.trust import lr_agreement_bilinear
    from neurop_diff_diffusers.pipelines.data_consistency import back_project

    rng = np.random.default_rng(8)
    hr = np.clip(_smooth_image() + 0.08 * rng.standard_normal((3, 64, 64)), 0, 1)
    lr = downsample_to(hr, (16, 16))
    up = upsample_lr(lr, (64, 64))
    projected = back_project(
        torch.from_numpy(up)[None].float() * 2 - 1, torch.from_numpy(lr)[None].float() * 2 - 1, 10
    )
    projected = ((projected[0] + 1) / 2).clamp(0, 1).double().numpy()
    row = trust_metrics(projected, lr)
    assert row["lr_l1_255"] < 0.2
    assert row["lr_l1_255_bilinear"] > 5 * row["lr_l1_255"] and row["lr_l1_255_bilinear"] > 1.0
    assert row["lr_l1_255_bilinear"] == lr_agreement_bilinear(projected, lr)
