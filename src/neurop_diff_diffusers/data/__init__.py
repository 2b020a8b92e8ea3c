"""Data for NeurOp-Diff: loading remote-sensing datasets, deterministic splits, HR preparation, bicubic degradation
and the training samples of both stages. Model tensors are float, channel-first, in ``[-1, 1]``.
"""

from .degradation import bicubic_degrade, degraded_size, from_uint8_levels, to_uint8_levels
from .loading import (
    HUB_DATASET_IDS,
    IMAGE_EXTENSIONS,
    HubUnavailableError,
    load_full_dataset,
    load_image_folder,
    load_rs_dataset,
    normalize_image_dataset,
    resolve_hub_id,
)
from .preprocessing import center_crop, mirror_pad, pil_to_tensor, preprocess_hr, tensor_to_pil
from .samples import (
    STAGE1_SCALE_RANGE,
    STAGE2_SCALE_RANGE,
    Stage1Dataset,
    Stage2Dataset,
    collate_stage1,
    collate_stage2,
    make_stage1_sample,
    make_stage2_sample,
    random_crop,
    random_dihedral,
    sample_generator,
    sample_scale,
)
from .splits import select_split, split_file_names, split_indices, split_to_indices, ucmerced_convention_split

__all__ = [
    "HUB_DATASET_IDS",
    "IMAGE_EXTENSIONS",
    "STAGE1_SCALE_RANGE",
    "STAGE2_SCALE_RANGE",
    "HubUnavailableError",
    "Stage1Dataset",
    "Stage2Dataset",
    "bicubic_degrade",
    "center_crop",
    "collate_stage1",
    "collate_stage2",
    "degraded_size",
    "from_uint8_levels",
    "load_full_dataset",
    "load_image_folder",
    "load_rs_dataset",
    "make_stage1_sample",
    "make_stage2_sample",
    "mirror_pad",
    "normalize_image_dataset",
    "pil_to_tensor",
    "preprocess_hr",
    "random_crop",
    "random_dihedral",
    "resolve_hub_id",
    "sample_generator",
    "sample_scale",
    "select_split",
    "split_file_names",
    "split_indices",
    "split_to_indices",
    "tensor_to_pil",
    "to_uint8_levels",
    "ucmerced_convention_split",
]
