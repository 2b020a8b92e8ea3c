"""Deterministic, stratified train / test splits that can be recorded and replayed.

The hub copies of UCMerced, AID and RSSCN7 only have a "train" split, and the paper only says that "a portion of each
dataset" is used for training. [`split_indices`] makes the split (algorithm below); it depends only on the labels,
the example keys and the arguments, so it is identical on any machine and with any library version. A split is
recorded as a list of indices or file names and replayed by passing that list as ``split`` to [`select_split`] or
[`~neurop_diff_diffusers.data.load_rs_dataset`].

Algorithm of ``split_indices(dataset, test_fraction, seed)``:

1. The key of an example is its ``file_name`` (the path relative to the dataset folder for local folders) when every
   example has a distinct one, otherwise its index in the dataset as a decimal string.
2. Within each class (``label`` value), the examples are ordered by ``sha256(f"{seed}:{key}")`` (hex digest, ties
   broken by index).
3. The first ``floor(test_fraction * n_class + 0.5)`` of each class are the test part, the rest the train part.
4. Both lists are returned sorted by index.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path, PurePosixPath
from typing import Any

import datasets

from ..file_safety import load_json_file
from ..pipelines.image_processing import round_half_up

SPLIT_NAMES = ("train", "test", "all")

SplitSpec = str | Sequence[int] | Sequence[str]


def check_test_fraction(test_fraction: float) -> float:
    """Validate `test_fraction`: a number strictly between 0 and 1.

    Args:
        test_fraction (`float`): the fraction of each class that goes to the test part.

    Example:
        >>> check_test_fraction(0.2)
        0.2
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real):
        raise TypeError(f"`test_fraction` must be a number in (0, 1), got {type(test_fraction).__name__}.")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
    return float(test_fraction)


def check_split(split: SplitSpec) -> SplitSpec:
    """Validate `split`: ``"train"``, ``"test"``, ``"all"``, or a list of indices or of file names.

    Args:
        split (`SplitSpec`): the split specification.

    Example:
        >>> check_split("test")
        'test'
    """
    if isinstance(split, str):
        if split not in SPLIT_NAMES:
            raise ValueError(f"`split` must be one of {SPLIT_NAMES} or a list of indices / file names, got {split!r}.")
        return split
    if not isinstance(split, Sequence) and not hasattr(split, "__len__"):
        raise TypeError(f"`split` must be a str or a list of indices / file names, got {type(split).__name__}.")
    items = list(split)
    all_ints = all(isinstance(i, Integral) and not isinstance(i, bool) for i in items)
    if not all_ints and not all(isinstance(i, str) for i in items):
        raise TypeError("`split` as a list must hold only ints (indices) or only strs (file names).")
    return items


def unique_file_names(dataset: datasets.Dataset) -> list[str] | None:
    """The dataset's file names if every example has a distinct, non-empty one; ``None`` otherwise.

    The one check of the project for "the file names identify the examples": splits, evaluation keys and training
    runs then record file names, otherwise indices.

    Args:
        dataset (`datasets.Dataset`): a dataset, with or without a ``file_name`` column.

    Example:
        >>> import datasets
        >>> unique_file_names(datasets.Dataset.from_dict({"file_name": ["a.png", "b.png"]}))
        ['a.png', 'b.png']
        >>> unique_file_names(datasets.Dataset.from_dict({"file_name": ["a.png", "a.png"]})) is None
        True
    """
    names = list(dataset["file_name"]) if "file_name" in dataset.column_names else []
    if names and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names):
        return names
    return None


def _example_keys(dataset: datasets.Dataset) -> list[str]:
    names = unique_file_names(dataset)
    return names if names is not None else [str(i) for i in range(len(dataset))]


