"""Unit tests of the training building blocks (neurop_diff_diffusers.training, model_card)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from neurop_diff_diffusers import (
    GalerkinNeuralOperator,
    build_pipeline,
    default_scheduler,
    sample_continuous_noise_level,
)
from neurop_diff_diffusers.runtime.model_card import args_table, make_model_card, validation_table
from neurop_diff_diffusers.runtime.presets import build_neural_operator
from neurop_diff_diffusers.training import (
    TRAINING_ARGS_FILE,
    EpochShuffleSampler,
    NeuralOperatorQuery,
    TrainingSetupError,
    ValidationSet,
    append_validation_history,
    check_output_dir,
    compute_priors,
    diffusion_l1_loss,
    drop_unreadable_images,
    get_lr_scheduler,
    list_checkpoints,
    load_frozen_operator,
    operator_l1_loss,
    paper_lr_lambda,
    prune_checkpoints,
    push_folder_to_hub,
    read_validation_history,
    remove_incomplete_checkpoints,
    resolve_resume_checkpoint,
    resume_position,
    save_checkpoint,
    truncate_validation_history,
    validate_operator,
    validate_pipeline,
    write_training_args,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the thread pool makes them much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------------------
# Losses and priors
# ------------------------------------------------------------------------------------------------------------------
def _stage1_batch(b: int = 2, q: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "lr": torch.rand(b, 3, 8, 8, generator=g) * 2 - 1,
        "coord": torch.rand(b, q, 2, generator=g) * 2 - 1,
        "cell": torch.full((b, 2), 2 / 20),
        "gt": torch.rand(b, q, 3, generator=g) * 2 - 1,
    }


def test_operator_l1_loss_is_the_l1_at_the_query_points_and_has_gradients():
    op = build_neural_operator("tiny")
    batch = _stage1_batch()
    loss = operator_l1_loss(op, batch)
    expected = (op.query(batch["lr"], batch["coord"], batch["cell"]) - batch["gt"].transpose(1, 2)).abs().mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in op.parameters())
    # The module form used for distributed training computes the same thing.
    torch.testing.assert_close(operator_l1_loss(NeuralOperatorQuery(op), batch), expected)


class _RecordingUNet(torch.nn.Module):
    """Returns a fixed function of its input and records what it was given."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, sample, timestep):
        self.seen = (sample.detach().clone(), timestep.detach().clone())
        return SimpleNamespace(sample=sample[:, :3] * self.scale)


def test_diffusion_l1_loss_follows_method_section_2():
    alphas_cumprod = default_scheduler().alphas_cumprod
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    prior = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    unet = _RecordingUNet()
    loss = diffusion_l1_loss(unet, hr, prior, alphas_cumprod, torch.Generator().manual_seed(7))

    # Same generator stream: first the continuous noise levels, then the noise.
    replay = torch.Generator().manual_seed(7)
    sqrt_gamma = sample_continuous_noise_level(alphas_cumprod, 3, replay)
    noise = torch.randn(hr.shape, generator=replay)
    g4 = sqrt_gamma.view(3, 1, 1, 1)
    y_noisy = g4 * hr + torch.sqrt(1 - g4**2) * noise
    sample, timestep = unet.seen
    torch.testing.assert_close(timestep, sqrt_gamma)  # the float noise level, not an integer step
    assert timestep.dtype == torch.float32
    torch.testing.assert_close(sample, torch.cat([y_noisy, prior], dim=1))
    torch.testing.assert_close(loss, F.l1_loss(y_noisy * 0.5, noise))
    loss.backward()
    assert unet.scale.grad is not None


def test_continuous_noise_levels_lie_between_neighbouring_steps():
    ac = default_scheduler().alphas_cumprod
    levels = sample_continuous_noise_level(ac, 20000, torch.Generator().manual_seed(0))
    assert levels.dtype == torch.float32 and levels.shape == (20000,)
    assert levels.max() <= 1.0 and levels.min() >= ac[-1].sqrt() - 1e-7
    # Uniform t over 1..T: about a fifth of the draws have t <= 400.
    assert 0.18 < (levels >= ac[399].sqrt()).float().mean().item() < 0.22


