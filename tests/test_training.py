"""End-to-end tests of the training scripts (training/): tiny stage 1 + stage 2 runs, kill-and-resume, Hub upload.

The runs use the tiny preset on a few 32 x 32 images, so the whole file takes well under two minutes on two CPU
cores. The images are real UCMerced images copied from ../shared/data when it is there, generated textures otherwise
(the same folder layout and file names), so every test here runs in a user's clone too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from diffusers import UNet2DModel
from safetensors.torch import load_file

from conftest import REPO_ROOT, SHARED_DATA_DIR
from neurop_diff_diffusers import GalerkinNeuralOperator, build_unet, training
from neurop_diff_diffusers.runtime.presets import build_neural_operator
from neurop_diff_diffusers.training import arguments as common

TRAINING_DIR = REPO_ROOT / "training"


def _load_script(name: str):
    """Import a training script by its path (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, TRAINING_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_neural_operator = _load_script("train_neural_operator")
train_neurop_diff = _load_script("train_neurop_diff")

UCMERCED = SHARED_DATA_DIR / "UCMerced_LandUse"
CLASSES = ("agricultural", "beach")
TRAIN_NUMBERS, VALIDATION_NUMBERS = ("00", "01", "02"), ("28",)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the thread pool makes them 10-100x slower.

    Subprocesses get the same setting (``OMP_NUM_THREADS=1``), so in-process and subprocess runs compute alike.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _env() -> dict[str, str]:
    src = os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(script, argv: list[str]) -> Path:
    """Run a script's main in this process; Accelerate's process-wide state is reset afterwards."""
    try:
        return script.main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _run_cli(script, argv: list[str], capsys) -> str:
    """Run a script as the command line does and return what it printed on stderr (it must fail)."""
    try:
        with pytest.raises(SystemExit) as exit_info:
            common.run_cli(script.main, argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """``ucmerced_mini/<class>/<class>NN``: 6 training images (00-02), 2 validation images (28), 1 broken file."""
    root = tmp_path_factory.mktemp("data") / "ucmerced_mini"
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for number in TRAIN_NUMBERS + VALIDATION_NUMBERS:
            source = UCMERCED / cls / f"{cls}{number}.tif"
            if source.is_file():
                shutil.copy(source, root / cls / source.name)
            else:
                ramp = np.linspace(0, 255, 48)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
                noise = rng.normal(0, 20, (48, 48, 3))
                pixels = np.clip(ramp + noise, 0, 255).astype(np.uint8)
                PIL.Image.fromarray(pixels).save(root / cls / f"{cls}{number}.png")
    # A file with a valid header and truncated pixels: skipped with a counted warning, not a crash.
    good = PIL.Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    good.save(root / CLASSES[0] / "broken.png")
    data = (root / CLASSES[0] / "broken.png").read_bytes()
    (root / CLASSES[0] / f"{CLASSES[0]}05.png").write_bytes(data[: len(data) // 3])
    (root / CLASSES[0] / "broken.png").unlink()
    return root


@pytest.fixture(scope="module")
def operator_dir(tmp_path_factory) -> Path:
    """A (randomly initialised) tiny operator saved as stage 1 saves it."""
    folder = tmp_path_factory.mktemp("stage1") / "neural_operator"
    build_neural_operator("tiny", seed=3).save_pretrained(folder)
    return folder


STAGE1_ARGS = ["--preset", "tiny", "--resolution", "32", "--lr_patch", "8", "--num_queries", "64"]
STAGE2_ARGS = ["--preset", "tiny", "--resolution", "32", "--validation_inference_steps", "2"]


def test_tiny_stage1_then_stage2(tmp_path, image_folder, caplog):
    report_to = "tensorboard" if common.is_tensorboard_available() else "none"
    stage1_dir = tmp_path / "stage1"
    final = _run(
        train_neural_operator,
        ["--train_data_dir", str(image_folder), "--output_dir", str(stage1_dir), *STAGE1_ARGS]
        + ["--train_batch_size", "4", "--max_train_steps", "3", "--checkpointing_steps", "2"]
        + ["--validation_steps", "2", "--report_to", report_to],
    )
    assert "Skipped 1 unreadable image(s)" in caplog.text
    assert final == stage1_dir / "neural_operator"
    operator = GalerkinNeuralOperator.from_pretrained(final)
    assert operator(torch.zeros(1, 3, 8, 8), (30, 20)).sample.shape == (1, 3, 30, 20)
    assert (stage1_dir / "checkpoint-2" / "neural_operator" / "config.json").is_file()
    split = json.loads((stage1_dir / "split.json").read_text())
    assert split["method"] == "ucmerced" and len(split["train"]) == 6 and len(split["test"]) == 2
    card = (final / "README.md").read_text()
    assert "library_name: diffusers" in card and "| 3 |" in card and (final / "validation_grid.png").is_file()
    assert json.loads((stage1_dir / "training_args.json").read_text())["script"] == "train_neural_operator"

    stage2_dir = tmp_path / "stage2"
    out = _run(
        train_neurop_diff,
        ["--train_data_dir", str(image_folder), "--output_dir", str(stage2_dir), *STAGE2_ARGS]
        + ["--neural_operator_path", str(stage1_dir), "--train_batch_size", "3", "--max_train_steps", "4"]
        + ["--checkpointing_steps", "2", "--validation_steps", "2", "--num_validation_images", "2"]
        + ["--gradient_accumulation_steps", "2", "--report_to", report_to],
    )
    assert out == stage2_dir
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(stage2_dir)
    assert type(pipe).__name__ == "NeurOpDiffPipeline"
    # The pipeline holds the EMA weights of the last step and the frozen stage-1 operator, unchanged.
    ema = load_file(stage2_dir / "checkpoint-4" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ema[k], v) for k, v in pipe.unet.state_dict().items())
    assert all(
        torch.equal(a, b) for a, b in zip(pipe.neural_operator.state_dict().values(), operator.state_dict().values())
    )
    raw = load_file(stage2_dir / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    history = [json.loads(line) for line in (stage2_dir / "validation_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [2, 4] and {"psnr", "ssim", "psnr_prior"} <= set(history[-1])
    card = (stage2_dir / "README.md").read_text()
    assert "pipeline_tag: image-to-image" in card and f"| 4 | {history[-1]['psnr']:.4f} |" in card
    assert "![validation](validation_grid.png)" in card and (stage2_dir / "validation_grid.png").is_file()
    if report_to == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        (events,) = (stage2_dir / "logs" / "train_neurop_diff").glob("events.out.tfevents.*")
        acc = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
        assert "val/grid" in acc.Tags()["images"] and "val/psnr" in acc.Tags()["scalars"]
        assert {"train_loss", "lr"} <= set(acc.Tags()["scalars"])


KILL_DRIVER = """
import importlib.util, pathlib, sys, time
spec = importlib.util.spec_from_file_location("train_neurop_diff", {script!r})
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
from neurop_diff_diffusers.training import arguments, checkpointing

commit = checkpointing._commit_folder

def slow_commit(tmp, final):
    # checkpoint-6 is completely written under its temporary name: die before it is renamed.
    if final.name == "checkpoint-6":
        pathlib.Path({sentinel!r}).write_text("ready")
        time.sleep(600)
    commit(tmp, final)

checkpointing._commit_folder = slow_commit
arguments.run_cli(script.main, sys.argv[1:])
"""


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def test_kill_and_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, image_folder, operator_dir):
    unet_config = tmp_path / "unet"
    unet = build_unet("tiny")
    unet.register_to_config(dropout=0.2)  # dropout draws random numbers: they must survive the resume too
    unet.save_config(unet_config)
    args = ["--train_data_dir", str(image_folder), "--neural_operator_path", str(operator_dir)]
    args += ["--unet_config", str(unet_config / "config.json"), *STAGE2_ARGS[2:], "--train_batch_size", "1"]
    args += ["--gradient_accumulation_steps", "2", "--max_train_steps", "8", "--checkpointing_steps", "2"]
    args += ["--validation_steps", "4", "--num_validation_images", "2", "--report_to", "none"]

    reference = tmp_path / "reference"
    _run(train_neurop_diff, [*args, "--output_dir", str(reference)])

    # 6 images, 1 per batch, 2 batches per step: 3 steps per epoch; checkpoint-4 is in the middle of epoch 1.
    run = tmp_path / "run"
    sentinel = tmp_path / "killed-while-saving-checkpoint-6"
    driver = KILL_DRIVER.format(script=str(TRAINING_DIR / "train_neurop_diff.py"), sentinel=str(sentinel))
    process = subprocess.Popen(
        [sys.executable, "-c", driver, *args, "--output_dir", str(run)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not sentinel.exists():
            if process.poll() is not None:
                pytest.fail(f"the run ended before checkpoint-6: {process.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the run did not reach checkpoint-6 in time")
            time.sleep(0.1)
    finally:  # whatever happened, the run does not outlive the test
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert [p.name for p in sorted(run.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    assert (run / ".tmp-checkpoint-6").is_dir()  # the partial write is there, and ignored by "latest"

    _run(train_neurop_diff, [*args, "--output_dir", str(run), "--resume_from_checkpoint", "latest"])

    marker = json.loads((run / "training_args.json").read_text())
    assert marker["resumed_from"] == ["checkpoint-4"]
    assert not (run / ".tmp-checkpoint-6").exists()
    assert [p.name for p in sorted(run.glob("checkpoint-*"))] == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    # The step counter went on from 4: the last checkpoint is step 8, its EMA has made 8 updates, the LR scheduler
    # has stepped 8 times.
    assert json.loads((run / "checkpoint-8" / "unet_ema" / "config.json").read_text())["optimization_step"] == 8
    for name in ("unet", "checkpoint-8/unet", "checkpoint-8/unet_ema", "neural_operator"):
        a, b = _tensors(reference / name), _tensors(run / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    opt_a = torch.load(reference / "checkpoint-8" / "optimizer.bin", weights_only=True)
    opt_b = torch.load(run / "checkpoint-8" / "optimizer.bin", weights_only=True)
    for index, state in opt_a["state"].items():
        assert all(torch.equal(v, opt_b["state"][index][k]) for k, v in state.items())
    sched_a = torch.load(reference / "checkpoint-8" / "scheduler.bin", weights_only=False)
    sched_b = torch.load(run / "checkpoint-8" / "scheduler.bin", weights_only=False)
    assert sched_a["last_epoch"] == sched_b["last_epoch"] == 8 and sched_a["_last_lr"] == sched_b["_last_lr"]
    history = [(run / "validation_history.jsonl").read_text(), (reference / "validation_history.jsonl").read_text()]
    assert history[0] == history[1] and history[0].count("\n") == 2


def test_push_to_hub_uploads_the_model_and_never_shows_the_token(tmp_path, image_folder, monkeypatch, capfd, caplog):
    from unittest import mock

    token = "hf_TESTtokenNEVERshownXYZ123"
    monkeypatch.setenv("HF_TOKEN", token)
    output = tmp_path / "out"
    with (
        mock.patch("huggingface_hub.create_repo") as create_repo,
        mock.patch("huggingface_hub.upload_folder") as upload_folder,
    ):
        create_repo.return_value = mock.Mock(repo_id="me/operator", __str__=lambda self: "https://hf.co/me/operator")
        _run(
            train_neural_operator,
            ["--train_data_dir", str(image_folder), "--output_dir", str(output), *STAGE1_ARGS]
            + ["--max_train_steps", "1", "--report_to", "none", "--push_to_hub", "--hub_model_id", "me/operator"],
        )
    create_repo.assert_called_once()
    assert create_repo.call_args.args == ("me/operator",) and "token" not in create_repo.call_args.kwargs
    kwargs = upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/operator" and Path(kwargs["folder_path"]) == output / "neural_operator"
    assert "me/operator" in (output / "neural_operator" / "README.md").read_text()
    captured = capfd.readouterr()
    assert token not in captured.out + captured.err + caplog.text
    for path in output.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_fine_tune_from_a_pretrained_unet_on_low_noise_levels(tmp_path, image_folder, operator_dir, monkeypatch):
    pretrained = build_unet("tiny", seed=11)
    pretrained.save_pretrained(tmp_path / "pipeline" / "unet")
    base = ["--train_data_dir", str(image_folder), *STAGE2_ARGS, "--neural_operator_path", str(operator_dir)]
    for source in (tmp_path / "pipeline", tmp_path / "pipeline" / "unet"):  # a pipeline folder or the UNet's own
        args = train_neurop_diff.parse_args([*base, "--pretrained_unet", str(source)])
        unet = train_neurop_diff.build_denoiser(args)
        assert unet.training and list(unet.config.block_out_channels) == list(pretrained.config.block_out_channels)
        assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), pretrained.state_dict().values()))

    seen = []

    def recording_loss(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("max_timestep"))
        return training.diffusion_l1_loss(*args, **kwargs)

    monkeypatch.setattr(train_neurop_diff, "diffusion_l1_loss", recording_loss)
    out = _run(
        train_neurop_diff,
        [*base, "--output_dir", str(tmp_path / "out"), "--pretrained_unet", str(tmp_path / "pipeline")]
        + ["--max_noise_step", "40", "--max_train_steps", "2", "--train_batch_size", "2", "--no-use_ema"]
        + ["--validation_steps", "100", "--num_validation_images", "0", "--report_to", "none"],
    )
    assert seen == [40, 40]
    tuned = UNet2DModel.from_pretrained(out / "unet")
    assert list(tuned.config.block_out_channels) == list(pretrained.config.block_out_channels)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), pretrained.state_dict().values()))
    assert json.loads((out / "training_args.json").read_text())["args"]["max_noise_step"] == 40


def test_clear_errors_and_nothing_written(tmp_path, image_folder, operator_dir, monkeypatch, capsys):
    out = tmp_path / "out"
    base = ["--output_dir", str(out), *STAGE1_ARGS, "--report_to", "none"]
    err = _run_cli(train_neural_operator, ["--train_data_dir", str(tmp_path / "nope"), *base], capsys)
    assert "`--train_data_dir`" in err and "no such folder" in err
    err = _run_cli(train_neural_operator, ["--dataset_name", "x/y", "--train_data_dir", "a", *base], capsys)
    assert "exactly one of `--dataset_name`" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _run_cli(train_neural_operator, ["--dataset_name", "ucmerced", *base], capsys)
    assert "`--dataset_name` 'ucmerced'" in err and "local copy" in err
    err = _run_cli(train_neural_operator, ["--train_data_dir", str(image_folder), *base, "--resolution", "16"], capsys)
    assert "`--resolution` 16" in err
    assert not out.exists()  # failed runs leave nothing behind

    stage2 = ["--train_data_dir", str(image_folder), "--output_dir", str(out), *STAGE2_ARGS, "--report_to", "none"]
    err = _run_cli(train_neurop_diff, [*stage2, "--neural_operator_path", str(tmp_path / "missing")], capsys)
    assert "`--neural_operator_path`" in err
    err = _run_cli(
        train_neurop_diff, [*stage2, "--neural_operator_path", str(operator_dir), "--resolution", "30"], capsys
    )
    assert "`--crop_size`" in err and "multiple" in err
    err = _run_cli(
        train_neurop_diff,
        [*stage2, "--neural_operator_path", str(operator_dir), "--pretrained_unet", str(tmp_path / "missing")],
        capsys,
    )
    assert "`--pretrained_unet`" in err and "no such folder" in err
    err = _run_cli(
        train_neurop_diff,
        [
            *stage2,
            "--neural_operator_path",
            str(operator_dir),
            "--pretrained_unet",
            str(operator_dir),
            "--unet_config",
            str(operator_dir),
        ],
        capsys,
    )
    assert "`--pretrained_unet` and `--unet_config` are exclusive" in err
    for bad in ("0", "2001"):
        err = _run_cli(
            train_neurop_diff, [*stage2, "--neural_operator_path", str(operator_dir), "--max_noise_step", bad], capsys
        )
        assert f"`--max_noise_step` must be in [1, 2000], got {bad}" in err
    assert not out.exists()

    monkeypatch.setattr(common, "is_tensorboard_available", lambda: False)
    err = _run_cli(
        train_neural_operator,
        ["--train_data_dir", str(image_folder), *base[:-2], "--report_to", "tensorboard"],
        capsys,
    )
    assert "`--report_to tensorboard` needs TensorBoard" in err and "pip install tensorboard" in err

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    err = _run_cli(
        train_neural_operator, ["--train_data_dir", str(image_folder), *base, "--output_dir", str(unrelated)], capsys
    )
    assert "`--output_dir`" in err and "not the output of train_neural_operator.py" in err
    previous = tmp_path / "previous"
    _run(
        train_neural_operator,
        ["--train_data_dir", str(image_folder), *base, "--output_dir", str(previous), "--max_train_steps", "1"],
    )
    err = _run_cli(
        train_neural_operator, ["--train_data_dir", str(image_folder), *base, "--output_dir", str(previous)], capsys
    )
    assert "--resume_from_checkpoint latest" in err
    err = _run_cli(
        train_neurop_diff,
        [*stage2, "--output_dir", str(previous), "--neural_operator_path", str(operator_dir)],
        capsys,
    )
    assert "holds a run of train_neural_operator" in err


@pytest.mark.skipif(not UCMERCED.is_dir(), reason=f"needs the shared real images at {UCMERCED}")
def test_shared_ucmerced_folder_with_its_convention_split(tmp_path):
    output = tmp_path / "out"
    _run(
        train_neural_operator,
        ["--train_data_dir", str(UCMERCED), "--output_dir", str(output), *STAGE1_ARGS, "--max_train_samples", "4"]
        + ["--train_batch_size", "2", "--max_train_steps", "1", "--num_validation_images", "1", "--report_to", "none"],
    )
    split = json.loads((output / "split.json").read_text())
    assert split["method"] == "ucmerced" and len(split["train"]) == 4 and len(split["test"]) == 21 * 7
    assert all(int(name[-6:-4]) >= 28 for name in split["test"])
    assert (output / "neural_operator" / "diffusion_pytorch_model.safetensors").is_file()


def test_accelerate_launch(tmp_path, image_folder):
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate command is not on PATH")
    output = tmp_path / "out"
    result = subprocess.run(
        [accelerate, "launch", "--num_processes", "1", "--cpu", "--mixed_precision", "no", "--num_machines", "1"]
        + ["--dynamo_backend", "no", str(TRAINING_DIR / "train_neural_operator.py")]
        + ["--train_data_dir", str(image_folder), "--output_dir", str(output), *STAGE1_ARGS]
        + ["--max_train_steps", "1", "--report_to", "none", "--num_validation_images", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert GalerkinNeuralOperator.from_pretrained(output / "neural_operator") is not None


def test_residual_v_prediction_with_a_time_budget(tmp_path, image_folder, operator_dir, caplog):
    """--max_train_minutes stops long before --max_train_steps, cleanly: checkpoint, EMA pipeline, card; the saved
    pipeline samples with the parameterisation it was trained with, and an untrained zero-output stage starts from
    an output layer of zeros."""
    out = tmp_path / "out"
    base = ["--train_data_dir", str(image_folder), *STAGE2_ARGS, "--neural_operator_path", str(operator_dir)]
    args = train_neurop_diff.parse_args([*base, "--zero_init_output", "--output_dir", str(out)])
    caplog.set_level("INFO")
    _run(
        train_neurop_diff,
        [*base, "--output_dir", str(out), "--report_to", "none", "--train_batch_size", "2"]
        + ["--residual_diffusion", "--prediction_type", "v_prediction", "--snr_gamma", "5", "--zero_init_output"]
        + ["--max_train_steps", "100000", "--max_train_minutes", "0.0001", "--checkpointing_steps", "1000"]
        + ["--default_strength", "0.5", "--num_validation_images", "1", "--validation_steps", "0"],
    )
    assert args.zero_init_output and "--max_train_minutes 0.0001 reached at step 1" in caplog.text
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["residual"] is True and index["default_strength"] == 0.5
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    card = (out / "README.md").read_text()
    assert "--residual_diffusion" in card and "max_train_minutes" in card
    history = [json.loads(line) for line in (out / "validation_history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 1


def test_parameterisation_arguments_are_checked(tmp_path, image_folder, operator_dir, capsys):
    base = ["--train_data_dir", str(image_folder), *STAGE2_ARGS, "--neural_operator_path", str(operator_dir)]
    base += ["--output_dir", str(tmp_path / "out")]
    err = _run_cli(train_neurop_diff, [*base, "--snr_gamma", "0"], capsys)
    assert "`--snr_gamma` must be a positive number" in err
    err = _run_cli(train_neurop_diff, [*base, "--max_train_minutes", "-1"], capsys)
    assert "`--max_train_minutes` must be a positive number" in err
    err = _run_cli(train_neurop_diff, [*base, "--default_strength", "1.5"], capsys)
    assert "`--default_strength` must be in (0, 1]" in err
    assert not (tmp_path / "out").exists()
