"""The uncertainty map's calibrated 90 % error bound: the split-conformal factor, its coverage, its storage."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from neurop_diff_diffusers.pipelines.uncertainty_calibration import (
    ERROR_BOUND_TAG,
    bound_coverage,
    check_error_bound,
    conformal_factor,
    error_bound_factor,
    merge_calibration,
    uncertainty_tags,
)

ENTRY = {
    "coverage": 0.9,
    "num_samples": 4,
    "uncertainty_sigma": 2.0,
    "flip_samples": True,
    "num_inference_steps": 10,
    "factors": [{"scales": [1.0, 2.5], "factor": 2.0}, {"scales": [2.5, 4.5], "factor": 3.0}],
}


def test_coverage_on_a_synthetic_case_with_known_noise():
    """Errors |N(0, s^2)| with s = 0.5 * map: the 90 % factor is 0.5 * 1.645, and it holds on 90 % of new pixels."""
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.005, 0.08, (2, 200_000))  # calibration, held-out
    errors = np.abs(rng.normal(0.0, 0.5 * maps))
    k = conformal_factor(errors[0], maps[0])
    assert k == pytest.approx(0.5 * 1.6449, rel=0.01)
    assert bound_coverage(errors[1], maps[1], k) == pytest.approx(0.9, abs=0.003)
    # A map that is off by a factor 3 on the held-out pixels is caught: the coverage falls well below 0.9.
    assert bound_coverage(errors[1] * 3, maps[1], k) < 0.5


def test_conformal_factor_rank_and_zero_maps():
    values = np.arange(1.0, 11.0)  # ratios 1..10: ceil(11 * 0.9) = 10th smallest
    assert conformal_factor(values, np.ones(10)) == 10.0
    assert conformal_factor(values, np.ones(10), coverage=0.5) == 6.0  # ceil(5.5) = 6th
    # A zero map bounds a zero error (ratio 0) and no other (ratio inf).
    assert conformal_factor([0.0, 1.0], [0.0, 1.0], coverage=0.4) == 1.0
    assert conformal_factor([1.0, 1.0], [0.0, 0.0]) == np.inf
    assert bound_coverage([0.0, 1.0, 1.0], [0.0, 0.0, 1.0], 2.0) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="`coverage` must be a number in"):
        conformal_factor([1.0], [1.0], coverage=1.0)
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        conformal_factor([-1.0], [1.0])
    with pytest.raises(ValueError, match="of one size"):
        bound_coverage([1.0, 2.0], [1.0], 1.0)


def test_the_stored_entry_is_checked_and_looked_up():
    assert check_error_bound(None) is None
    assert check_error_bound(copy.deepcopy(ENTRY)) == ENTRY
    bad = [
        ("coverage", 0.8, "coverage must be 0.9"),
        ("num_samples", 1, "num_samples must be an integer in"),
        ("num_samples", True, "num_samples must be an integer in"),
        ("uncertainty_sigma", -1, "uncertainty_sigma must be a number in"),
        ("flip_samples", "yes", "flip_samples must be true or false"),
        ("num_inference_steps", 0, "num_inference_steps must be an integer in"),
        ("factors", [], "factors must be a list"),
        ("factors", [{"scales": [2.0, 1.0], "factor": 1.0}], r"factors\[\].scales must be"),
        ("factors", [{"scales": [1.0, 3.0], "factor": 1.0}, {"scales": [2.0, 4.0], "factor": 1.0}], "overlapping"),
        ("factors", [{"scales": [1.0, 3.0], "factor": 0}], r"factors\[\].factor must be"),
        ("factors", [{"scales": [1.0, 3.0], "factor": "2"}], r"factors\[\].factor must be"),
    ]
    for key, value, message in bad:
        entry = {**copy.deepcopy(ENTRY), key: value}
        with pytest.raises(ValueError, match=message):
            check_error_bound(entry)
    with pytest.raises(ValueError, match="must be a JSON object, a list of them"):
        check_error_bound([1, 2])
    with pytest.raises(ValueError, match="must be a JSON object, a list of them"):
        check_error_bound("x")
    assert error_bound_factor(ENTRY, 4, 2.0, 10) == 2.0
    assert error_bound_factor(ENTRY, 4, 2.5, 10) == 2.0 and error_bound_factor(ENTRY, 4, 2.6, 10) == 3.0
    assert error_bound_factor(ENTRY, 4, 4.5, 10) == 3.0
    assert error_bound_factor(ENTRY, 4, 5.0, 10) is None  # beyond the calibrated scales
    assert error_bound_factor(ENTRY, 8, 4.0, 10) is None  # fitted for N = 4 only
    assert error_bound_factor(None, 4, 4.0, 10) is None
    assert error_bound_factor(ENTRY, 4, 4.0, 20) is None  # fitted at 10 steps only


def test_a_model_holds_one_calibration_per_samples_and_steps():
    at_30 = {**copy.deepcopy(ENTRY), "num_inference_steps": 30, "factors": [{"scales": [3.5, 4.5], "factor": 9.0}]}
    both = merge_calibration(copy.deepcopy(ENTRY), at_30)
    assert [c["num_inference_steps"] for c in both] == [10, 30]
    assert error_bound_factor(both, 4, 4.0, 10) == 3.0 and error_bound_factor(both, 4, 4.0, 30) == 9.0
    assert error_bound_factor(both, 4, 2.0, 30) is None and error_bound_factor(both, 4, 4.0, 20) is None
    refit = {**at_30, "factors": [{"scales": [3.5, 4.5], "factor": 8.0}]}
    replaced = merge_calibration(both, refit)
    assert len(replaced) == 2 and error_bound_factor(replaced, 4, 4.0, 30) == 8.0
    assert merge_calibration(None, at_30) == at_30
    with pytest.raises(ValueError, match=r"list must be calibrations for different \(num_samples, num_inf"):
        check_error_bound([at_30, refit])
    with pytest.raises(ValueError, match="list must be 1 to 8 calibrations"):
        check_error_bound([])
    with pytest.raises(ValueError, match="num_inference_steps must be an integer in"):
        check_error_bound([at_30, {**at_30, "num_inference_steps": 0}])


def test_uncertainty_tags():
    tags = uncertainty_tags(4, 2.34567891)
    assert tags == {
        "NEUROP_DIFF_NUM_SAMPLES": "4",
        "NEUROP_DIFF_SPREAD": "sample standard deviation (ddof=1) over the samples before clamping, mean over "
        "channels, 0..1",
        ERROR_BOUND_TAG: "2.34568",
    }
    assert ERROR_BOUND_TAG not in uncertainty_tags(3, None)
    with pytest.raises(ValueError, match="`num_samples` must be an integer >= 2"):
        uncertainty_tags(1, 2.0)
    with pytest.raises(ValueError, match="`error_bound_90` must be a number > 0 or None"):
        uncertainty_tags(4, 0.0)


def test_the_entry_is_saved_with_the_model_and_a_damaged_one_refused_before_loading(tmp_path):
    import json

    from neurop_diff_diffusers import build_pipeline
    from neurop_diff_diffusers.runtime.loading import load_pipeline

    pipe = build_pipeline("tiny", seed=0)
    assert pipe.config.get("uncertainty_error_bound_90") is None
    pipe.register_to_config(uncertainty_error_bound_90=copy.deepcopy(ENTRY))
    pipe.save_pretrained(tmp_path)
    assert load_pipeline(str(tmp_path)).config.get("uncertainty_error_bound_90") == ENTRY
    index_path = tmp_path / "model_index.json"
    index = json.loads(index_path.read_text())
    index["uncertainty_error_bound_90"]["factors"][0]["factor"] = -1
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"model_index.json: `uncertainty_error_bound_90` factors\[\].factor"):
        load_pipeline(str(tmp_path))
    with pytest.raises(TypeError, match="`uncertainty_error_bound_90` must be a dict, a list of dicts or None"):
        pipe.__class__(**{**dict(pipe.components), "uncertainty_error_bound_90": 1.0})
    with pytest.raises(ValueError, match="`uncertainty_error_bound_90` coverage must be 0.9"):
        error_bound_factor({"factors": []}, 4, 4.0, 10)  # checked where it is used too
