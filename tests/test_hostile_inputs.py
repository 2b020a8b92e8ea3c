"""Hostile and unusual inputs: model folders, exports, flags and API arguments that used to give a
traceback, an unclear message or a wrong file. Each case: one clear error (in the CLI one line, exit 2, no output)
before any work, or the right result."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_error_line, run_cli
from neurop_diff_diffusers import NeurOpDiffPipeline
from neurop_diff_diffusers.runtime.loading import check_pipeline_folder, load_pipeline
from neurop_diff_diffusers.runtime.presets import build_pipeline, build_unet

FAST = ("--model", "preset:tiny", "--steps", "1")


@pytest.fixture(scope="module")
def tiny() -> NeurOpDiffPipeline:
    return build_pipeline("tiny")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    tiny.save_pretrained(folder)
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 10, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Exports (items 4 and 16)


def test_export_overwrite_touches_only_its_own_json_files(tmp_path):
    out = tmp_path / "models"
    other = out / "other_model" / "config.json"
    other.parent.mkdir(parents=True)
    other.write_text('{"_name_or_path": "/data/other", "hidden_size": 8}')
    notes = out / "notes.json"
    notes.write_text('{"_name_or_path": "keep me"}')
    assert run_cli("export", out, "--model", "preset:tiny", "--overwrite") == 0
    assert other.read_text() == '{"_name_or_path": "/data/other", "hidden_size": 8}'
    assert notes.read_text() == '{"_name_or_path": "keep me"}'
    assert "_name_or_path" not in (out / "unet" / "config.json").read_text()


@pytest.mark.parametrize("plain", [False, True])
def test_the_cli_upscales_with_its_own_export(tmp_path, image, plain):
    """A hub-ready export (the default) loads with the package's classes: no custom code is run or needed."""
    export = tmp_path / "exported"
    assert run_cli("export", export, "--model", "preset:tiny", *(["--plain"] if plain else [])) == 0
    index = json.loads((export / "model_index.json").read_text())
    assert isinstance(index["_class_name"], list) != plain
    assert run_cli("upscale", image, "--scale", "2", "--steps", "1", "--model", export, "-o", tmp_path / "a.png") == 0
    assert run_cli("upscale", image, "--scale", "2", *FAST, "-o", tmp_path / "b.png") == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # the same model, the same bits


# ---------------------------------------------------------------------------------------------------------------------
# --model that is not a pipeline (item 16) and damaged pipeline folders (items 15, 16)


