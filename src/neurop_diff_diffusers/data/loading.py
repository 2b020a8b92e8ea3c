"""Loading remote-sensing scene datasets as ``datasets.Dataset`` objects with ``image`` / ``label`` / ``file_name``.

Sources: the three datasets of the paper on the Hugging Face Hub (by short name), any other hub dataset with an image
column, a local folder of images with one sub-folder per class, a local copy of a hub dataset (parquet / arrow files or
a ``save_to_disk`` folder), or a ``datasets.Dataset`` already in memory. All of them come out with the same columns:
``image`` (``datasets.Image(mode="RGB")``: decoded to RGB PIL images), ``label`` (``datasets.ClassLabel``) and
``file_name`` (a string, ``None`` where the source has none).
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import datasets
import huggingface_hub
import PIL.Image
import pyarrow.compute as pc

from .splits import SplitSpec, check_split, check_test_fraction, select_split

HUB_DATASET_IDS: dict[str, str] = {
    "ucmerced": "blanchon/UC_Merced",
    "aid": "blanchon/AID",
    "rsscn7": "jonathan-roberts1/RSSCN7",
}
"""Short names of the paper's datasets and their Hugging Face Hub ids (each has only a "train" split)."""

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".webp")
"""File extensions (case-insensitive) read from local image folders."""

HUB_PROBE_TIMEOUT = 5.0
"""Seconds allowed for the reachability check of the Hub before a download starts."""

_IMAGE_COLUMN_NAMES = ("image", "img", "images", "pixel_values")
_LABEL_COLUMN_NAMES = ("label", "labels", "class", "cls", "class_name", "category", "fine_label")
_FILE_NAME_COLUMN_NAMES = ("file_name", "filename", "file", "path", "image_path", "image_id")
_SINGLE_CLASS_NAME = "all"


class HubUnavailableError(ConnectionError):
    """The Hugging Face Hub cannot be reached (no network, firewall, or offline mode) and no usable cached copy."""


def resolve_hub_id(name: str) -> str:
    """Hub id of a dataset: the paper's short names map to [`HUB_DATASET_IDS`], anything else is returned as is.

    Args:
        name (`str`): ``"ucmerced"``, ``"aid"``, ``"rsscn7"`` (case-insensitive) or a hub id ``"owner/name"``.

    Example:
        >>> resolve_hub_id("UCMerced")
        'blanchon/UC_Merced'
    """
    return HUB_DATASET_IDS.get(name.lower(), name)


