#!/usr/bin/env python
"""Stage 1 of NeurOp-Diff: train the Galerkin neural operator (the SRNO recipe, docs/method.md section 3).

Each sample is an LR patch of ``--lr_patch`` px made from an HR patch of ``round(lr_patch * s)`` px with a continuous
scale ``s ~ U(--scale_min, --scale_max]`` per sample, and ``--num_queries`` HR pixels at which the operator is
evaluated; the loss is the L1 between its output there and the HR pixels. Adam, a schedule of diffusers'
``get_scheduler`` (or ``paper``). The result, ``OUTPUT_DIR/neural_operator/``, loads with
``GalerkinNeuralOperator.from_pretrained`` and is the ``--neural_operator_path`` of ``train_neurop_diff.py``.

    accelerate launch training/train_neural_operator.py --train_data_dir ../shared/data/UCMerced_LandUse \\
        --output_dir runs/operator --preset paper
    python training/train_neural_operator.py ...   # one process, no accelerate config needed
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from neurop_diff_diffusers import GalerkinNeuralOperator, build_neural_operator
from neurop_diff_diffusers.data import Stage1Dataset, collate_stage1, stage1_hr_patch_range
from neurop_diff_diffusers.runtime.model_card import make_model_card
from neurop_diff_diffusers.runtime.presets import PRESETS
from neurop_diff_diffusers.training import (
    NeuralOperatorQuery,
    TrainingSetupError,
    arguments,
    loop,
    operator_l1_loss,
    read_validation_history,
    validate_operator,
)

SCRIPT = "train_neural_operator"
OPERATOR_SUBFOLDER = "neural_operator"
logger = loop.logger

DEFAULTS = {
    "output_dir": "neural-operator-model",
    "resolution": 256,
    "train_batch_size": 64,  # the paper
    "learning_rate": 4e-4,  # SRNO's
    "lr_scheduler": "cosine",
    "max_train_steps": None,
    "num_train_epochs": 500,  # the paper
    "checkpointing_steps": 1000,
    "validation_steps": 1000,
    "max_grad_norm": 0.0,
    "scale_min": 1.0,
    "scale_max": 4.0,  # SRNO's U(1, 4]: HR patches of up to 192 px
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="Operator size.")
    model.add_argument("--lr_patch", type=int, default=48, help="Side of the LR patches (SRNO: 48).")
    model.add_argument("--num_queries", type=int, default=2304, help="HR query points per sample (SRNO: 48^2).")
    arguments.add_common_args(parser, DEFAULTS)
    args = parser.parse_args(argv)
    arguments.check_common_args(args)
    for name in ("lr_patch", "num_queries"):
        if getattr(args, name) < 1:
            raise TrainingSetupError(f"`--{name}` must be a positive integer, got {getattr(args, name)}.")
    smallest, largest = stage1_hr_patch_range(args.lr_patch, args.scale_min, args.scale_max)
    if largest > args.resolution:
        raise TrainingSetupError(
            f"`--resolution` {args.resolution} is smaller than the largest HR patch, round(--lr_patch {args.lr_patch} "
            f"x --scale_max {args.scale_max:g}) = {largest}: lower --scale_max or --lr_patch."
        )
    if args.num_queries > smallest**2:
        raise TrainingSetupError(
            f"`--num_queries` {args.num_queries} exceeds the pixels of the smallest HR patch ({smallest}^2)."
        )
    return args


def main(args: argparse.Namespace | Sequence[str] | None = None) -> Path:
    """Train the operator; returns the folder of the trained operator (``OUTPUT_DIR/neural_operator``).

    ``args``: ``parse_args()``'s Namespace or the command-line arguments (see
    [`~neurop_diff_diffusers.training.arguments.parsed`]).
    """
    args, argv = arguments.parsed(args, parse_args)
    accelerator = loop.make_accelerator(args, SCRIPT)
    output_dir = Path(args.output_dir)

    train_images, validation_images, split = loop.load_splits(args, accelerator)
    dataset = Stage1Dataset(
        train_images,
        hr_resolution=args.resolution,
        seed=args.seed,
        lr_patch=args.lr_patch,
        scale_min=args.scale_min,
        scale_max=args.scale_max,
        num_queries=args.num_queries,
        augment=not args.no_augment,
    )
    val = loop.validation_set(args, validation_images)
    train_dataloader, sampler = loop.make_train_dataloader(dataset, args, collate_stage1)

    operator = build_neural_operator(args.preset, seed=args.seed)
    if args.channels_last:
        operator.to(memory_format=torch.channels_last)
    model = NeuralOperatorQuery(operator)
    optimizer, lr_scheduler = loop.make_optimizer(
        args, model.parameters(), len(train_dataloader), accelerator.num_processes
    )

    # Checkpoints hold the operator in the diffusers layout (checkpoint-<step>/neural_operator/), loadable as is.
    def save_model_hook(models: list[torch.nn.Module], weights: list[Any], folder: str) -> None:
        for m in models:
            if accelerator.is_main_process:
                accelerator.unwrap_model(m).operator.save_pretrained(Path(folder) / OPERATOR_SUBFOLDER)
            weights.pop()

    def load_model_hook(models: list[torch.nn.Module], folder: str) -> None:
        while models:
            m = models.pop()
            loaded = GalerkinNeuralOperator.from_pretrained(Path(folder) / OPERATOR_SUBFOLDER)
            accelerator.unwrap_model(m).operator.load_state_dict(loaded.state_dict())

    loop.start_run(accelerator, args, SCRIPT, split)
    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    max_train_steps = loop.total_train_steps(args, len(train_dataloader))
    loop.init_trackers(accelerator, args, SCRIPT)
    global_step = loop.resume(accelerator, args, SCRIPT)

    def validate(step: int) -> None:
        if accelerator.is_main_process and val is not None:
            op = accelerator.unwrap_model(model).operator
            op.eval()
            result = validate_operator(op, val)
            op.train()
            loop.log_validation(accelerator, args, result, step)
        accelerator.wait_for_everyone()

    global_step = loop.train_loop(
        accelerator,
        args,
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        train_dataloader=train_dataloader,
        sampler=sampler,
        dataset=dataset,
        compute_loss=lambda batch, generator: operator_l1_loss(model, batch),
        max_train_steps=max_train_steps,
        global_step=global_step,
        validate=validate,
    )

    accelerator.wait_for_everyone()
    final_dir = output_dir / OPERATOR_SUBFOLDER
    if accelerator.is_main_process:
        operator = accelerator.unwrap_model(model).operator
        operator.eval()
        operator.save_pretrained(final_dir)
        grid_name = None
        history = read_validation_history(output_dir)
        if val is not None:
            result = validate_operator(operator, val)
            if not history or history[-1]["step"] != global_step:
                loop.log_validation(accelerator, args, result, global_step)
                history = read_validation_history(output_dir)
            grid_name = "validation_grid.png"
            result.grid.save(final_dir / grid_name)
        description, hub_datasets = loop.dataset_description(args)
        card = make_model_card(
            "neural_operator",
            training_args=vars(args),
            context={
                "model_name": args.hub_model_id or f"NeurOp-Diff neural operator ({args.preset})",
                "repo_id_or_path": args.hub_model_id or str(final_dir),
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
                "validation_description": (
                    f"Mean PSNR (dB, RGB in [0, 1]) and SSIM (8-bit RGB, 11x11 Gaussian window) on {len(val.names)} "
                    f"validation images of {args.resolution} px downscaled x{args.validation_scale:g}: the operator "
                    "alone and bicubic upsampling (`_bicubic`)."
                    if val is not None
                    else "No validation images."
                ),
                "grid_image": grid_name,
                "grid_columns": "LR | bicubic | neural operator | HR",
            },
            validation_history=history,
            datasets=hub_datasets,
        )
        card.save(final_dir / "README.md")
        logger.info(f"Saved the neural operator to {final_dir}")
        loop.maybe_push(args, final_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final_dir


if __name__ == "__main__":
    arguments.run_cli(main)