def test_model_that_is_a_file_or_a_missing_folder_is_one_line(tmp_path, image, capsys):
    for spec, message in [
        (image, f"--model '{image}' is a file, not a pipeline folder"),
        (tmp_path / "missing", "no such folder (and not a hub id"),
        (tmp_path, "holds no model_index.json"),
    ]:
        args = ("upscale", image, "--scale", "2", "--steps", "1", "--model", spec, "--out-dir", tmp_path / "o")
        assert run_cli(*args) == 2
        assert message in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_an_uncached_hub_id_offline_is_one_line(tmp_path, image, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    argv = (
        "upscale",
        image,
        "--scale",
        "2",
        "--steps",
        "1",
        "--model",
        "someone/not-cached",
        "-o",
        tmp_path / "o.png",
    )
    assert run_cli(*argv) == 2
    message = one_error_line(capsys)
    assert message.startswith("--model 'someone/not-cached': no such folder, and the hub id could not be loaded")
    assert "stacktrace" not in message and not (tmp_path / "o.png").exists()


def _cached_snapshot(saved: Path, cache: Path, repo: str = "someone/tiny") -> Path:
    """``saved`` laid out as ``huggingface_hub`` caches a download: the snapshot's files link into ``blobs``."""
    import hashlib
    import os

    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / ("a" * 40)
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("a" * 40)
    for file in sorted(p for p in saved.rglob("*") if p.is_file()):
        blob = root / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.write_bytes(file.read_bytes())
        link = snapshot / file.relative_to(saved)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_a_cached_hub_id_loads_through_the_caches_links_and_no_other(saved, tmp_path, image, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    snapshot = _cached_snapshot(saved, tmp_path / "cache")
    assert (snapshot / "model_index.json").is_symlink()
    for model, name in [("someone/tiny", "a.png"), (saved, "b.png")]:
        assert run_cli("upscale", image, "--scale", "2", "--steps", "1", "--model", model, "-o", tmp_path / name) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    outside = tmp_path / "outside.json"  # a snapshot link that leaves the cache's blobs folder is still refused
    outside.write_text((saved / "unet" / "config.json").read_text())
    (snapshot / "unet" / "config.json").unlink()
    (snapshot / "unet" / "config.json").symlink_to(outside)
    with pytest.raises(ValueError, match="is a symbolic link out of the Hub cache's blobs folder: not followed"):
        load_pipeline("someone/tiny")


def _edit(folder: Path, file: str, edit) -> None:
    path = folder / file
    data = json.loads(path.read_text())
    data = edit(data)
    path.write_text(json.dumps(data))


DAMAGED = {
    "plain UNet (3 input channels)": ("unet/config.json", lambda c: {**c, "in_channels": 3}, "not a NeurOp-Diff"),
    "DDPMPipeline": ("model_index.json", lambda c: {**c, "_class_name": "DDPMPipeline"}, "'DDPMPipeline' folder"),
    "channels 1e9": (
        "unet/config.json",
        lambda c: {**c, "block_out_channels": [10**9] * len(c["block_out_channels"])},
        "`block_out_channels` must be 1 to 8 integers in [1, 8192]",
    ),
    "operator width 1e9": (
        "neural_operator/config.json",
        lambda c: {**c, "width": 10**9},
        "`width` must be an integer in [1, 8192], got 1000000000",
    ),
    "1e12 timesteps": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "num_train_timesteps": 10**12},
        "`num_train_timesteps` must be an integer in [1, 100000]",
    ),
    "0 timesteps": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "num_train_timesteps": 0},
        "`num_train_timesteps` must be an integer in [1, 100000], got 0",
    ),
    "norm_num_groups 0": ("unet/config.json", lambda c: {**c, "norm_num_groups": 0}, "`norm_num_groups` must be"),
    "norm_num_groups not a divisor": (
        "unet/config.json",
        lambda c: {**c, "norm_num_groups": 7},
        "`norm_num_groups` must be a divisor of every block_out_channels",
    ),
    "string for a number": (
        "unet/config.json",
        lambda c: {**c, "layers_per_block": "2"},
        "`layers_per_block` must be an integer in [1, 16], got '2'",
    ),
    "beta as a string": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "beta_end": "0.02"},
        "`beta_end` must be a number in (0, 1)",
    ),
    "model_index a list": ("model_index.json", lambda c: [c], "must hold a JSON object, got a list"),
    "back-projection 1e9": (
        "model_index.json",
        lambda c: {**c, "default_data_consistency_steps": 1e9},
        "`default_data_consistency_steps` must be an integer in [0, 100], got 1000000000.0",
    ),
    "unknown scheduler": (
        "model_index.json",
        lambda c: {**c, "scheduler": ["diffusers", "os"]},
        "`scheduler` must be a diffusers scheduler class",
    ),
    "unknown beta schedule": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "beta_schedule": "foo"},
        "not a valid DDIMScheduler config (foo is not implemented",
    ),
    "unknown prediction type": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "prediction_type": "foo"},
        "`prediction_type` must be one of epsilon, sample, v_prediction, got 'foo'",
    ),
    "unknown timestep spacing": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "timestep_spacing": 3},
        "`timestep_spacing` must be one of leading, trailing, linspace, got 3",
    ),
    "clip range NaN": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "clip_sample": True, "clip_sample_range": float("nan")},
        "`clip_sample_range` must be a number > 0, got nan",
    ),
    "thresholding ratio 5": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "thresholding": True, "dynamic_thresholding_ratio": 5},
        "`dynamic_thresholding_ratio` must be a number in (0, 1], got 5",
    ),
    "switch as a string": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "clip_sample": "no"},
        "`clip_sample` must be true or false, got 'no'",
    ),
    "betas as strings": (
        "scheduler/scheduler_config.json",
        lambda c: {**c, "trained_betas": ["x"] * c.get("num_train_timesteps", 1000)},
        "`trained_betas` must be null or one number in (0, 1) per training timestep, got 'a list of",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_pipeline_folders_are_refused_from_their_json(saved, tmp_path, monkeypatch, case):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    file, edit, message = DAMAGED[case]
    _edit(folder, file, edit)

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(NeurOpDiffPipeline, "from_pretrained", never)  # refused before anything is allocated
    with pytest.raises(ValueError, match="`pipeline`") as caught:
        load_pipeline(folder)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested 100000 levels deep, more than the 16 allowed"),
        ("{" + " " * (2 * 1024 * 1024) + "}", "more than the 1048576 allowed"),
        ("\xff{}", "not UTF-8 text"),
    ],
    ids=["deep", "huge", "not-utf8"],
)
def test_hostile_model_index_files_are_refused_within_budgets(saved, tmp_path, text, message):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    (folder / "model_index.json").write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(ValueError, match="`pipeline`") as caught:
        load_pipeline(folder)
    assert message in str(caught.value) and "the model folder is damaged" in str(caught.value)