def split_indices(dataset: datasets.Dataset, test_fraction: float = 0.2, seed: int = 0) -> dict[str, list[int]]:
    """Deterministic stratified split of `dataset` into ``{"train": [...], "test": [...]}`` index lists.

    The algorithm is in this module's docstring. Only the ``label`` and ``file_name`` columns are read (no image is
    decoded). The two lists are disjoint and together cover the dataset.

    Args:
        dataset (`datasets.Dataset`): a dataset with a ``label`` column (and optionally ``file_name``), e.g. from
            [`~neurop_diff_diffusers.data.load_rs_dataset`] with ``split="all"``.
        test_fraction (`float`, defaults to `0.2`): fraction of each class in the test part, in (0, 1); rounded half up
            per class.
        seed (`int`, defaults to `0`): any int; different seeds give different splits.

    Returns:
        ``{"train": sorted indices, "test": sorted indices}``.

    Example:
        >>> ds = datasets.Dataset.from_dict({"label": [0] * 5 + [1] * 5})
        >>> parts = split_indices(ds, test_fraction=0.2, seed=0)
        >>> len(parts["train"]), len(parts["test"])
        (8, 2)
    """
    test_fraction = check_test_fraction(test_fraction)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}.")
    if "label" not in dataset.column_names:
        raise ValueError(f"`dataset` needs a 'label' column, it has {dataset.column_names}.")
    keys = _example_keys(dataset)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(dataset["label"]):
        by_class.setdefault(label, []).append(index)
    train: list[int] = []
    test: list[int] = []
    for members in by_class.values():
        ordered = sorted(members, key=lambda i: (hashlib.sha256(f"{seed}:{keys[i]}".encode()).hexdigest(), i))
        n_test = round_half_up(test_fraction * len(ordered))
        test.extend(ordered[:n_test])
        train.extend(ordered[n_test:])
    return {"train": sorted(train), "test": sorted(test)}