def _offline_help(repo_id: str, reason: str) -> str:
    folder = repo_id.split("/")[-1]
    return (
        f"Cannot load {repo_id!r} from the Hugging Face Hub: {reason}. To work without the Hub, use a local copy: "
        f"download it once where the Hub is reachable (`hf download {repo_id} --repo-type dataset --local-dir "
        f"{folder}`) and pass the folder, `load_rs_dataset({'./' + folder!r})`; a folder of images with one "
        "sub-folder per class works too. A copy already in the datasets cache is used when HF_HUB_OFFLINE=1 is set "
        "before Python starts."
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _probe_hub(repo_id: str, revision: str | None, timeout: float) -> str | None:
    """``None`` if the Hub answers for `repo_id`; otherwise why not. Never waits much longer than `timeout`."""
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE"):
        return "offline mode is on (HF_HUB_OFFLINE)"
    outcome: list[str | None] = []

    def probe() -> None:
        api = huggingface_hub.HfApi(endpoint=datasets.config.HF_ENDPOINT)
        try:
            api.dataset_info(repo_id, revision=revision, timeout=timeout)
            outcome.append(None)
        except huggingface_hub.errors.RepositoryNotFoundError:
            outcome.append("missing")
        except huggingface_hub.errors.HfHubHTTPError:
            outcome.append(None)  # reachable (gated, rate limited...): `load_dataset` reports the details
        except Exception as err:  # any transport error (DNS, refused, timeout...) means "unreachable"
            outcome.append(f"the Hub at {datasets.config.HF_ENDPOINT} is unreachable ({type(err).__name__})")

    thread = threading.Thread(target=probe, daemon=True, name="hub-probe")
    thread.start()
    thread.join(timeout + 1.0)  # name resolution is not covered by the HTTP timeout
    if not outcome:
        return f"the Hub at {datasets.config.HF_ENDPOINT} did not answer within {timeout:g} s"
    if outcome[0] == "missing":
        raise FileNotFoundError(f"{repo_id!r} is neither a local path nor a dataset on the Hugging Face Hub.")
    return outcome[0]


def _download_hub_dataset(
    repo_id: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None
) -> datasets.Dataset | datasets.DatasetDict:
    """Download (or read from the cache) a hub dataset; fail fast with [`HubUnavailableError`] without the Hub."""
    if not datasets.config.HF_HUB_OFFLINE:
        reason = _probe_hub(repo_id, revision, HUB_PROBE_TIMEOUT)
        if reason is not None:
            raise HubUnavailableError(_offline_help(repo_id, reason))
    try:
        return datasets.load_dataset(
            repo_id, cache_dir=None if cache_dir is None else str(cache_dir), revision=revision
        )
    except ConnectionError as err:
        raise HubUnavailableError(_offline_help(repo_id, f"{type(err).__name__}: {err}")) from err


def _pick_split(loaded: datasets.Dataset | datasets.DatasetDict, source: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if "train" in loaded:
        return loaded["train"]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise ValueError(f"{source!r} has splits {list(loaded)} and none is named 'train'; load one and pass it in.")


def _find_column(dataset: datasets.Dataset, feature_type: type, names: tuple[str, ...]) -> str | None:
    for column, feature in dataset.features.items():
        if isinstance(feature, feature_type):
            return column
    return next((name for name in names if name in dataset.column_names), None)


def _stored_image_paths(dataset: datasets.Dataset, image_column: str) -> list[str | None]:
    """The ``path`` field of an ``Image`` column, read from Arrow without decoding (None where absent)."""
    table = dataset.select_columns([image_column]).with_format("arrow")[:]
    column = table.column(image_column)
    if not hasattr(column.type, "get_field_index") or column.type.get_field_index("path") < 0:
        return [None] * len(dataset)
    return [None if p is None else Path(p).name for p in pc.struct_field(column, "path").to_pylist()]


def normalize_image_dataset(dataset: datasets.Dataset) -> datasets.Dataset:
    """Bring any image-classification dataset to the columns ``image`` (RGB), ``label`` (ClassLabel), ``file_name``.

    - ``image``: the first ``datasets.Image`` column (or one named ``image`` / ``img``...), cast to
      ``datasets.Image(mode="RGB")`` so that it decodes to RGB PIL images.
    - ``label``: the first ``ClassLabel`` column; else a column named ``label`` / ``labels`` / ``class``...
      encoded with ``class_encode_column`` (classes sorted); else a single class named ``"all"``.
    - ``file_name``: a column named ``file_name`` / ``filename`` / ``path``...; else the file name stored in the image
      column, if any; else ``None``.

    Other columns are dropped. No image is decoded.

    Args:
        dataset (`datasets.Dataset`): the source dataset.

    Returns:
        The normalised dataset.

    Example:
        >>> import PIL.Image
        >>> ds = datasets.Dataset.from_dict({"img": [PIL.Image.new("L", (8, 8))], "cls": ["forest"]})
        >>> out = normalize_image_dataset(ds)
        >>> out.column_names, out.features["label"].names, out[0]["image"].mode
        (['image', 'label', 'file_name'], ['forest'], 'RGB')
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"`dataset` must be a datasets.Dataset, got {type(dataset).__name__}.")
    image_column = _find_column(dataset, datasets.Image, _IMAGE_COLUMN_NAMES)
    if image_column is None:
        raise ValueError(f"`dataset` has no image column (a datasets.Image feature); columns: {dataset.column_names}.")
    label_column = _find_column(dataset, datasets.ClassLabel, _LABEL_COLUMN_NAMES)
    name_column = next((c for c in _FILE_NAME_COLUMN_NAMES if c in dataset.column_names and c != image_column), None)

    if name_column is not None:
        file_names = [None if n is None else str(n) for n in dataset[name_column]]
    elif isinstance(dataset.features[image_column], datasets.Image):
        file_names = _stored_image_paths(dataset, image_column)
    else:
        file_names = [None] * len(dataset)

    keep = [image_column] + ([label_column] if label_column is not None else [])
    out = dataset.select_columns(keep)
    if image_column != "image":
        out = out.rename_column(image_column, "image")
    out = out.cast_column("image", datasets.Image(mode="RGB"))
    if label_column is None:
        labels = [0] * len(out)
        out = out.add_column("label", labels, feature=datasets.ClassLabel(names=[_SINGLE_CLASS_NAME]))
    else:
        if label_column != "label":
            out = out.rename_column(label_column, "label")
        if not isinstance(out.features["label"], datasets.ClassLabel):
            out = out.class_encode_column("label")
    return out.add_column("file_name", file_names, feature=datasets.Value("string"))


def _is_readable_image(path: Path) -> bool:
    try:
        with PIL.Image.open(path) as image:
            return image.width > 0 and image.height > 0
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
        return False


def load_image_folder(path: str | os.PathLike) -> datasets.Dataset:
    """Load a folder of images, one sub-folder per class, as a dataset with ``image``, ``label``, ``file_name``.

    Files with an extension in [`IMAGE_EXTENSIONS`] are found recursively (hidden files and folders skipped) and
    sorted by their path relative to `path` (``file_name``, POSIX separators), so the order is the same on every
    machine. The class of a file is the name of the folder holding it (the folder's own name for files directly in
    `path`); classes are numbered in sorted order. Each file's header is opened once: files PIL cannot open are skipped
    with one warning that counts them. Pixels are decoded only when an example is accessed.

    Args:
        path (`str | os.PathLike`): the folder.

    Returns:
        The dataset, in ``file_name`` order.

    Example:
        >>> ds = load_image_folder("../shared/data/UCMerced_LandUse")  # doctest: +SKIP
        >>> len(ds), ds.features["label"].num_classes  # doctest: +SKIP
        (735, 21)
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"`path` must be a folder of images, got {str(path)!r}.")
    files = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )
    unreadable = [name for name, p in files if not _is_readable_image(p)]
    if unreadable:
        warnings.warn(
            f"Skipped {len(unreadable)} unreadable image file(s) under {str(root)!r}, e.g. {unreadable[:5]}.",
            stacklevel=2,
        )
        skip = set(unreadable)
        files = [(name, p) for name, p in files if name not in skip]
    if not files:
        raise ValueError(f"No readable image ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}.")
    classes = [p.parent.name if p.parent != root else root.name for _, p in files]
    class_names = sorted(set(classes))
    label_of = {name: i for i, name in enumerate(class_names)}
    features = datasets.Features(
        {
            "image": datasets.Image(mode="RGB"),
            "label": datasets.ClassLabel(names=class_names),
            "file_name": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [str(p) for _, p in files],
            "label": [label_of[c] for c in classes],
            "file_name": [name for name, _ in files],
        },
        features=features,
    )