def test_max_timestep_restricts_the_noise_levels_and_defaults_to_the_method():
    ac = default_scheduler().alphas_cumprod
    default = sample_continuous_noise_level(ac, 64, torch.Generator().manual_seed(3))
    full = sample_continuous_noise_level(ac, 64, torch.Generator().manual_seed(3), max_timestep=2000)
    assert torch.equal(default, full)
    low = sample_continuous_noise_level(ac, 5000, torch.Generator().manual_seed(3), max_timestep=400)
    assert low.min() >= ac[399].sqrt() - 1e-7 and low.max() <= 1.0
    assert low.min() < ac[380].sqrt()  # reaches the top of the allowed range
    one = sample_continuous_noise_level(ac, 100, torch.Generator().manual_seed(3), max_timestep=1)
    assert one.min() >= ac[0].sqrt() - 1e-7
    for bad in (0, 2001, 1.5, True):
        with pytest.raises(ValueError, match=r"`max_timestep` must be an integer in \[1, 2000\]"):
            sample_continuous_noise_level(ac, 2, max_timestep=bad)


def test_diffusion_l1_loss_passes_max_timestep_to_the_noise_levels():
    ac = default_scheduler().alphas_cumprod
    unet = _RecordingUNet()
    hr = torch.zeros(4, 3, 8, 8)
    diffusion_l1_loss(unet, hr, hr, ac, torch.Generator().manual_seed(5), max_timestep=40)
    expected = sample_continuous_noise_level(ac, 4, torch.Generator().manual_seed(5), max_timestep=40)
    torch.testing.assert_close(unet.seen[1], expected)
    assert unet.seen[1].min() >= ac[39].sqrt() - 1e-7


def test_diffusion_l1_loss_with_the_real_unet_is_reproducible():
    unet = build_pipeline("tiny").unet
    ac = default_scheduler().alphas_cumprod
    hr = torch.zeros(2, 3, 16, 16)
    a = diffusion_l1_loss(unet, hr, hr, ac, torch.Generator().manual_seed(1))
    b = diffusion_l1_loss(unet, hr, hr, ac, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.ndim == 0 and a.item() > 0


def test_compute_priors_groups_sizes_without_changing_results():
    op = build_neural_operator("tiny").eval()
    g = torch.Generator().manual_seed(0)
    lrs = [torch.rand(3, 8, 8, generator=g) * 2 - 1, torch.rand(3, 5, 6, generator=g) * 2 - 1]
    lrs.append(torch.rand(3, 8, 8, generator=g) * 2 - 1)
    priors = compute_priors(op, lrs, (20, 24))
    assert priors.shape == (3, 3, 20, 24) and not priors.requires_grad
    for lr, prior in zip(lrs, priors):
        torch.testing.assert_close(prior, op(lr[None], (20, 24)).sample[0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Learning-rate schedules
# ------------------------------------------------------------------------------------------------------------------
def test_paper_schedule_is_constant_then_decays_to_the_minimum():
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-4)
    sched = get_lr_scheduler("paper", opt, num_training_steps=1000, constant_fraction=0.1, min_lr=1e-6)
    lrs = []
    for _ in range(1100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert all(lr == pytest.approx(1e-4) for lr in lrs[:101])
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))  # non-increasing
    assert lrs[550] == pytest.approx((1e-4 + 1e-6) / 2, rel=1e-3)
    assert lrs[1000] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e-6)


def test_other_schedules_come_from_diffusers_and_bad_names_are_clear():
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = get_lr_scheduler("linear", opt, num_training_steps=10, num_warmup_steps=0)
    for _ in range(5):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.5)
    with pytest.raises(TrainingSetupError, match="--lr_scheduler"):
        get_lr_scheduler("nope", opt, num_training_steps=10)
    with pytest.raises(TrainingSetupError, match="--lr_min"):
        tiny_lr = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-7)
        get_lr_scheduler("paper", tiny_lr, num_training_steps=5)
    with pytest.raises(ValueError):
        paper_lr_lambda(0)