def test_a_model_index_that_is_a_link_is_not_followed(saved, tmp_path):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    outside = tmp_path / "elsewhere.json"
    (folder / "model_index.json").rename(outside)
    (folder / "model_index.json").symlink_to(outside)
    with pytest.raises(ValueError, match="is a symbolic link: not followed"):
        load_pipeline(folder)


def _edit_header(edit):
    """A safetensors file's bytes with its JSON header edited by ``edit``."""
    import struct

    def change(data: bytes) -> bytes:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        edit(header)
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + data[8 + length :]

    return change


def _retype(header):
    header["conv_in.weight"]["dtype"] = "I32"


def _enlarge(header):
    header["conv_in.weight"].update(shape=[10**9, 10**9], data_offsets=[0, 4 * 10**18])


WEIGHTS = {
    "header of 2**62 bytes": (
        lambda data: (2**62).to_bytes(8, "little") + data[8:],
        "its header claims 4611686018427387904 bytes in a file of",
    ),
    "integer weights": (_edit_header(_retype), "tensor 'conv_in.weight' has dtype 'I32'; weights must be one of"),
    "1e18 values": (_edit_header(_enlarge), "tensor 'conv_in.weight' of shape [1000000000, 1000000000] does not fit"),
    "truncated": (lambda data: data[: len(data) // 2], "does not fit its byte range"),
    "empty": (lambda data: b"", "0 bytes, too short for a safetensors file"),
}


@pytest.mark.parametrize("case", sorted(WEIGHTS))
def test_damaged_weights_are_refused_from_their_safetensors_header(saved, tmp_path, monkeypatch, case):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    change, message = WEIGHTS[case]
    weights.write_bytes(change(weights.read_bytes()))

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(NeurOpDiffPipeline, "from_pretrained", never)
    with pytest.raises(ValueError, match="`pipeline`") as caught:
        load_pipeline(folder)
    assert str(caught.value).startswith(f"`pipeline` {weights}: ") and message in str(caught.value)
    assert str(caught.value).endswith("; the model folder is damaged.")


@pytest.mark.parametrize(
    "component, name, expected",
    [("unet", "conv_in.weight", [16, 6, 3, 3]), ("neural_operator", "lift.weight", [32, 74, 1, 1])],
)
def test_weights_of_another_shape_than_the_config_are_refused_in_one_line(
    saved, tmp_path, monkeypatch, component, name, expected
):
    """A tensor whose shape is not the config's (the same number of values: its bytes fit): one line naming the
    folder, the file, the parameter and both shapes, from the headers (diffusers' message was a long one about
    ``low_cpu_mem_usage``)."""
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    weights = folder / component / "diffusion_pytorch_model.safetensors"
    found = [expected[1], expected[0], *expected[2:]]

    def reshape(header):
        assert header[name]["shape"] == expected
        header[name]["shape"] = found

    weights.write_bytes(_edit_header(reshape)(weights.read_bytes()))
    monkeypatch.setattr(NeurOpDiffPipeline, "from_pretrained", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(ValueError) as caught:
        load_pipeline(folder)
    assert str(caught.value) == (
        f"`pipeline` {folder}: tensor {name!r} of {component}/diffusion_pytorch_model.safetensors has shape {found}, "
        f"but {component}/config.json gives it {expected}; the model folder is damaged."
    )


def test_weights_that_are_a_link_or_a_pickle_are_never_loaded(saved, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(NeurOpDiffPipeline, "from_pretrained", lambda *a, **k: pytest.fail("weights were loaded"))
    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    weights = folder / "neural_operator" / "diffusion_pytorch_model.safetensors"
    weights.rename(tmp_path / "outside.safetensors")
    weights.symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors: a symbolic link: not followed"):
        load_pipeline(folder)
    weights.unlink()
    (weights.parent / "diffusion_pytorch_model.bin").write_bytes(b"a pickle")
    with pytest.raises(ValueError, match="neural_operator holds no .safetensors weights"):
        load_pipeline(folder)


def test_damaged_pipeline_folder_in_the_cli_is_one_line_before_any_output(saved, tmp_path, image, capsys):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    _edit(folder, "scheduler/scheduler_config.json", lambda c: {**c, "num_train_timesteps": 0})
    assert run_cli("upscale", image, "--scale", "2", "--steps", "1", "--model", folder, "-o", tmp_path / "o.png") == 2
    assert "--model" in one_error_line(capsys) and not (tmp_path / "o.png").exists()


def test_the_saved_and_embedded_folders_pass_the_check(saved):
    from neurop_diff_diffusers.runtime.loading import DEFAULT_MODEL_PATH, has_default_model

    assert check_pipeline_folder(saved)["_class_name"] == "NeurOpDiffPipeline"
    if has_default_model():
        assert check_pipeline_folder(DEFAULT_MODEL_PATH)["_class_name"] == "NeurOpDiffPipeline"


def test_a_plain_unet_is_refused_when_the_pipeline_is_built(tiny):
    plain = build_unet("tiny").__class__(**{**dict(build_unet("tiny").config), "in_channels": 3})
    with pytest.raises(ValueError, match="`unet` takes 3 input and 3 output channels"):
        NeurOpDiffPipeline(unet=plain, neural_operator=tiny.neural_operator, scheduler=tiny.scheduler)


# ---------------------------------------------------------------------------------------------------------------------
# CLI flags (items 15, 16)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--scale", "1e308"], "--scale must be in [1, 4096]: a larger scale exceeds --max-pixels 16777216"),
        (["--scale", "1e300"], "got 1e+300"),
        (["--scale", "2", "--seed", str(2**64)], "--seed must be an integer in [0, 2**64 - 1"),
        (["--scale", "2", "--seed", "-1"], "--seed must be an integer in [0, 2**64 - 1"),
    ],
)
def test_absurd_scales_and_seeds_are_refused_at_parse_time(image, tmp_path, capsys, no_model, flags, message):
    assert run_cli("upscale", image, *flags, *FAST, "--out-dir", tmp_path / "o") == 2
    line = one_error_line(capsys)
    assert message in line and len(line) < 200
    assert not (tmp_path / "o").exists()


def test_the_largest_seed_is_accepted(image, tmp_path):
    assert run_cli("upscale", image, "--scale", "1.5", *FAST, "--seed", str(2**64 - 1), "-o", tmp_path / "o.png") == 0


def test_an_output_name_longer_than_the_file_system_allows_is_one_line(tmp_path, capsys, no_model):
    src = tmp_path / ("a" * 246 + ".png")  # the input fits; "<stem>_x2.png" and its temporary name do not
    Image.new("RGB", (4, 4)).save(src)
    assert run_cli("upscale", src, "--scale", "2", *FAST) == 2
    message = one_error_line(capsys)
    assert "the output name is 253 bytes long; this file system allows 245" in message
    assert [p.name for p in tmp_path.iterdir()] == [src.name]


def test_a_long_output_name_in_a_batch_is_recorded_not_a_traceback(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / ("a" * 246 + ".png"))
    Image.new("RGB", (4, 4)).save(folder / "b.png")
    assert run_cli("upscale", "--input-dir", folder, "--out-dir", tmp_path / "o", "--scale", "2", *FAST) == 2
    assert "the output name is 253 bytes long" in capsys.readouterr().err
    assert (tmp_path / "o" / "b_x2.png").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# The Python API (items 15, 16)

LR = np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)


def _call(pipe, **kwargs):
    kwargs = {"scale": 2, "num_inference_steps": 2, "output_type": "np", **kwargs}
    return pipe(kwargs.pop("image", LR), **kwargs).images


def test_generator_must_be_a_torch_generator(tiny):
    for bad in (0, "seed", [0], [torch.Generator(), 1]):
        with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
            _call(tiny, generator=bad)
    with pytest.raises(ValueError, match="one per image"):
        _call(tiny, generator=[torch.Generator(), torch.Generator()])


def test_callback_results_are_checked(tiny):
    with pytest.raises(TypeError, match="`callback_on_step_end` must return a dict of tensors or None, got str"):
        _call(tiny, callback_on_step_end=lambda *a: "latents")
    with pytest.raises(ValueError, match="returned 'latents' of shape \\(1, 3, 2, 2\\)"):
        _call(tiny, callback_on_step_end=lambda *a: {"latents": torch.zeros(1, 3, 2, 2)})
    with pytest.raises(TypeError, match="returned 'latents' as a list"):
        _call(tiny, callback_on_step_end=lambda *a: {"latents": [0.0]})
    with pytest.raises(TypeError, match="`callback_on_step_end` must be callable"):
        _call(tiny, callback_on_step_end="print")
    # returning the tensors it was given (or None) changes nothing
    same = _call(tiny, generator=torch.Generator().manual_seed(0), callback_on_step_end=lambda p, i, t, kw: kw)
    assert np.array_equal(same, _call(tiny, generator=torch.Generator().manual_seed(0)))


def test_meta_tensors_are_refused(tiny):
    with pytest.raises(ValueError, match="`image` is a tensor on the meta device"):
        _call(tiny, image=torch.empty(1, 3, 8, 8, device="meta"))


def test_huge_scales_are_refused_without_overflow(tiny):
    for scale in (1e308, 1e300, 2e5):
        with pytest.raises(
            ValueError, match=r"`scale` .* is too large for an input of 8x8: .* must be in \[1, 131072\]"
        ):
            _call(tiny, scale=scale)
    with pytest.raises(ValueError, match="`output_size` sides must be at most 1048576"):
        _call(tiny, scale=None, output_size=(10, 2**21))


def test_max_output_pixels_none_is_no_limit(tiny):
    assert _call(tiny, max_output_pixels=None).shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="`max_output_pixels`"):
        _call(tiny, max_output_pixels=100)
    with pytest.raises(TypeError, match="`max_output_pixels` must be a positive int or None"):
        _call(tiny, max_output_pixels="none")
    with pytest.raises(ValueError, match="`max_output_pixels` must be >= 1"):
        _call(tiny, max_output_pixels=0)


