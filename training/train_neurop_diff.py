#!/usr/bin/env python
"""Stage 2 of NeurOp-Diff: train the SR3-style diffusion UNet conditioned on the frozen neural operator's prior.

Loss (docs/method.md section 2): per sample a continuous noise level ``sqrt(gamma)``, ``y_noisy = sqrt(gamma) y0 +
sqrt(1 - gamma) eps``, the UNet sees ``cat(y_noisy, prior)`` and ``sqrt(gamma)`` and the loss is the L1 between its
output and ``eps``; the prior of each sample is computed by the frozen operator at the HR size from the sample's LR
image (bicubic, scale ``s ~ U(1, 8]``). Adam 1e-4, the paper's schedule (constant for 10% of the steps, then decay to
1e-6), EMA 0.999, gradient clipping. The output folder is a complete pipeline (EMA weights) that loads with
``DiffusionPipeline.from_pretrained`` after ``import neurop_diff_diffusers``, with a model card.

    accelerate launch training/train_neurop_diff.py --train_data_dir ../shared/data/UCMerced_LandUse \\
        --neural_operator_path runs/operator --output_dir runs/neurop-diff --preset paper
    python training/train_neurop_diff.py ...   # one process, no accelerate config needed
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from neurop_diff_diffusers import NeurOpDiffPipeline, build_unet, default_scheduler
from neurop_diff_diffusers.data import Stage2Dataset, collate_stage2
from neurop_diff_diffusers.pipelines.pipeline_neurop_diff import unet_downsampling_factor
from neurop_diff_diffusers.pipelines.scheduling import PAPER_SCHEDULER_CONFIG, PREDICTION_TYPES
from neurop_diff_diffusers.runtime.loading import load_frozen_operator, load_trained_model
from neurop_diff_diffusers.runtime.model_card import make_model_card
from neurop_diff_diffusers.runtime.presets import PRESETS
from neurop_diff_diffusers.training import (
    TrainingSetupError,
    arguments,
    compute_priors,
    diffusion_l1_loss,
    loop,
    read_validation_history,
    validate_pipeline,
)

SCRIPT = "train_neurop_diff"
UNET_SUBFOLDER, EMA_SUBFOLDER = "unet", "unet_ema"
#: EMAModel's state besides its weights (what its ``save_pretrained`` writes into the config).
EMA_STATE_KEYS = (
    "decay",
    "min_decay",
    "optimization_step",
    "update_after_step",
    "use_ema_warmup",
    "inv_gamma",
    "power",
)
logger = loop.logger

DEFAULTS = {
    "output_dir": "neurop-diff-model",
    "resolution": 256,
    "train_batch_size": 10,  # the paper
    "learning_rate": 1e-4,  # the paper
    "lr_scheduler": "paper",
    "max_train_steps": 1_000_000,  # the paper: about 1 M iterations
    "num_train_epochs": 1,  # unused while --max_train_steps is set
    "checkpointing_steps": 5000,
    "validation_steps": 5000,
    "max_grad_norm": 1.0,
    "scale_min": 1.0,
    "scale_max": 8.0,  # the paper's s ~ U(1, 8]
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model")
    model.add_argument(
        "--neural_operator_path",
        type=str,
        required=True,
        help="The trained operator: the output folder of train_neural_operator.py (or its neural_operator/ "
        "subfolder, or a checkpoint), or a Hub model id. It is frozen.",
    )
    model.add_argument("--neural_operator_subfolder", type=str, default=None, help="Subfolder inside that path.")
    model.add_argument(
        "--preset", choices=sorted(PRESETS), default="paper", help="UNet size (paper: docs/method.md section 4)."
    )
    model.add_argument(
        "--unet_config", type=str, default=None, help="A UNet2DModel config.json instead of --preset (6 in, 3 out)."
    )
    model.add_argument(
        "--pretrained_unet",
        type=str,
        default=None,
        help="Fine-tune: start from this trained UNet instead of a fresh --preset / --unet_config one: a saved "
        "pipeline folder (its unet/), a UNet folder, or a Hub model id.",
    )
    model.add_argument(
        "--max_noise_step",
        type=int,
        default=None,
        help="Train only on noise steps t <= N of the T = 2000 (default: all, the method). Not in the paper: for "
        "fine-tuning the noise levels that a sampling strength below 1 uses (strength s runs t <= s * T).",
    )
    model.add_argument(
        "--prediction_type",
        choices=list(PREDICTION_TYPES),
        default="epsilon",
        help="What the UNet predicts (saved in the pipeline's scheduler config): epsilon (the paper), v_prediction or "
        "sample. Not in the paper: with T = 2000 every epsilon x0 estimate divides the UNet's error by "
        "sqrt(alpha_bar_T) = 0.0067, which a small model cannot afford; v_prediction stays bounded at every level.",
    )
    model.add_argument(
        "--residual_diffusion",
        action="store_true",
        help="Diffuse HR - prior instead of HR; the pipeline adds the prior back (saved in model_index.json). Not in "
        "the paper: the stage then learns only the detail the prior misses.",
    )
    model.add_argument(
        "--zero_init_output",
        action="store_true",
        help="Zero the UNet's output convolution before training (not in the paper). With --residual_diffusion the "
        "untrained stage then estimates a zero residual, i.e. the prior: exactly with sample, at high noise levels "
        "with v_prediction; training starts from the prior instead of from noise.",
    )
    model.add_argument(
        "--snr_gamma",
        type=float,
        default=None,
        help="Min-SNR-gamma loss weighting (5.0 is the usual value; default: none, the paper). Not in the paper.",
    )
    model.add_argument(
        "--default_strength",
        type=float,
        default=1.0,
        help="The sampling strength saved in the pipeline and used when a call gives none (1.0: the paper's sampler "
        "from pure noise).",
    )
    model.add_argument(
        "--crop_size",
        type=int,
        default=None,
        help="Side of the random HR crops the UNet is trained on (default: --resolution, the whole image).",
    )
    model.add_argument(
        "--use_ema", action=argparse.BooleanOptionalAction, default=True, help="Keep an EMA of the weights."
    )
    model.add_argument("--ema_decay", type=float, default=0.999, help="EMA decay (the paper: 0.999).")
    model.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for UNet memory.")
    model.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")
    model.add_argument(
        "--prior_chunk_size", type=int, default=None, help="Output pixels per chunk of the operator (memory)."
    )
    arguments.add_common_args(parser, DEFAULTS)
    parser.add_argument(
        "--validation_inference_steps", type=int, default=50, help="DDIM steps of the validation samples."
    )
    args = parser.parse_args(argv)
    arguments.check_common_args(args)
    if args.crop_size is None:
        args.crop_size = args.resolution
    if not 1 <= args.crop_size <= args.resolution:
        raise TrainingSetupError(f"`--crop_size` must be in [1, --resolution], got {args.crop_size}.")
    if args.pretrained_unet is not None and args.unet_config is not None:
        raise TrainingSetupError("`--pretrained_unet` and `--unet_config` are exclusive: the first brings its config.")
    num_steps = PAPER_SCHEDULER_CONFIG["num_train_timesteps"]
    if args.max_noise_step is not None and not 1 <= args.max_noise_step <= num_steps:
        raise TrainingSetupError(f"`--max_noise_step` must be in [1, {num_steps}], got {args.max_noise_step}.")
    if args.snr_gamma is not None and not 0.0 < args.snr_gamma < float("inf"):
        raise TrainingSetupError(f"`--snr_gamma` must be a positive number, got {args.snr_gamma}.")
    if not 0.0 < args.default_strength <= 1.0:
        raise TrainingSetupError(f"`--default_strength` must be in (0, 1], got {args.default_strength}.")
    if not 0.0 < args.ema_decay < 1.0:
        raise TrainingSetupError(f"`--ema_decay` must be in (0, 1), got {args.ema_decay}.")
    if args.validation_inference_steps < 1:
        raise TrainingSetupError(
            f"`--validation_inference_steps` must be a positive integer, got {args.validation_inference_steps}."
        )
    return args


def build_denoiser(args: argparse.Namespace) -> UNet2DModel:
    """The UNet of ``--pretrained_unet``, or a fresh one of ``--unet_config`` or ``--preset`` initialised from
    ``--seed``; checks its channels and that ``--crop_size`` is a multiple of its downsampling factor."""
    if args.pretrained_unet is not None:
        unet = load_trained_model(
            UNet2DModel,
            args.pretrained_unet,
            argument="--pretrained_unet",
            default_subfolder="unet",
            hint="pass a trained pipeline folder or a UNet folder",
            hub_subfolder="unet",
        )
        unet.train()
    elif args.unet_config is None:
        unet = build_unet(args.preset, seed=args.seed)
    else:
        try:
            config = UNet2DModel.load_config(args.unet_config)
        except Exception as err:
            raise TrainingSetupError(f"`--unet_config` {args.unet_config!r}: {type(err).__name__}: {err}") from None
        with torch.random.fork_rng():
            torch.manual_seed(args.seed + 1)
            unet = UNet2DModel.from_config(config)
    if unet.config.in_channels != 2 * unet.config.out_channels or unet.config.out_channels != 3:
        source = "--pretrained_unet" if args.pretrained_unet else "--unet_config"
        raise TrainingSetupError(
            f"`{source}` must have in_channels 6 (noisy image + prior) and out_channels 3, got "
            f"{unet.config.in_channels} and {unet.config.out_channels}."
        )
    factor = unet_downsampling_factor(unet)
    if args.crop_size % factor:
        raise TrainingSetupError(
            f"`--crop_size` (default: --resolution) must be a multiple of the UNet's downsampling factor {factor}, "
            f"got {args.crop_size}."
        )
    return unet


def main(args: argparse.Namespace | Sequence[str] | None = None) -> Path:
    """Train the diffusion model; returns the output folder (a saved ``NeurOpDiffPipeline``).

    ``args``: ``parse_args()``'s Namespace or the command-line arguments (see
    [`~neurop_diff_diffusers.training.arguments.parsed`]).
    """
    args, argv = arguments.parsed(args, parse_args)
    accelerator = loop.make_accelerator(args, SCRIPT)
    output_dir = Path(args.output_dir)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True

    operator = load_frozen_operator(args.neural_operator_path, args.neural_operator_subfolder, accelerator.device)
    unet = build_denoiser(args)
    if args.zero_init_output and args.resume_from_checkpoint is None:
        torch.nn.init.zeros_(unet.conv_out.weight)
        torch.nn.init.zeros_(unet.conv_out.bias)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    noise_scheduler = default_scheduler("ddim", prediction_type=args.prediction_type)
    alphas_cumprod = noise_scheduler.alphas_cumprod.clone()
    ema = None
    if args.use_ema:
        ema = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=UNet2DModel, model_config=unet.config)
        ema.to(accelerator.device)

    train_images, validation_images, split = loop.load_splits(args, accelerator)
    dataset = Stage2Dataset(
        train_images,
        hr_resolution=args.resolution,
        seed=args.seed,
        resolution=args.crop_size,
        scale_min=args.scale_min,
        scale_max=args.scale_max,
        augment=not args.no_augment,
    )
    val = loop.validation_set(args, validation_images)
    train_dataloader, sampler = loop.make_train_dataloader(dataset, args, collate_stage2)

    optimizer, lr_scheduler = loop.make_optimizer(
        args, unet.parameters(), len(train_dataloader), accelerator.num_processes
    )

    # Checkpoints hold the UNet and its EMA in the diffusers layout (checkpoint-<step>/unet, unet_ema).
    def save_model_hook(models: list[torch.nn.Module], weights: list[Any], folder: str) -> None:
        if accelerator.is_main_process and ema is not None:
            ema.save_pretrained(Path(folder) / EMA_SUBFOLDER)
        for m in models:
            if accelerator.is_main_process:
                accelerator.unwrap_model(m).save_pretrained(Path(folder) / UNET_SUBFOLDER)
            weights.pop()

    def load_model_hook(models: list[torch.nn.Module], folder: str) -> None:
        if ema is not None:
            # EMAModel.save_pretrained wrote the shadow weights as a UNet, its own state in the config.
            ema_folder = Path(folder) / EMA_SUBFOLDER
            config = UNet2DModel.load_config(ema_folder)
            shadow = UNet2DModel.from_pretrained(ema_folder)
            state = {k: config[k] for k in EMA_STATE_KEYS if k in config}
            ema.load_state_dict({**state, "shadow_params": [p.detach() for p in shadow.parameters()]})
            ema.to(accelerator.device)
            del shadow
        while models:
            m = models.pop()
            loaded = UNet2DModel.from_pretrained(Path(folder), subfolder=UNET_SUBFOLDER)
            accelerator.unwrap_model(m).load_state_dict(loaded.state_dict())
            del loaded

    loop.start_run(accelerator, args, SCRIPT, split)
    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        unet, optimizer, train_dataloader, lr_scheduler
    )
    max_train_steps = loop.total_train_steps(args, len(train_dataloader))
    loop.init_trackers(accelerator, args, SCRIPT)
    global_step = loop.resume(accelerator, args, SCRIPT)

    def compute_loss(batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        hr = batch["hr"]
        prior = compute_priors(operator, batch["lr"], tuple(hr.shape[-2:]), args.prior_chunk_size)
        return diffusion_l1_loss(
            unet,
            hr,
            prior.to(hr.dtype),
            alphas_cumprod,
            generator,
            args.max_noise_step,
            prediction_type=args.prediction_type,
            residual=args.residual_diffusion,
            snr_gamma=args.snr_gamma,
        )

    def make_pipeline() -> NeurOpDiffPipeline:
        pipeline = NeurOpDiffPipeline(
            unet=accelerator.unwrap_model(unet),
            neural_operator=operator,
            scheduler=DDIMScheduler.from_config(noise_scheduler.config),
            default_strength=args.default_strength,
            residual=args.residual_diffusion,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def run_validation() -> Any:
        model = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
        model.eval()
        try:
            return validate_pipeline(
                make_pipeline(), val, num_inference_steps=args.validation_inference_steps, seed=args.seed
            )
        finally:
            model.train()
            if ema is not None:
                ema.restore(model.parameters())

    def validate(step: int) -> None:
        if accelerator.is_main_process and val is not None:
            loop.log_validation(accelerator, args, run_validation(), step)
        accelerator.wait_for_everyone()

    global_step = loop.train_loop(
        accelerator,
        args,
        model=unet,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        train_dataloader=train_dataloader,
        sampler=sampler,
        dataset=dataset,
        compute_loss=compute_loss,
        max_train_steps=max_train_steps,
        global_step=global_step,
        after_optimizer_step=(lambda: ema.step(unet.parameters())) if ema is not None else None,
        validate=validate,
    )

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        history = read_validation_history(output_dir)
        grid_name = None
        if val is not None:
            result = run_validation()
            if not history or history[-1]["step"] != global_step:
                loop.log_validation(accelerator, args, result, global_step)
                history = read_validation_history(output_dir)
            grid_name = "validation_grid.png"
            result.grid.save(output_dir / grid_name)
        final_unet = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.copy_to(final_unet.parameters())
        final_unet.eval()
        make_pipeline().save_pretrained(output_dir)
        description, hub_datasets = loop.dataset_description(args)
        operator_source = str(args.neural_operator_path)
        is_hub_operator = not Path(operator_source).expanduser().exists()
        card = make_model_card(
            "pipeline",
            training_args=vars(args),
            context={
                "model_name": args.hub_model_id or f"NeurOp-Diff ({args.unet_config or args.preset})",
                "repo_id_or_path": args.hub_model_id or str(output_dir),
                "global_step": global_step,
                "num_processes": accelerator.num_processes,
                "total_batch_size": args.train_batch_size
                * accelerator.num_processes
                * args.gradient_accumulation_steps,
                "num_train_images": len(split["train"]),
                "num_validation_images_total": len(split["test"]),
                "dataset_description": description,
                "command": loop.command_line(__file__, argv),
                "mixed_precision": accelerator.mixed_precision,
                "unet_weights": f"EMA of the weights, decay {args.ema_decay}" if ema is not None else "raw weights",
                "validation_description": (
                    f"Mean PSNR (dB, RGB in [0, 1]) and SSIM (8-bit RGB, 11x11 Gaussian window) on {len(val.names)} "
                    f"validation images of {args.resolution} px downscaled x{args.validation_scale:g}, DDIM with "
                    f"{args.validation_inference_steps} steps{' and the EMA weights' if ema is not None else ''}: "
                    "the output, the neural-operator prior alone (`_prior`) and bicubic upsampling (`_bicubic`)."
                    if val is not None
                    else "No validation images."
                ),
                "grid_image": grid_name,
                "grid_columns": "LR | bicubic | prior | output | HR",
            },
            validation_history=history,
            datasets=hub_datasets,
            base_model=operator_source if is_hub_operator else None,
        )
        card.save(output_dir / "README.md")
        logger.info(f"Saved the pipeline to {output_dir}")
        loop.maybe_push(args, output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


if __name__ == "__main__":
    arguments.run_cli(main)