# ------------------------------------------------------------------------------------------------------------------
# Reproducible order and resume position
# ------------------------------------------------------------------------------------------------------------------
def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a, b = EpochShuffleSampler(20, seed=3), EpochShuffleSampler(20, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(20))
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(EpochShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("step", "batches", "accumulation", "expected"),
    [(0, 3, 1, (0, 0)), (4, 3, 1, (1, 1)), (6, 3, 1, (2, 0)), (4, 6, 2, (1, 2)), (2, 3, 2, (1, 0)), (3, 3, 2, (1, 2))],
)
def test_resume_position(step, batches, accumulation, expected):
    assert resume_position(step, batches, accumulation) == expected


# ------------------------------------------------------------------------------------------------------------------
# Checkpoints and the output folder
# ------------------------------------------------------------------------------------------------------------------
class _FakeAccelerator:
    is_main_process = True

    def __init__(self, fail: bool = False):
        self.fail = fail

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "state.bin").write_text(folder)
        if self.fail:
            raise KeyboardInterrupt  # the process dies in the middle of the write


def test_checkpoints_are_written_atomically_listed_in_order_and_pruned(tmp_path):
    acc = _FakeAccelerator()
    for step in (2, 10, 4):
        save_checkpoint(acc, tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-10"]
    # A write that dies leaves a temporary folder that is never picked up, and the older checkpoints intact.
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_FakeAccelerator(fail=True), tmp_path, 12)
    assert (tmp_path / ".tmp-checkpoint-12").is_dir()
    assert resolve_resume_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    assert [p.name for p in remove_incomplete_checkpoints(tmp_path)] == [".tmp-checkpoint-12"]
    # Re-saving a step replaces it; the limit keeps the newest.
    save_checkpoint(acc, tmp_path, 10, total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-10"]
    assert prune_checkpoints(tmp_path, 1)[0].name == "checkpoint-4"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_resolve_resume_checkpoint(tmp_path):
    assert resolve_resume_checkpoint(tmp_path, None) is None
    assert resolve_resume_checkpoint(tmp_path, "latest") is None
    assert resolve_resume_checkpoint(tmp_path / "missing", "latest") is None
    (tmp_path / "checkpoint-7").mkdir()
    assert resolve_resume_checkpoint(tmp_path, "checkpoint-7") == tmp_path / "checkpoint-7"
    assert resolve_resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-7")) == tmp_path / "checkpoint-7"
    with pytest.raises(TrainingSetupError, match="--resume_from_checkpoint"):
        resolve_resume_checkpoint(tmp_path, "checkpoint-8")
    (tmp_path / "other").mkdir()
    with pytest.raises(TrainingSetupError, match="checkpoint-<step>"):
        resolve_resume_checkpoint(tmp_path, "other")


def test_output_dir_guard(tmp_path):
    check_output_dir(tmp_path / "new", "train_x", resuming=False)
    check_output_dir(tmp_path, "train_x", resuming=False)  # empty
    (tmp_path / "photo.png").write_bytes(b"x")
    with pytest.raises(TrainingSetupError, match="--output_dir.*not the output of train_x.py"):
        check_output_dir(tmp_path, "train_x", resuming=True, overwrite=True)
    write_training_args(tmp_path, "train_y", {"seed": 0})
    with pytest.raises(TrainingSetupError, match="holds a run of train_y"):
        check_output_dir(tmp_path, "train_x", resuming=True)
    write_training_args(tmp_path, "train_x", {"seed": 0})
    with pytest.raises(TrainingSetupError, match="--resume_from_checkpoint latest.*--overwrite_output_dir"):
        check_output_dir(tmp_path, "train_x", resuming=False)
    check_output_dir(tmp_path, "train_x", resuming=True)
    check_output_dir(tmp_path, "train_x", resuming=False, overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(TrainingSetupError, match="is a file"):
        check_output_dir(tmp_path / "file", "train_x", resuming=False)


def test_training_args_marker_records_resumptions(tmp_path):
    write_training_args(tmp_path, "train_x", {"seed": 0, "path": Path("a")})
    write_training_args(tmp_path, "train_x", {"seed": 0}, resumed_from="checkpoint-4")
    marker = json.loads((tmp_path / TRAINING_ARGS_FILE).read_text())
    assert marker["script"] == "train_x" and marker["resumed_from"] == ["checkpoint-4"]
    assert marker["args"] == {"seed": 0}


def test_validation_history_is_truncated_on_resume(tmp_path):
    for step in (2, 4, 6):
        append_validation_history(tmp_path, {"step": step, "psnr": float(step)})
    with (tmp_path / "validation_history.jsonl").open("a") as f:
        f.write('{"step": 8, "ps')  # cut by a kill
    truncate_validation_history(tmp_path, 4)
    assert [r["step"] for r in read_validation_history(tmp_path)] == [2, 4]


# ------------------------------------------------------------------------------------------------------------------
# Data and validation
# ------------------------------------------------------------------------------------------------------------------
def _texture(seed: int, size: int = 40) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_unreadable_images_are_dropped_with_a_counted_warning(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        _texture(i).save(paths[-1])
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # valid header, truncated pixels
    ds = datasets.Dataset.from_dict(
        {"image": [str(p) for p in paths], "file_name": [p.name for p in paths]},
        features=datasets.Features({"image": datasets.Image(), "file_name": datasets.Value("string")}),
    )
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image\(s\) out of 3.*img1.png"):
        kept, dropped = drop_unreadable_images(ds)
    assert kept["file_name"] == ["img0.png", "img2.png"] and dropped == ["img1.png"]


def test_validation_of_the_operator_and_of_the_pipeline():
    images = [{"image": _texture(i), "file_name": f"c/c{i}.png"} for i in range(5)]
    val = ValidationSet.from_images(images, resolution=32, scale=4.0, num_images=3)
    assert val.hr.shape == (3, 3, 32, 32) and val.lr.shape == (3, 3, 8, 8)
    assert val.names == ["c/c0.png", "c/c1.png", "c/c3.png"]  # spread over the split
    assert ValidationSet.from_images([], resolution=32, scale=2.0) is None

    op_result = validate_operator(build_neural_operator("tiny").eval(), val)
    assert set(op_result.metrics) == {"psnr", "ssim", "psnr_bicubic", "ssim_bicubic"}
    assert op_result.grid.size == (4 * 32, 3 * 32)

    pipe = build_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    result = validate_pipeline(pipe, val, num_inference_steps=2, seed=0)
    assert {"psnr", "ssim", "psnr_prior", "ssim_prior", "psnr_bicubic", "ssim_bicubic"} == set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.grid.size == (5 * 32, 3 * 32) and result.columns[3] == "output"
    again = validate_pipeline(pipe, val, num_inference_steps=2, seed=0)
    assert again.metrics == result.metrics  # fixed noise: comparable across validations


def test_load_frozen_operator(tmp_path):
    op = build_neural_operator("tiny")
    op.save_pretrained(tmp_path / "run" / "neural_operator")
    for path in (tmp_path / "run", tmp_path / "run" / "neural_operator"):
        loaded = load_frozen_operator(path)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), op.state_dict().values()))
    with pytest.raises(TrainingSetupError, match="--neural_operator_path.*no saved GalerkinNeuralOperator"):
        load_frozen_operator(tmp_path)
    with pytest.raises(TrainingSetupError, match="--neural_operator_path.*no such folder"):
        load_frozen_operator(tmp_path / "missing")
    with mock.patch.object(GalerkinNeuralOperator, "from_pretrained", side_effect=OSError("offline\nmore")):
        with pytest.raises(TrainingSetupError, match=r"not a local folder.*\(OSError: offline\)"):
            load_frozen_operator("nobody/no-such-operator")