def test_numpy_scalars_are_accepted_like_python_numbers(tiny):
    def seeded(**kwargs):
        return _call(tiny, generator=torch.Generator().manual_seed(0), **kwargs)

    reference = seeded(num_inference_steps=4, strength=0.5, eta=0.0, tile_size=64)
    assert np.array_equal(
        seeded(num_inference_steps=np.int64(4), strength=np.float32(0.5), eta=np.float32(0.0), tile_size=np.int32(64)),
        reference,
    )
    assert np.array_equal(seeded(num_inference_steps=np.int32(4), strength=np.float64(0.5), eta=0), reference)
    with pytest.raises(TypeError, match="`num_inference_steps` must be an int"):
        seeded(num_inference_steps=np.float32(4))
    with pytest.raises(ValueError, match="`strength` must be a number in \\(0, 1\\]"):
        seeded(strength=np.float32(1.5))


def test_float_images_a_rounding_step_above_one_are_clipped_and_others_named_precisely(tiny):
    base = np.full((8, 8, 3), 1.0, dtype=np.float32)
    above = base.copy()
    above[0, 0, 0] = np.float32(1.0000001)
    seeded = {"generator": torch.Generator().manual_seed(0)}
    out = _call(tiny, image=above, **seeded)
    assert np.array_equal(out, _call(tiny, image=base, generator=torch.Generator().manual_seed(0)))
    above[0, 0, 0] = 1.001
    with pytest.raises(ValueError, match=r"got range \[1, 1.00100005\]"):
        _call(tiny, image=above)


