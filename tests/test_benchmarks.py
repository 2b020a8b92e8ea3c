"""Smoke tests of the benchmark scripts with tiny configurations: they run and write well-formed JSON (no timing
assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runtime_smoke(tmp_path, capsys):
    runtime = _load("runtime")
    out = tmp_path / "runtime.json"
    runtime.main(["--pipeline", "preset:tiny", "--size", "32", "--steps", "1", "2", "--output", str(out)])
    data = json.loads(out.read_text())
    assert [(r["steps"], r["mode"]) for r in data["results"]] == [
        (t, m) for t in (1, 2) for m in ("prior_once", "authors", "sr3")
    ]
    assert all(r["seconds_per_image"] > 0 and r["measured"] for r in data["results"])
    assert [r["steps"] for r in data["ratios"]] == [1, 2]
    assert {"authors_over_prior_once", "prior_once_over_sr3"} <= set(data["ratios"][1])
    assert {"prior_seconds", "unet_step_seconds", "bicubic_prior_seconds"} == set(data["components"])
    assert "| T |" in capsys.readouterr().out

    estimated = tmp_path / "estimated.json"
    runtime.main(["--size", "32", "--steps", "30", "--estimate_only", "--output", str(estimated)])
    data = json.loads(estimated.read_text())
    assert data["estimate_only"] and not any(r["measured"] for r in data["results"])


def test_runtime_bad_arguments(tmp_path):
    runtime = _load("runtime")
    with pytest.raises(ValueError, match="`steps`"):
        runtime.main(["--steps", "0", "--output", str(tmp_path / "x.json")])
    with pytest.raises(ValueError, match="`fp16`"):
        runtime.main(["--fp16", "--output", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_memory_smoke(tmp_path):
    memory = _load("memory")
    out = tmp_path / "memory.json"
    memory.main(
        ["--targets", "operator", "--operator_preset", "tiny", "--sizes", "32", "--chunk_size", "256"]
        + ["--output", str(out)]
    )
    data = json.loads(out.read_text())
    assert [(r["target"], r["size"], r["mode"]) for r in data["results"]] == [
        ("operator", 32, "chunked"),
        ("operator", 32, "unchunked"),
    ]
    for row in data["results"]:
        assert "error" not in row, row
        assert row["peak_rss_mib"] >= row["baseline_rss_mib"] > 0 and row["rss_increase_mib"] >= 0


def test_memory_bad_arguments(tmp_path):
    memory = _load("memory")
    with pytest.raises(ValueError, match="`sizes`"):
        memory.main(["--sizes", "8", "--output", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