# ------------------------------------------------------------------------------------------------------------------
# Hub and model cards
# ------------------------------------------------------------------------------------------------------------------
def test_push_folder_to_hub_uses_create_repo_and_upload_folder_without_a_token(tmp_path):
    with (
        mock.patch("huggingface_hub.create_repo") as create_repo,
        mock.patch("huggingface_hub.upload_folder") as upload_folder,
    ):
        create_repo.return_value = SimpleNamespace(repo_id="me/model", __str__=lambda self: "url")
        push_folder_to_hub(tmp_path, "me/model", private=True)
    create_repo.assert_called_once_with("me/model", private=True, exist_ok=True)
    kwargs = upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/model" and kwargs["folder_path"] == str(tmp_path)
    assert "checkpoint-*" in kwargs["ignore_patterns"] and "token" not in kwargs


def test_model_cards_render_metadata_arguments_and_figures():
    context = {
        "model_name": "m",
        "repo_id_or_path": "me/m",
        "global_step": 10,
        "num_processes": 1,
        "total_batch_size": 4,
        "num_train_images": 8,
        "num_validation_images_total": 2,
        "dataset_description": "d",
        "command": "accelerate launch training/x.py",
        "mixed_precision": "no",
        "validation_description": "v",
        "grid_image": "validation_grid.png",
        "grid_columns": "a | b",
        "unet_weights": "EMA",
    }
    args = {
        "learning_rate": 1e-4,
        "lr_scheduler": "paper",
        "train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "scale_min": 1.0,
        "scale_max": 8.0,
        "ema_decay": 0.999,
        "max_grad_norm": 1.0,
        "neural_operator_path": "op",
        "lr_patch": 48,
        "num_queries": 2304,
        "hub_token": "hf_secret",
    }
    history = [{"step": 5, "psnr": 20.0, "ssim": 0.5}, {"step": 10, "psnr": 21.0, "ssim": 0.6}]
    for kind in ("pipeline", "neural_operator"):
        card = make_model_card(kind, training_args=args, context=context, validation_history=history, datasets=["x/y"])
        text = str(card)
        assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "image-to-image"
        assert card.data.license == "apache-2.0" and card.data.datasets == ["x/y"]
        assert set(card.data.tags) == {"super-resolution", "remote-sensing", "neurop-diff", "diffusers"}
        assert card.data.metrics == ["psnr", "ssim"]
        assert "| 10 | 21.0000 | 0.6000 |" in text and "![validation](validation_grid.png)" in text
        assert "| `learning_rate` | `0.0001` |" in text and "hf_secret" not in text
    with pytest.raises(Exception, match="model_name"):
        partial = {k: v for k, v in context.items() if k != "model_name"}
        make_model_card("pipeline", training_args=args, context=partial)
    assert validation_table([]) == "No validation was run."
    assert "token" not in args_table({"hub_token": "x", "seed": 1})