# ---------------------------------------------------------------------------------------------------------------------
# evaluate --scales (item 15)


def test_evaluate_scales_too_large_for_the_resolution(tmp_path, samples_dir, capsys):
    argv = ["evaluate", "--pipeline", "preset:tiny", "--data_dir", samples_dir, "--output_dir", tmp_path / "o"]
    assert run_cli(*argv, "--scales", "300") == 2
    message = one_error_line(capsys)
    assert "`scales` up to 300 degrade the 256 px HR to an LR of 1 px; the LR needs at least 2 px a side" in message
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000, "JSON nested 100000 levels deep, more than the 64 allowed"),
        ("list.txt", b"\xff\xfeairplane30.png", "is not UTF-8 text"),
        ("huge.txt", "airplane30.png\n" * 1_200_000, "more than the 16777216 allowed"),
    ],
    ids=["deep", "not-utf8", "huge"],
)
def test_evaluate_images_from_is_read_within_budgets(tmp_path, samples_dir, capsys, name, content, message):
    listing = tmp_path / name
    listing.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = ["evaluate", "--pipeline", "preset:tiny", "--data_dir", samples_dir, "--output_dir", tmp_path / "o"]
    assert run_cli(*argv, "--images_from", listing, "--scales", "2") == 2
    line = one_error_line(capsys)
    assert line.startswith("`images_from` ") and str(listing) in line and message in line
    assert not (tmp_path / "o").exists()


