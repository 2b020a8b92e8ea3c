"""The command-line arguments common to both training scripts, their validation, and [`run_cli`]."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from accelerate.utils import is_tensorboard_available, is_wandb_available

from ..data import (
    HUB_DATASET_IDS,
    add_split_arguments,
)
from . import (
    TrainingSetupError,
)

SPLIT_FILE = "split.json"
#: Arguments that must not change when a run is resumed (a warning names those that did).
RESUME_SENSITIVE_ARGS = (
    "seed",
    "train_batch_size",
    "gradient_accumulation_steps",
    "max_train_steps",
    "num_train_epochs",
    "learning_rate",
    "lr_scheduler",
    "dataset_name",
    "train_data_dir",
    "resolution",
    "split_method",
    "test_fraction",
    "split_seed",
    "max_train_samples",
    "scale_min",
    "scale_max",
)


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Add the arguments shared by both training scripts.

    Args:
        parser (`argparse.ArgumentParser`): the script's parser.
        defaults (`dict[str, Any]`): per-script defaults for ``output_dir``, ``resolution``, ``train_batch_size``,
            ``learning_rate``, ``lr_scheduler``, ``max_train_steps``, ``num_train_epochs``, ``checkpointing_steps``,
            ``validation_steps``, ``max_grad_norm``, ``scale_min``, ``scale_max``.
    """
    _add_data_args(parser.add_argument_group("data"), defaults)
    _add_output_args(parser.add_argument_group("output"), defaults)
    train = parser.add_argument_group("training")
    _add_optimization_args(train, defaults)
    _add_precision_and_checkpoint_args(train, defaults)
    _add_validation_args(parser.add_argument_group("validation"), defaults)


def _add_data_args(data: argparse._ArgumentGroup, defaults: dict[str, Any]) -> None:
    """The data: the images, their split, the HR size, the scales and the batches."""
    data.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help=f"A dataset of the Hugging Face Hub: {', '.join(HUB_DATASET_IDS)} (the paper's) or any hub id with an "
        "image column. Exclusive with --train_data_dir.",
    )
    data.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="A local folder of images, one sub-folder per class (e.g. ../shared/data/UCMerced_LandUse), or a local "
        "copy of a hub dataset.",
    )
    data.add_argument("--cache_dir", type=str, default=None, help="datasets cache folder for hub downloads.")
    add_split_arguments(data, "--train_data_dir")
    data.add_argument(
        "--max_train_samples", type=int, default=None, help="Use only the first N training images (debugging)."
    )
    data.add_argument(
        "--resolution",
        type=int,
        default=defaults["resolution"],
        help="Side of the HR images: each image is centre-cropped to a square and downsampled to it (never "
        "upsampled).",
    )
    data.add_argument("--scale_min", type=float, default=defaults["scale_min"], help="Smallest scale (excluded).")
    data.add_argument("--scale_max", type=float, default=defaults["scale_max"], help="Largest scale (included).")
    data.add_argument(
        "--no_augment", action="store_true", help="Disable the random flips / 90-degree rotations of the samples."
    )
    data.add_argument("--train_batch_size", type=int, default=defaults["train_batch_size"], help="Per process.")
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")


def _add_output_args(out: argparse._ArgumentGroup, defaults: dict[str, Any]) -> None:
    """The output: the folder, the trackers and the Hub."""
    out.add_argument("--output_dir", type=str, default=defaults["output_dir"], help="Where everything is written.")
    out.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Start a new run in an --output_dir that holds an earlier run of this script (its checkpoints are "
        "deleted).",
    )
    out.add_argument("--logging_dir", type=str, default="logs", help="Tracker logs, relative to --output_dir.")
    out.add_argument(
        "--report_to",
        type=str,
        default="tensorboard",
        help="'tensorboard' (needs `pip install tensorboard`), 'wandb', 'all' or 'none'.",
    )
    out.add_argument("--tracker_project_name", type=str, default=None, help="Tracker project (default: the script).")
    out.add_argument("--push_to_hub", action="store_true", help="Upload the result to the Hub (token from HF_TOKEN).")
    out.add_argument("--hub_model_id", type=str, default=None, help="The Hub repository, 'user/name'.")
    out.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")


def _add_optimization_args(train: argparse._ArgumentGroup, defaults: dict[str, Any]) -> None:
    """The training's length, learning-rate schedule, optimizer and clipping."""
    train.add_argument("--seed", type=int, default=0, help="Seed of the weights, data order and all random draws.")
    train.add_argument(
        "--max_train_steps",
        type=int,
        default=defaults["max_train_steps"],
        help="Optimizer steps; overrides --num_train_epochs.",
    )
    train.add_argument("--num_train_epochs", type=int, default=defaults["num_train_epochs"])
    train.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Stop cleanly after this many minutes of training (checkpoint, EMA weights, model card), even before "
        "--max_train_steps: a run that fits a working day on a CPU or a short slot on a GPU. The LR schedule still "
        "follows --max_train_steps.",
    )
    train.add_argument("--learning_rate", type=float, default=defaults["learning_rate"])
    train.add_argument(
        "--lr_scheduler",
        type=str,
        default=defaults["lr_scheduler"],
        help="'paper' (constant for --lr_constant_fraction of the steps, then a cosine decay to --lr_min) or a "
        "diffusers schedule: linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, "
        "piecewise_constant.",
    )
    train.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps (diffusers schedules).")
    train.add_argument("--lr_constant_fraction", type=float, default=0.1, help="'paper': constant part.")
    train.add_argument("--lr_min", type=float, default=1e-6, help="'paper': final learning rate.")
    train.add_argument("--lr_step_rules", type=str, default=None, help="'piecewise_constant': diffusers' rules.")
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument("--adam_weight_decay", type=float, default=0.0)
    train.add_argument(
        "--max_grad_norm",
        type=float,
        default=defaults["max_grad_norm"],
        help="Gradient clipping (total norm); 0 disables it.",
    )


