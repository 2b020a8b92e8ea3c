"""Smoke test of `benchmarks/operator.py` with tiny sizes: it runs and writes well-formed JSON (no timing assertions),
and its conversion to the authors' parameter names is the inverse of the official-checkpoint loader."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from neurop_diff_diffusers import GalerkinNeuralOperator
from reference_srno import random_official_state_dict

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "operator.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_operator", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_operator_benchmark_smoke(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "operator.json"
    bench.main(["--paper_lr", "8", "--embedded_lr", "8", "--repeats", "1", "--skip_previous", "--output", str(out)])
    data = json.loads(out.read_text())
    assert data["previous"] == "skipped"
    assert list(data["settings"]["paper"]["results"]) == ["authors", "ours"]
    assert list(data["settings"]["embedded"]["results"]) == ["authors", "ours", "unet"]
    for setting in data["settings"].values():
        assert setting["output"] == 16
        for name, row in setting["results"].items():
            assert row["flops"] > 0 and row["best_seconds"] > 0 and len(row["seconds"]) == 1
            if name != "unet":
                assert row["max_rel_diff_vs_authors"] <= 1e-5, name
        assert setting["ours_time_over_authors"] > 0
    assert data["settings"]["embedded"]["ours_gflops_over_unet"] > 0
    assert "| paper 8 -> 16 px | ours |" in capsys.readouterr().out


def test_operator_benchmark_bad_arguments(tmp_path):
    bench = _load()
    with pytest.raises(ValueError, match="`paper_lr`"):
        bench.main(["--paper_lr", "4", "--output", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_to_official_state_dict_inverts_the_loader():
    official = random_official_state_dict(encoder_channels=8, encoder_num_blocks=2, width=16, heads=4, head_channels=8)
    model = GalerkinNeuralOperator.from_official_state_dict(official)
    back = model.to_official_state_dict()
    dropped = {k for k in official if k.startswith(("encoder.sub_mean.", "encoder.add_mean."))}
    assert set(back) == set(official) - dropped
    assert all(torch.equal(back[k], official[k]) for k in back)