def test_evaluate_images_from_is_not_read_through_a_link(tmp_path, samples_dir, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("airplane30.png\n")
    (tmp_path / "list.txt").symlink_to(outside)
    argv = ["evaluate", "--pipeline", "preset:tiny", "--data_dir", samples_dir, "--output_dir", tmp_path / "o"]
    assert run_cli(*argv, "--images_from", tmp_path / "list.txt", "--scales", "2") == 2
    assert "is a symbolic link: not followed" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def _script(path: str):
    import importlib.util

    file = Path(__file__).resolve().parents[1] / path
    spec = importlib.util.spec_from_file_location(f"script_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _within(seconds: int):
    """Fails the block with TimeoutError after ``seconds`` (a read that would block forever, e.g. on a FIFO)."""

    def expire(*args):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


#: The scripts that read an ``--images_from`` list of image files, and how each is called with it.
LIST_SCRIPTS = {
    "calibrate_uncertainty": (
        "training/calibrate_uncertainty.py",
        lambda data, listing, out: ["collect", "--data_dir", data, "--images_from", listing, "--out", out],
    ),
    "lr_agreement": (
        "benchmarks/lr_agreement.py",
        lambda data, listing, out: ["--data_dir", data, "--images_from", listing, "--output", out / "lr.json"],
    ),
}


@pytest.mark.parametrize("script", sorted(LIST_SCRIPTS))
@pytest.mark.parametrize("kind", ["link", "fifo", "huge", "not-utf8"])
def test_scripts_read_their_images_from_list_like_evaluate(tmp_path, samples_dir, script, kind):
    """The training and benchmark scripts' ``--images_from``: within the budget, never through a link, a FIFO refused
    at once (it blocked), before any output."""
    import os

    path, argv = LIST_SCRIPTS[script]
    listing = tmp_path / "list.txt"
    if kind == "link":
        (tmp_path / "outside.txt").write_text("airplane30.png\n")
        listing.symlink_to(tmp_path / "outside.txt")
        message = "`images_from` `.*list.txt` is a symbolic link: not followed"
    elif kind == "fifo":
        os.mkfifo(listing)
        message = "`images_from` `.*list.txt` is a FIFO: only a regular file is read"
    elif kind == "huge":
        listing.write_text("airplane30.png\n" * 1_200_000)
        message = "`images_from` `.*list.txt` has 18000000 bytes or more, more than the 16777216 allowed"
    else:
        listing.write_bytes(b"\xff\xfeairplane30.png")
        message = "`images_from` `.*list.txt` is not UTF-8 text"
    out = tmp_path / "out"
    module = _script(path)
    with _within(20), pytest.raises(ValueError, match=message):
        module.main([str(a) for a in argv(samples_dir, listing, out)])
    assert not out.exists()


@pytest.mark.parametrize("name", ["results.json", "trust_x2.png"])
def test_evaluate_refuses_a_link_among_its_outputs_before_any_work(tmp_path, samples_dir, capsys, name):
    out = tmp_path / "o"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / name).symlink_to(victim)
    argv = ["evaluate", "--pipeline", "preset:tiny", "--data_dir", samples_dir, "--output_dir", out, "--scales", "2"]
    assert run_cli(*argv) == 2
    assert one_error_line(capsys) == f"output `{out / name}` is a symbolic link: only a regular file is replaced"
    assert [p.name for p in out.iterdir()] == [name] and victim.read_text() == "keep"


# ---------------------------------------------------------------------------------------------------------------------
# A float GeoTIFF with NaN and no declared nodata (item 16)


def test_float_geotiff_with_undeclared_nan_masks_it_with_one_warning(tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")
    from rasterio.transform import from_origin

    values = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32) * 100
    values[:, 2, 3] = np.nan
    src = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 3, "dtype": "float32", "crs": "EPSG:32633"}
    with rasterio.open(src, "w", transform=from_origin(500000, 4000000, 10, 10), **profile) as dst:
        dst.write(values)
    out = tmp_path / "out.tif"
    assert run_cli("upscale", src, "--scale", "2", *FAST, "-o", out) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("neurop-diff: warning")]
    assert warnings == [
        f"neurop-diff: warning: {src} has 3 NaN or infinite band values that no nodata value marks; they are "
        "treated as nodata (masked in the output)."
    ]
    with rasterio.open(out) as result:
        data, mask = result.read(), result.dataset_mask()
    assert np.isfinite(data).all()  # the other pixels were not poisoned by the NaN
    assert (mask == 0).sum() == 4 and (mask[4:6, 6:8] == 0).all()  # the NaN pixel, nearest-upscaled x2


def test_a_map_is_not_left_alone_when_its_output_cannot_be_written(image, tmp_path, capsys, monkeypatch):
    # the map is written first; a full disk while the output is written must not leave the map without its output
    import errno

    from neurop_diff_diffusers.io import image_files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_files, "write_plain_image", full)
    out = tmp_path / "o" / "x.png"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_cli("upscale", image, "-o", out, "--scale", "2", "--uncertainty", "2", *FAST) == 2
    assert "No space left on device" in one_error_line(capsys)
    assert not (tmp_path / "o" / "x.uncertainty.tif").exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "o"]) and list(out.parent.iterdir()) == []