def _add_precision_and_checkpoint_args(train: argparse._ArgumentGroup, defaults: dict[str, Any]) -> None:
    """The training's precision, memory layout, accumulation and checkpoints."""
    train.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="Mixed precision (default: the accelerate config's). bf16 also pays off on CPUs with bfloat16 units "
        "(AVX512-BF16 / AMX); the README's Speed section has the measurements.",
    )
    train.add_argument(
        "--channels_last",
        action="store_true",
        help="Keep the trained model's convolution weights in channels-last memory (faster kernels, with bf16 "
        "above all).",
    )
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument(
        "--checkpointing_steps",
        type=int,
        default=defaults["checkpointing_steps"],
        help="Save the full training state every N steps to OUTPUT_DIR/checkpoint-<step> (0: never).",
    )
    train.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most N checkpoints.")
    train.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint folder, or 'latest' (the newest complete one in --output_dir; a new run if none).",
    )


def _add_validation_args(val: argparse._ArgumentGroup, defaults: dict[str, Any]) -> None:
    """How often and on what the training validates."""
    val.add_argument(
        "--validation_steps",
        type=int,
        default=defaults["validation_steps"],
        help="Validate every N steps (0: only at the end).",
    )
    val.add_argument("--num_validation_images", type=int, default=4, help="Images of the validation split used.")
    val.add_argument("--validation_scale", type=float, default=4.0, help="Scale of the validation LR images.")


def check_common_args(args: argparse.Namespace) -> None:
    """Validate the common arguments; raise [`TrainingSetupError`] naming the first bad one."""
    if (args.dataset_name is None) == (args.train_data_dir is None):
        raise TrainingSetupError("Pass exactly one of `--dataset_name` (a hub dataset) and `--train_data_dir`.")
    positive = [
        "resolution",
        "train_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
    ]
    for name in positive:
        value = getattr(args, name)
        if value is None or value < 1:
            raise TrainingSetupError(f"`--{name}` must be a positive integer, got {value}.")
    for name in ("max_train_steps", "max_train_samples", "checkpoints_total_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise TrainingSetupError(f"`--{name}` must be a positive integer, got {value}.")
    for name in ("dataloader_num_workers", "checkpointing_steps", "validation_steps", "num_validation_images"):
        if getattr(args, name) < 0:
            raise TrainingSetupError(f"`--{name}` must be >= 0, got {getattr(args, name)}.")
    if not args.learning_rate > 0:
        raise TrainingSetupError(f"`--learning_rate` must be positive, got {args.learning_rate}.")
    if args.max_train_minutes is not None and not (0 < args.max_train_minutes < math.inf):
        raise TrainingSetupError(f"`--max_train_minutes` must be a positive number, got {args.max_train_minutes}.")
    if args.max_grad_norm < 0:
        raise TrainingSetupError(f"`--max_grad_norm` must be >= 0, got {args.max_grad_norm}.")
    if not 1.0 <= args.scale_min <= args.scale_max:
        raise TrainingSetupError(
            f"Need 1 <= `--scale_min` <= `--scale_max`, got {args.scale_min} and {args.scale_max}."
        )
    if not args.validation_scale >= 1.0:
        raise TrainingSetupError(f"`--validation_scale` must be >= 1, got {args.validation_scale}.")
    if args.push_to_hub and not args.hub_model_id:
        raise TrainingSetupError("`--push_to_hub` needs `--hub_model_id` (the repository, 'user/name').")
    if args.report_to in ("tensorboard",) and not is_tensorboard_available():
        raise TrainingSetupError(
            "`--report_to tensorboard` needs TensorBoard, which is not installed: `pip install tensorboard`, or pass "
            "`--report_to none`."
        )
    if args.report_to == "wandb" and not is_wandb_available():
        raise TrainingSetupError("`--report_to wandb` needs wandb: `pip install wandb`, or pass `--report_to none`.")
    if args.report_to not in ("tensorboard", "wandb", "all", "none"):
        raise TrainingSetupError(f"`--report_to` must be tensorboard, wandb, all or none, got {args.report_to!r}.")


def parsed(
    args: argparse.Namespace | Sequence[str] | None, parse_args: Callable[[Sequence[str] | None], argparse.Namespace]
) -> tuple[argparse.Namespace, Sequence[str] | None]:
    """A script's ``main`` argument resolved: the Namespace of ``parse_args()`` as in diffusers' examples
    (``main(parse_args())``), or command-line arguments to parse (``None``: ``sys.argv[1:]``).

    Args:
        args (`argparse.Namespace` or `Sequence[str]`, *optional*): what ``main`` was given.
        parse_args (`Callable`): the script's ``parse_args``.

    Returns:
        `tuple`: the parsed arguments and the command-line arguments (``None`` when given a Namespace or nothing:
        the command is then ``sys.argv``).
    """
    if isinstance(args, argparse.Namespace):
        return args, None
    return parse_args(args), args


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> Any:
    """Run a script's ``main``; a [`TrainingSetupError`] ends the process with its one-line message (exit code 2)."""
    try:
        return main(argv)
    except TrainingSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
