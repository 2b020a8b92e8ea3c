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


def test_authors_loop_is_the_pipelines_ddim_with_eta_0():
    import torch

    from neurop_diff_diffusers import build_pipeline

    runtime = _load("runtime")
    pipe = build_pipeline("tiny")
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    theirs = runtime.authors_sample(pipe, lr, (32, 32), 5, torch.Generator().manual_seed(0))
    ours = pipe(
        lr,
        output_size=(32, 32),
        num_inference_steps=5,
        eta=0.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert theirs.shape == ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiples of 4"):
        runtime.authors_sample(pipe, lr, (30, 30), 2)


def test_runtime_versus_authors_smoke(tmp_path, capsys):
    runtime = _load("runtime")
    out = tmp_path / "versus.json"
    runtime.main(
        ["--pipeline", "preset:tiny", "--size", "32", "--versus_authors", "--steps", "4", "--repeats", "1"]
        + ["--configs", "ddim:4", "unipc:2:bfloat16:cl", "--output", str(out)]
    )
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["results"]] == ["authors:4", "ddim:4", "unipc:2:bfloat16:cl"]
    assert data["reference"] == "authors:4" and data["results"][0]["ratio_to_authors_same_steps"] == 1.0
    assert data["results"][2]["ratio_to_authors_same_steps"] is None  # another sampler: only the reference ratio
    assert all(r["seconds_per_image"] > 0 for r in data["results"])
    assert "| authors (prior every step) | ddim | 4 | float32 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="float16"):
        runtime.main(["--versus_authors", "--configs", "ddim:4:float16", "--output", str(tmp_path / "x.json")])
    with pytest.raises(ValueError, match="sampler"):
        runtime.main(["--versus_authors", "--configs", "euler:4", "--output", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_samplers_smoke(tmp_path, capsys):
    import shutil

    samplers = _load("samplers")
    data = tmp_path / "data" / "samples"
    data.mkdir(parents=True)
    for path in sorted((BENCHMARKS.parent / "assets" / "samples").glob("*.png"))[:2]:
        shutil.copy(path, data / path.name)
    args = [
        "--pipeline",
        "preset:tiny",
        "--data_dir",
        str(tmp_path / "data"),
        "--output_dir",
        str(tmp_path / "s"),
        "--split",
        "all",
    ]
    report = samplers.main([*args, "--configs", "ddim:2", "unipc:1:bfloat16:cl", "--max_psnr_drop", "100"])
    assert [r["name"] for r in report["rows"]] == ["ddim:2", "unipc:1:bfloat16:cl"]
    assert report["rows"][0]["psnr_diff"] == 0.0 and report["rows"][0]["n_images"] == 2
    assert report["recommended"] == "unipc:1:bfloat16:cl"  # the only other one, within a 100 dB tolerance
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["rows"][1]["dtype"] == "bfloat16"
    assert (tmp_path / "s" / "ddim_2" / "results.json").is_file()
    assert "| unipc | 1 | bfloat16 + channels-last |" in (tmp_path / "s" / "summary.md").read_text()
    with pytest.raises(ValueError, match="duplicates"):
        samplers.main([*args, "--configs", "ddim:2", "ddim:2"])


def test_training_speed_compare_and_settings():
    training_speed = _load("training_speed")
    assert training_speed.parse_training_setting("bf16:cl") == {
        "name": "bf16:cl",
        "mixed_precision": "bf16",
        "channels_last": True,
    }
    for bad in ("bf32", "bf16:nhwc", "no:cl:cl"):
        with pytest.raises(ValueError, match="PRECISION"):
            training_speed.parse_training_setting(bad)
    reference = [1.0, 3.0] * 5
    blocks = training_speed.compare(reference, [v + 0.1 for v in reference], block=4)
    assert [b["steps"] for b in blocks] == ["1-4", "5-8"]  # the incomplete last block is left out
    assert all(abs(b["difference"] - 0.1) < 1e-12 for b in blocks)
    assert abs(blocks[0]["two_standard_errors"] - 2 * (4 / 3) ** 0.5 / 2) < 1e-12


def test_training_speed_smoke(tmp_path):
    training_speed = _load("training_speed")
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "UCMerced_LandUse"
    if not data.is_dir():
        pytest.skip("needs ../shared/data/UCMerced_LandUse (not in a user's clone)")
    report = training_speed.main(
        ["--stage", "1", "--preset", "tiny", "--steps", "8", "--skip", "2", "--block", "3", "--resolution", "64"]
        + ["--max_train_samples", "4", "--settings", "no", "bf16", "--output_dir", str(tmp_path)]
        + ["--lr_patch", "8", "--num_queries", "64", "--batch_size", "2"]
    )
    assert [r["name"] for r in report["rows"]] == ["no", "bf16"]
    assert all(len(r["losses"]) == 8 and r["steps_per_second"] > 0 for r in report["rows"])
    assert report["rows"][0]["within_noise"] and len(report["rows"][1]["blocks"]) == 2
    assert (tmp_path / "training_speed_stage1_tiny.json").is_file()
    with pytest.raises(ValueError, match="`steps` must exceed"):
        training_speed.main(["--steps", "3", "--skip", "5", "--output_dir", str(tmp_path / "x")])


def test_lr_agreement_smoke(tmp_path, samples_dir):
    lr_agreement = _load("lr_agreement")
    images = tmp_path / "images.txt"
    images.write_text("airplane30.png\nfreeway29.png\n")
    out = tmp_path / "lr.json"
    report = lr_agreement.main(
        ["--pipeline", "preset:tiny", "--data_dir", str(samples_dir), "--images_from", str(images)]
        + ["--resolution", "32", "--steps", "1", "--back_projection", "10", "--uncertainty", "2", "--output", str(out)]
        + ["--uncertainty_modes", "seeds", "flips"]
    )
    data = json.loads(out.read_text())
    assert [r["image"] for r in data["per_image"]] == ["airplane30.png", "freeway29.png"]
    methods = {f"{m}{bp}" for m in ("bicubic", "operator", "pipeline") for bp in ("", "+bp10")}
    assert set(data["summary"]) == methods | {"uncertainty"}
    assert set(data["summary"]["uncertainty"]) == {"seeds", "flips"}
    for mode in data["summary"]["uncertainty"].values():
        assert -1 <= mode["sigma_2.0"]["spearman_min"] <= mode["sigma_2.0"]["spearman_mean"] <= 1
    assert all(r["uncertainty"]["flips"]["mean"] > 0 for r in data["per_image"])
    assert data["per_image"][0]["bicubic+bp10"]["lr_l1_255"] < data["per_image"][0]["bicubic"]["lr_l1_255"]
    # back-projection brings the (random) tiny model's output to its LR
    assert data["summary"]["pipeline+bp10"]["lr_l1_255"] < data["summary"]["pipeline"]["lr_l1_255"] / 5
    assert report["summary"] == data["summary"]
    with pytest.raises(ValueError, match="do not exist"):
        images.write_text("missing.png\n")
        lr_agreement.main(["--data_dir", str(samples_dir), "--images_from", str(images), "--output", str(out)])


def test_cpu_dtype_smoke(tmp_path, capsys):
    cpu_dtype = _load("cpu_dtype")
    out = tmp_path / "cpu_dtype.json"
    cpu_dtype.main(
        ["--model", "preset:tiny", "--size", "16", "--steps", "2", "--repeats", "1", "--kinds", "native"]
        + ["--settings", "float32", "auto:cl", "--unet_rounds", "1", "--output", str(out)]
    )
    data = json.loads(out.read_text())
    assert [(r["kind"], r["setting"], r["dtype"], r["channels_last"]) for r in data["results"]] == [
        ("native", "float32", "float32", False),
        ("native", "auto:cl", "auto", True),
    ]
    for row in data["results"]:
        assert row["seconds_per_image"] > 0 and row["seconds_per_step"] > 0 and len(row["all_seconds"]) == 1
        assert row["unet_seconds_per_step"] > 0 and len(row["all_unet_seconds"]) == 1
    assert data["results"][0]["over_reference_per_image"] == 1.0
    assert data["kinds"]["native"]["auto_picks"].split(";")[0] in ("float32", "bfloat16")
    assert set(data["auto_cl_versus_float32"]["native"]) == {"auto_cl_over_float32", "no_slower"}
    assert data["input_size"] == [16, 16] and data["steps"] == 2
    assert "`--dtype auto` picks" in capsys.readouterr().out


def test_cpu_dtype_parsing_and_bad_arguments(tmp_path):
    cpu_dtype = _load("cpu_dtype")
    assert cpu_dtype.step_seconds("50%|5| 1/2 [00:01<00:01, 1.50s/it]\r100%|#| 2/2 [00:02<00:00, 1.25s/it]") == 1.25
    assert cpu_dtype.step_seconds("100%|#| 4/4 [00:01<00:00, 4.00it/s]") == 0.25
    assert cpu_dtype.step_seconds("no progress bar") is None
    assert cpu_dtype.parse_setting("auto:cl") == ("auto", True)
    assert cpu_dtype.parse_setting("float32") == ("float32", False)
    for argv, message in [
        (["--settings", "float16"], "`settings`"),
        (["--settings", "float32:nhwc"], "`settings`"),
        (["--steps", "0"], "`steps`"),
        (["--unet_rounds", "-1"], "`unet_rounds`"),
        (["--kinds", "native", "native"], "must not repeat"),
        (["--input", str(tmp_path / "missing.png")], "`input`"),
    ]:
        with pytest.raises(ValueError, match=message):
            cpu_dtype.main([*argv, "--output", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_defaults_smoke(tmp_path, capsys, samples_dir):
    defaults = _load("defaults")
    out = tmp_path / "defaults.json"
    image = next(iter(sorted(samples_dir.glob("*.png"))))
    data = defaults.main(
        ["--image", str(image), "--size", "12", "--model", "preset:tiny", "--repeats", "1"] + ["--output", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(data))
    assert set(data["seconds"]) == {"defaults (--preset fast)", "--steps 50 --dtype float32"}
    assert all(len(v) == 1 and v[0] > 0 for v in data["seconds"].values()) and data["ratio_fast_to_paper"] > 0
    assert "ratio (defaults / paper settings)" in capsys.readouterr().out


def test_scene_throughput_smoke(tmp_path, capsys):
    pytest.importorskip("rasterio")
    scene = _load("scene")
    scene.main(
        ["throughput", "--side", "16", "--out", str(tmp_path), "--extra", "--model", "preset:tiny", "--steps", "1"]
    )
    data = json.loads((tmp_path / "throughput.json").read_text())
    assert data["side"] == 16 and [(r["mode"], r["code"]) for r in data["rows"]] == [
        ("operator", "this checkout"),
        ("diffusion", "this checkout"),
    ]
    assert all(r["kpx_per_s"] > 0 for r in data["rows"]) and "| diffusion | this checkout |" in capsys.readouterr().out