def split_file_names(dataset: datasets.Dataset, test_fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    """The split of [`split_indices`] as lists of file names, to record next to a model or an evaluation.

    Args:
        dataset (`datasets.Dataset`): a dataset with ``label`` and ``file_name`` columns (local folders have them).
        test_fraction (`float`, defaults to `0.2`): fraction of each class in the test part, in (0, 1).
        seed (`int`, defaults to `0`): any int.

    Returns:
        ``{"train": [file names], "test": [file names]}``, in index order.

    Example:
        >>> ds = datasets.Dataset.from_dict({"label": [0, 0], "file_name": ["a/1.png", "a/2.png"]})
        >>> sorted(sum(split_file_names(ds, 0.5).values(), []))
        ['a/1.png', 'a/2.png']
    """
    if "file_name" not in dataset.column_names:
        raise ValueError("`dataset` has no 'file_name' column: record the split with `split_indices` instead.")
    names = list(dataset["file_name"])
    return {part: [names[i] for i in idx] for part, idx in split_indices(dataset, test_fraction, seed).items()}


def split_to_indices(
    dataset: datasets.Dataset, split: SplitSpec = "all", *, test_fraction: float = 0.2, seed: int = 0
) -> list[int]:
    """The indices into `dataset` that `split` selects (see [`select_split`]), e.g. to record or report them.

    Args:
        dataset (`datasets.Dataset`): the whole dataset.
        split (`SplitSpec`, defaults to `'all'`): what to select, as for [`select_split`].
        test_fraction (`float`, defaults to `0.2`): as for [`select_split`].
        seed (`int`, defaults to `0`): as for [`select_split`].

    Returns:
        The list of indices.

    Example:
        >>> ds = datasets.Dataset.from_dict({"label": [0, 1], "file_name": ["a/1.png", "b/1.png"]})
        >>> split_to_indices(ds, ["b/1.png"])
        [1]
    """
    split = check_split(split)
    if split == "all":
        return list(range(len(dataset)))
    if isinstance(split, str):
        return split_indices(dataset, test_fraction, seed)[split]
    if split and isinstance(split[0], str):
        if "file_name" not in dataset.column_names:
            raise ValueError("`split` lists file names but the dataset has no 'file_name' column: pass indices.")
        position = {name: i for i, name in enumerate(dataset["file_name"])}
        missing = [name for name in split if name not in position]
        if missing:
            raise ValueError(f"{len(missing)} file name(s) in `split` are not in the dataset, e.g. {missing[:3]}.")
        return [position[name] for name in split]
    bad = [i for i in split if not 0 <= i < len(dataset)]
    if bad:
        raise ValueError(f"`split` indices must lie in [0, {len(dataset)}), got e.g. {bad[:3]}.")
    return [int(i) for i in split]


def select_split(
    dataset: datasets.Dataset, split: SplitSpec = "all", *, test_fraction: float = 0.2, seed: int = 0
) -> datasets.Dataset:
    """Select a part of `dataset`: ``"all"``, ``"train"`` / ``"test"`` of [`split_indices`], or a recorded list.

    Args:
        dataset (`datasets.Dataset`): the whole dataset (``label`` column, optionally ``file_name``).
        split (`SplitSpec`, defaults to `'all'`): ``"all"``, ``"train"``, ``"test"``, a list of indices into `dataset`,
            or a list of file names (values of its ``file_name`` column). Lists are taken in the given order.
        test_fraction (`float`, defaults to `0.2`): fraction of each class in the test part, in (0, 1); used by
            ``"train"`` / ``"test"``.
        seed (`int`, defaults to `0`): any int; used by ``"train"`` / ``"test"``.

    Returns:
        The selected rows (a view of `dataset`, no copy); `dataset` itself for ``"all"``.

    Example:
        >>> ds = datasets.Dataset.from_dict({"label": [0, 0, 1, 1]})
        >>> len(select_split(ds, [3, 0]))
        2
    """
    if isinstance(split, str) and check_split(split) == "all":
        return dataset
    return dataset.select(split_to_indices(dataset, split, test_fraction=test_fraction, seed=seed))


_TRAILING_NUMBER = re.compile(r"(\d+)$")


def ucmerced_convention_split(
    dataset: datasets.Dataset, *, train_max: int = 27, test_max: int = 34
) -> dict[str, list[int]]:
    """This project's fixed UCMerced split by file number: ``<class>00``-``27`` train, ``<class>28``-``34`` test.

    The number is the run of digits at the end of the file name's stem (``agricultural07.tif`` -> 7). Files numbered
    above `test_max` (``35``-``99`` of the full 100-per-class release) are in neither part. The "test" part is the
    held-out validation set of training and evaluation.

    Args:
        dataset (`datasets.Dataset`): a dataset with a ``file_name`` column (a local UCMerced folder from
            [`~neurop_diff_diffusers.data.load_rs_dataset`]).
        train_max (`int`, defaults to `27`): last file number of the train part.
        test_max (`int`, defaults to `34`): last file number of the test part (must be ``>= train_max``).

    Returns:
        ``{"train": sorted indices, "test": sorted indices}``.

    Example:
        >>> ds = datasets.Dataset.from_dict({"file_name": ["a/a27.tif", "a/a28.tif", "a/a40.tif"]})
        >>> ucmerced_convention_split(ds)
        {'train': [0], 'test': [1]}
    """
    if not 0 <= train_max <= test_max:
        raise ValueError(f"Need 0 <= `train_max` <= `test_max`, got train_max={train_max}, test_max={test_max}.")
    if "file_name" not in dataset.column_names:
        raise ValueError("`dataset` has no 'file_name' column: load the UCMerced images from a local folder.")
    parts: dict[str, list[int]] = {"train": [], "test": []}
    for index, name in enumerate(dataset["file_name"]):
        match = _TRAILING_NUMBER.search(PurePosixPath(name or "").stem)
        if match is None:
            raise ValueError(f"File name {name!r} (index {index}) does not end in a number like 'agricultural07.tif'.")
        number = int(match.group(1))
        if number <= train_max:
            parts["train"].append(index)
        elif number <= test_max:
            parts["test"].append(index)
    return parts


#: How a train / test split is chosen by the scripts (training, evaluation).
SPLIT_METHODS = ("auto", "ucmerced", "fraction")


def resolve_split_method(method: str, data_dir: str | os.PathLike | None = None) -> str:
    """``"auto"`` -> ``"ucmerced"`` for a local folder whose name contains "ucmerced", else ``"fraction"``.

    Args:
        method (`str`): one of ``SPLIT_METHODS``.
        data_dir (`str | os.PathLike | None`, *optional*): the local dataset folder, if any.

    Example:
        >>> resolve_split_method("auto", "../shared/data/UCMerced_LandUse")
        'ucmerced'
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"`split_method` must be one of {SPLIT_METHODS}, got {method!r}.")
    if method != "auto":
        return method
    return "ucmerced" if data_dir is not None and "ucmerced" in Path(data_dir).name.lower() else "fraction"


def split_parts(
    dataset: datasets.Dataset,
    method: str = "auto",
    *,
    data_dir: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike | None = None,
) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """The ``train`` / ``test`` indices of `dataset` chosen the way the training and evaluation scripts do.

    A recorded ``split_file`` (JSON with ``train`` and ``test`` lists of file names or indices, e.g. the
    ``split.json`` a training run writes) wins; otherwise ``method`` (see [`resolve_split_method`]):
    ``"ucmerced"`` = [`ucmerced_convention_split`], ``"fraction"`` = [`split_indices`].

    Args:
        dataset (`datasets.Dataset`): the whole dataset.
        method (`str`, defaults to `'auto'`): one of ``SPLIT_METHODS``.
        data_dir (`str | os.PathLike | None`, *optional*): the local folder (for ``"auto"``).
        test_fraction (`float`, defaults to `0.2`): the ``"fraction"`` split's test fraction per class.
        seed (`int`, defaults to `0`): the ``"fraction"`` split's seed.
        split_file (`str | os.PathLike | None`, *optional*): a recorded split to replay.

    Returns:
        ``(parts, description)``: the index lists and a JSON-able description of how they were chosen.

    Example:
        >>> ds = datasets.Dataset.from_dict({"label": [0, 0, 1, 1, 1], "file_name": list("abcde")})
        >>> split_parts(ds, "fraction", test_fraction=0.4)[0]["test"]
        [0, 3]
    """
    if split_file is not None:
        try:  # within a size and depth budget, never through a link
            recorded = load_json_file(split_file, "`split_file`")
        except OSError as err:
            raise ValueError(f"`split_file` {os.fspath(split_file)!r}: {type(err).__name__}: {err}") from None
        if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), list) for k in ("train", "test")):
            raise ValueError(f"`split_file` {os.fspath(split_file)!r} needs 'train' and 'test' lists.")
        try:
            parts = {k: split_to_indices(dataset, recorded[k]) if recorded[k] else [] for k in ("train", "test")}
        except (ValueError, TypeError) as err:
            raise ValueError(f"`split_file` {os.fspath(split_file)!r}: {err}") from None
        return parts, {"method": "file", "split_file": os.fspath(split_file)}
    method = resolve_split_method(method, data_dir)
    if method == "ucmerced":
        return ucmerced_convention_split(dataset), {"method": "ucmerced (00-27 train, 28-34 test)"}
    parts = split_indices(dataset, test_fraction, seed)
    return parts, {"method": "fraction (stratified)", "test_fraction": test_fraction, "split_seed": seed}


def add_split_arguments(parser: Any, data_dir_flag: str = "--data_dir") -> None:
    """Add ``--split_method``, ``--test_fraction``, ``--split_seed`` and ``--split_file`` (the arguments of
    [`split_parts`]) to an argparse parser or group, with the same meaning in training and evaluation.

    Args:
        parser (`Any`): an ``argparse.ArgumentParser`` or argument group.
        data_dir_flag (`str`, defaults to `'--data_dir'`): the flag of the local folder that ``auto`` looks at.
    """
    parser.add_argument(
        "--split_method",
        default="auto",
        choices=SPLIT_METHODS,
        help="ucmerced = files <class>00-27 train, 28-34 test; fraction = a deterministic stratified split "
        f"(--test_fraction, --split_seed); auto = ucmerced for a {data_dir_flag} whose name contains 'ucmerced', "
        "else fraction. --split_file overrides all.",
    )
    parser.add_argument("--test_fraction", type=float, default=0.2, help="test fraction per class ('fraction')")
    parser.add_argument("--split_seed", type=int, default=0, help="seed of the 'fraction' split")
    parser.add_argument(
        "--split_file",
        default=None,
        help="a recorded split to replay: JSON with 'train' and 'test' lists of file names or indices (the "
        "split.json a training run writes)",
    )
