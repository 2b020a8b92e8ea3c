"""Training building blocks of the two scripts in ``training/`` (``train_neural_operator.py``, ``train_neurop_diff``).

- [`~training.losses`]: [`operator_l1_loss`] (stage 1), [`diffusion_l1_loss`] (stage 2, docs/method.md section 2),
  [`min_snr_weights`], [`compute_priors`].
- [`~training.schedules`]: [`get_lr_scheduler`], the paper's schedule or any of diffusers' ``get_scheduler``.
- [`~training.data`]: [`EpochShuffleSampler`], [`resume_position`] (exact resume), [`drop_unreadable_images`].
- [`~training.checkpointing`]: the output folder's protocol: [`save_checkpoint`], [`resolve_resume_checkpoint`],
  [`check_output_dir`], the run's arguments and the validation history.
- [`~training.validation`]: [`ValidationSet`], [`validate_operator`], [`validate_pipeline`], scored with the
  evaluation's metric code.
- The scripts' shared run: [`~training.arguments`] (common flags, [`run_cli`]) and [`~training.loop`] (Accelerate,
  splits, the resumable loop, validation logging, the Hub upload); they import Accelerate, so they are not imported
  here.

Randomness comes from [`~neurop_diff_diffusers.utils.derive_seed`]; trained models load through
[`~neurop_diff_diffusers.runtime.loading`]; the Hub upload is
[`~neurop_diff_diffusers.pipelines.hub.push_folder_to_hub`].
"""

from ..pipelines.hub import HUB_IGNORE_PATTERNS, push_folder_to_hub
from ..runtime.loading import load_frozen_operator, load_trained_model
from ..utils import TrainingSetupError, derive_seed, seeded_generator
from .checkpointing import (
    CHECKPOINT_PREFIX,
    TRAINING_ARGS_FILE,
    VALIDATION_HISTORY_FILE,
    append_validation_history,
    changed_args,
    check_output_dir,
    checkpoint_step,
    list_checkpoints,
    prune_checkpoints,
    read_training_args,
    read_validation_history,
    remove_incomplete_checkpoints,
    resolve_resume_checkpoint,
    save_checkpoint,
    truncate_validation_history,
    write_training_args,
)
from .data import (
    EpochShuffleSampler,
    drop_unreadable_images,
    resume_position,
)
from .losses import (
    NeuralOperatorQuery,
    compute_priors,
    diffusion_l1_loss,
    min_snr_weights,
    operator_l1_loss,
)
from .schedules import (
    LR_SCHEDULERS,
    get_lr_scheduler,
    paper_lr_lambda,
)
from .validation import (
    ValidationResult,
    ValidationSet,
    validate_operator,
    validate_pipeline,
)

__all__ = [
    "CHECKPOINT_PREFIX",
    "EpochShuffleSampler",
    "HUB_IGNORE_PATTERNS",
    "LR_SCHEDULERS",
    "NeuralOperatorQuery",
    "TRAINING_ARGS_FILE",
    "TrainingSetupError",
    "VALIDATION_HISTORY_FILE",
    "ValidationResult",
    "ValidationSet",
    "append_validation_history",
    "changed_args",
    "check_output_dir",
    "checkpoint_step",
    "compute_priors",
    "derive_seed",
    "diffusion_l1_loss",
    "drop_unreadable_images",
    "get_lr_scheduler",
    "list_checkpoints",
    "load_frozen_operator",
    "load_trained_model",
    "min_snr_weights",
    "operator_l1_loss",
    "paper_lr_lambda",
    "prune_checkpoints",
    "push_folder_to_hub",
    "read_training_args",
    "read_validation_history",
    "remove_incomplete_checkpoints",
    "resolve_resume_checkpoint",
    "resume_position",
    "save_checkpoint",
    "seeded_generator",
    "truncate_validation_history",
    "validate_operator",
    "validate_pipeline",
    "write_training_args",
]