#: Files `datasets.load_dataset` can build a dataset from (besides images): a folder without any is refused at once.
DATA_FILE_EXTENSIONS = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl", ".txt", ".tar", ".zip")


def _folder_kind(root: Path) -> str | None:
    """``"images"`` when the folder holds an image file, else ``"data"`` when it holds a data file, else ``None``
    (one walk of the tree, ended at the first image)."""
    found_data = False
    for path in root.rglob("*"):
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return "images"
        found_data = found_data or (suffix in DATA_FILE_EXTENSIONS and path.is_file())
    return "data" if found_data else None


def _load_local(root: Path, cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    if not root.exists():
        raise FileNotFoundError(f"No such folder: {str(root)!r}.")
    if not root.is_dir():
        raise NotADirectoryError(f"`name_or_path` must be a folder, got the file {str(root)!r}.")
    if (root / "state.json").is_file() or (root / "dataset_dict.json").is_file():
        return normalize_image_dataset(_pick_split(datasets.load_from_disk(str(root)), str(root)))
    kind = _folder_kind(root)
    if kind == "images":
        return load_image_folder(root)
    if kind is None:  # else `datasets` scans every sub-folder at length before its own refusal
        raise ValueError(
            f"No image ({', '.join(IMAGE_EXTENSIONS)}) or data file ({', '.join(DATA_FILE_EXTENSIONS)}) under "
            f"{str(root)!r}."
        )
    loaded = datasets.load_dataset(str(root), cache_dir=None if cache_dir is None else str(cache_dir))
    return normalize_image_dataset(_pick_split(loaded, str(root)))


def _looks_like_path(name: str) -> bool:
    explicit = name.startswith((".", "/", "~")) or name.endswith("/") or "\\" in name or name.count("/") > 1
    return explicit or Path(name).exists()


def load_full_dataset(
    name_or_path: str | os.PathLike | datasets.Dataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> datasets.Dataset:
    """The whole dataset (every example, source order) with ``image`` / ``label`` / ``file_name`` columns.

    See [`load_rs_dataset`] for the accepted sources; this is its ``split="all"`` without the split checks.

    Args:
        name_or_path (`str | os.PathLike | datasets.Dataset`): short name, hub id, local path or ``datasets.Dataset``.
        cache_dir (`str | os.PathLike | None`, *optional*): datasets cache folder for hub downloads and local parquet /
            arrow copies.
        revision (`str | None`, *optional*): hub revision (branch, tag or commit) to pin.

    Example:
        >>> load_full_dataset("rsscn7")  # doctest: +SKIP
    """
    if isinstance(name_or_path, datasets.Dataset):
        return normalize_image_dataset(name_or_path)
    if isinstance(name_or_path, os.PathLike):
        return _load_local(Path(name_or_path).expanduser(), cache_dir)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"`name_or_path` must be a non-empty str, a path or a datasets.Dataset, got {name_or_path!r}.")
    if name_or_path.lower() not in HUB_DATASET_IDS and _looks_like_path(name_or_path):
        return _load_local(Path(name_or_path).expanduser(), cache_dir)
    repo_id = resolve_hub_id(name_or_path)
    loaded = _download_hub_dataset(repo_id, cache_dir=cache_dir, revision=revision)
    return normalize_image_dataset(_pick_split(loaded, repo_id))


def load_rs_dataset(
    name_or_path: str | os.PathLike | datasets.Dataset,
    split: SplitSpec = "train",
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> datasets.Dataset:
    """Load a remote-sensing scene dataset with columns ``image`` (RGB PIL), ``label`` (ClassLabel), ``file_name``.

    `name_or_path` is one of:

    - ``"ucmerced"``, ``"aid"``, ``"rsscn7"``: the paper's datasets on the Hub, ``blanchon/UC_Merced`` (2,100 images,
      21 classes), ``blanchon/AID`` (10,000 at 600 x 600, 30 classes), ``jonathan-roberts1/RSSCN7`` (2,800 at
      400 x 400, 7 classes); these names always mean the Hub (write ``"./aid"`` for a local folder so named);
    - any other hub dataset id with an image column (its "train" split, or its only split);
    - a local folder: images in one sub-folder per class (TIFF, PNG, JPEG...; see [`load_image_folder`]), or a
      local copy of a hub dataset (parquet / arrow files, or a ``save_to_disk`` folder);
    - a ``datasets.Dataset`` (columns normalised by [`normalize_image_dataset`]).

    Without the Hub (no network, firewall, ``HF_HUB_OFFLINE=1``) a hub name fails within about
    [`HUB_PROBE_TIMEOUT`] seconds with a [`HubUnavailableError`] that explains how to use a local copy.

    Splits: the hub datasets only have "train", so ``"train"`` / ``"test"`` are made here by
    [`~neurop_diff_diffusers.data.splits.split_indices`]: stratified by class, deterministic for given
    (`test_fraction`, `seed`) and data, identical on any machine. ``"all"`` is the whole dataset. A recorded split
    (list of indices into the whole dataset, or of ``file_name`` values) can be passed back as `split`.

    Args:
        name_or_path (`str | os.PathLike | datasets.Dataset`): short name, hub id, local folder or ``datasets.Dataset``
            (see above).
        split (`SplitSpec`, defaults to `'train'`): ``"train"``, ``"test"``, ``"all"``, or a list of indices / file
            names.
        test_fraction (`float`, defaults to `0.2`): fraction of each class in ``"test"``, in (0, 1).
        seed (`int`, defaults to `0`): any int; selects the split.
        cache_dir (`str | os.PathLike | None`, *optional*): datasets cache folder for hub downloads and local parquet /
            arrow copies.
        revision (`str | None`, *optional*): hub revision (branch, tag or commit) to pin, for a split that must stay
            reproducible.

    Returns:
        A ``datasets.Dataset``; images decode lazily, tensors for the models come from
        [`~neurop_diff_diffusers.data.pil_to_tensor`] (``[-1, 1]``).

    Example:
        >>> train = load_rs_dataset("../shared/data/UCMerced_LandUse", "train", seed=0)  # doctest: +SKIP
        >>> train[0]["image"].size, train.features["label"].num_classes  # doctest: +SKIP
        ((256, 256), 21)
    """
    split = check_split(split)
    test_fraction = check_test_fraction(test_fraction)
    dataset = load_full_dataset(name_or_path, cache_dir=cache_dir, revision=revision)
    return select_split(dataset, split, test_fraction=test_fraction, seed=seed)