class _ZeroUNet(torch.nn.Module):
    """Outputs zeros and records what it was given (the noisy input + prior, and the noise level)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, level):
        self.seen.append((x.clone(), level.clone()))
        return SimpleNamespace(sample=torch.zeros_like(x[:, :3]))


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_loss_targets_of_each_parameterisation(prediction_type, residual):
    gen = torch.Generator().manual_seed(3)
    hr = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    prior = (hr + 0.1 * torch.randn(2, 3, 8, 8, generator=gen)).clamp(-1, 1)
    unet = _ZeroUNet()
    alphas_cumprod = default_scheduler().alphas_cumprod
    loss = diffusion_l1_loss(
        unet, hr, prior, alphas_cumprod, torch.Generator().manual_seed(0), None, prediction_type, residual
    )
    ((x, level),) = unet.seen
    torch.testing.assert_close(x[:, 3:], prior, rtol=0, atol=0)
    y0 = hr - prior if residual else hr
    g = level.view(-1, 1, 1, 1)
    sigma = (1 - g.square()).sqrt()
    noise = (x[:, :3] - g * y0) / sigma
    target = {"epsilon": noise, "v_prediction": g * noise - sigma * y0, "sample": y0}[prediction_type]
    # A zero output: the loss is the mean absolute target.
    torch.testing.assert_close(loss, target.abs().mean(), rtol=1e-4, atol=1e-5)
    # The same draws as the paper's loss: the noisy input differs only through y0.
    unet_paper = _ZeroUNet()
    diffusion_l1_loss(unet_paper, hr, prior, alphas_cumprod, torch.Generator().manual_seed(0))
    torch.testing.assert_close(unet_paper.seen[0][1], level, rtol=0, atol=0)


def test_min_snr_weights_and_weighted_loss():
    from neurop_diff_diffusers.training import min_snr_weights

    sqrt_gamma = torch.tensor([0.5**0.5, (10 / 11) ** 0.5, (1 / 11) ** 0.5])  # SNR 1, 10, 0.1
    torch.testing.assert_close(min_snr_weights(sqrt_gamma, 5.0, "epsilon"), torch.tensor([1.0, 0.5, 1.0]))
    torch.testing.assert_close(min_snr_weights(sqrt_gamma, 5.0, "v_prediction"), torch.tensor([0.5, 5 / 11, 1 / 11]))
    torch.testing.assert_close(min_snr_weights(sqrt_gamma, 5.0, "sample"), torch.tensor([1.0, 5.0, 0.1]))
    hr = torch.zeros(3, 3, 8, 8)
    ac = default_scheduler().alphas_cumprod
    plain = diffusion_l1_loss(_ZeroUNet(), hr, hr, ac, torch.Generator().manual_seed(1), prediction_type="sample")
    # x0-prediction of a zero image with a zero output: every per-sample error is 0, whatever the weights.
    weighted = diffusion_l1_loss(
        _ZeroUNet(), hr, hr, ac, torch.Generator().manual_seed(1), prediction_type="sample", snr_gamma=5.0
    )
    assert float(plain) == 0.0 and float(weighted) == 0.0
    unet = _ZeroUNet()
    weighted = diffusion_l1_loss(unet, hr, hr, ac, torch.Generator().manual_seed(1), snr_gamma=5.0)
    ((x, level),) = unet.seen
    per_sample = (x[:, :3] / (1 - level.view(-1, 1, 1, 1).square()).sqrt()).abs().mean(dim=(1, 2, 3))
    expected = (per_sample * min_snr_weights(level, 5.0, "epsilon")).mean()
    torch.testing.assert_close(weighted, expected, rtol=1e-4, atol=1e-6)


def test_diffusion_loss_rejects_bad_parameterisation_arguments():
    hr = torch.zeros(1, 3, 8, 8)
    ac = default_scheduler().alphas_cumprod
    with pytest.raises(ValueError, match="`prediction_type` must be one of"):
        diffusion_l1_loss(_ZeroUNet(), hr, hr, ac, prediction_type="x0")
    with pytest.raises(ValueError, match="`snr_gamma` must be a positive number"):
        diffusion_l1_loss(_ZeroUNet(), hr, hr, ac, snr_gamma=0.0)
    with pytest.raises(ValueError, match="`prediction_type` must be one of"):
        default_scheduler(prediction_type="eps")


def test_validation_scores_like_the_evaluation():
    """Same image, same outputs: the training validation and evaluate() give the same PSNR and SSIM."""
    from neurop_diff_diffusers.evaluation.run import evaluate

    sample = Path(__file__).resolve().parents[1] / "assets" / "samples" / "airplane30.png"
    image = PIL.Image.open(sample).convert("RGB")
    val = ValidationSet.from_images([image], resolution=64, scale=3.0, num_images=1)
    pipe = build_pipeline("tiny", seed=1)
    pipe.set_progress_bar_config(disable=True)
    report = evaluate(
        pipe,
        [(val.names[0], image)],
        [3.0],
        num_inference_steps=2,
        seed=5,
        resolution=64,
        compute_lpips=False,
        compute_niqe=False,
        figure_image=None,
        progress=False,
    )
    scores = {row["method"]: row for row in report["per_image"]}
    by_operator = validate_operator(pipe.neural_operator.eval(), val).metrics
    by_pipeline = validate_pipeline(pipe, val, num_inference_steps=2, seed=5).metrics
    for metric in ("psnr", "ssim"):
        assert by_operator[metric] == pytest.approx(scores["neural_operator"][metric], abs=1e-9)
        assert by_pipeline[f"{metric}_prior"] == pytest.approx(scores["neural_operator"][metric], abs=1e-9)
        assert by_operator[f"{metric}_bicubic"] == pytest.approx(scores["bicubic"][metric], abs=1e-9)
        assert by_pipeline[metric] == pytest.approx(scores["neurop_diff"][metric], abs=1e-9)
    assert scores["neurop_diff"]["psnr"] != scores["neural_operator"]["psnr"]  # the diffusion ran


def test_training_utils_re_exports_the_training_package():
    from neurop_diff_diffusers import training, training_utils

    assert set(training_utils.__all__) == set(training.__all__)
    assert training_utils.save_checkpoint is training.save_checkpoint
    assert training_utils.load_trained_model is training.load_trained_model
