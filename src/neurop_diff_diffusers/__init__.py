"""NeurOp-Diff for diffusers: continuous super-resolution of remote-sensing images.

The public names below are imported on first use (PEP 562), so that ``import neurop_diff_diffusers`` and the
``neurop-diff`` command start in well under a second; torch and diffusers load when a model is first touched.

``DiffusionPipeline.from_pretrained`` looks the class named in ``model_index.json`` up in the ``diffusers`` namespace,
so once this package is imported ``NeurOpDiffPipeline`` and ``GalerkinNeuralOperator`` are made findable there (on
first look-up, see [`_register_with_diffusers`]), whether ``diffusers`` is imported before or after this package.

Example:
    >>> import neurop_diff_diffusers
    >>> from diffusers import DiffusionPipeline
    >>> hasattr(__import__("diffusers"), "NeurOpDiffPipeline")
    True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

#: public name -> the submodule that defines it.
_EXPORTS = {
    "make_cell": "models.coordinates",
    "make_coord": "models.coordinates",
    "DEFAULT_MODEL_PATH": "runtime.loading",
    "has_default_model": "runtime.loading",
    "load_default_pipeline": "runtime.loading",
    "load_pipeline": "runtime.loading",
    "check_pipeline_folder": "runtime.loading",
    "make_hub_ready": "pipelines.hub",
    "overlay": "io.heatmap",
    "uncertainty_heatmap": "io.heatmap",
    "uncertainty_scale": "io.heatmap",
    "NonFiniteOutputError": "pipelines.image_processing",
    "check_scale": "pipelines.image_processing",
    "postprocess_images": "pipelines.image_processing",
    "preprocess_images": "pipelines.image_processing",
    "resolve_output_size": "pipelines.image_processing",
    "round_half_up": "pipelines.image_processing",
    "DEFAULT_CHUNK_SIZE": "models",
    "GalerkinNeuralOperator": "models",
    "GalerkinNeuralOperatorOutput": "models",
    "DTYPES": "runtime.optimization",
    "optimize_pipeline": "runtime.optimization",
    "parse_dtype": "runtime.optimization",
    "parse_setting": "runtime.optimization",
    "resolve_dtype": "runtime.optimization",
    "auto_dtype": "runtime.hardware",
    "DEFAULT_MAX_OUTPUT_PIXELS": "pipelines",
    "NeurOpDiffPipeline": "pipelines",
    "NeurOpDiffPipelineOutput": "pipelines",
    "bicubic_prior": "pipelines",
    "pool_uncertainty": "pipelines.uncertainty",
    "back_project": "pipelines.data_consistency",
    "uncertainty_path": "io.paths",
    "DEFAULT_TILE_OVERLAP": "pipelines.tiling",
    "DEFAULT_TILE_SIZE": "pipelines.tiling",
    "PRESETS": "runtime.presets",
    "build_neural_operator": "runtime.presets",
    "build_pipeline": "runtime.presets",
    "build_unet": "runtime.presets",
    "SceneOptions": "jobs.scene",
    "upscale_scene": "jobs.scene",
    "SCHEDULERS": "pipelines.scheduling",
    "default_scheduler": "pipelines.scheduling",
    "make_scheduler": "pipelines.scheduling",
    "noise_level": "pipelines.scheduling",
    "sample_continuous_noise_level": "pipelines.scheduling",
}

#: Module paths of releases before the package was split into layers -> their home now. Importing an old path
#: gives the new module itself (so a monkeypatch through either name patches the same object) and warns once.
_MOVED_MODULES: dict[str, str | tuple[str, ...]] = {
    "batch": "jobs.batch",
    "coordinates": "models.coordinates",
    "data_consistency": "pipelines.data_consistency",
    "default_model": "runtime.loading",
    "detail_metrics": "metrics.detail",
    "evaluation_cli": "cli.evaluate",
    "evaluation_methods": "evaluation.methods",
    "evaluation_report": "evaluation.report",
    "geo": ("io.geo", "jobs.scene"),  # the GeoTIFF entry point upscale_geotiff went to the scene job
    "hardware": "runtime.hardware",
    "heatmap": "io.heatmap",
    "hub": "pipelines.hub",
    "image_files": "io.image_files",
    "image_processing": "pipelines.image_processing",
    "loading": "runtime.loading",
    "model_card": "runtime.model_card",
    "optimization": "runtime.optimization",
    "presets": "runtime.presets",
    "raster_io": "io.rasters",
    "scene": "jobs.scene",
    "scheduling": "pipelines.scheduling",
    "training_utils": "training",
    "trust_metrics": "metrics.trust",
    "upscale_job": "jobs.upscale_file",
}

#: the classes that ``diffusers`` must find by name.
_DIFFUSERS_CLASSES = ("NeurOpDiffPipeline", "GalerkinNeuralOperator")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _register_with_diffusers(diffusers: ModuleType) -> None:
    """Make ``diffusers.NeurOpDiffPipeline`` and ``diffusers.GalerkinNeuralOperator`` resolve to our classes.

    The look-up is lazy: the module's class gets a ``__getattr__`` (asked only for names it lacks) that imports our
    class on first use, so registering imports nothing and cannot be caught in a circular import.
    """
    base = type(diffusers)
    if getattr(base, "_neurop_diff_registered", False):
        return

    class _DiffusersWithNeurOpDiff(base):
        _neurop_diff_registered = True

        def __getattr__(self, name: str) -> Any:
            if name in _DIFFUSERS_CLASSES:
                value = getattr(sys.modules[__name__], name)
                setattr(self, name, value)
                return value
            parent = getattr(base, "__getattr__", None)
            if parent is None:
                raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
            return parent(self, name)

    diffusers.__class__ = _DiffusersWithNeurOpDiff


class _RegisterAfterDiffusersImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: lets ``diffusers`` import as usual, then registers our classes in it (used once, then removed)."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname != "diffusers":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # whichever finder would have found it
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):  # noqa: D102
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: D102
        self._loader.exec_module(module)
        _register_with_diffusers(sys.modules[module.__name__])  # diffusers replaces itself with a lazy module


class _MovedModuleAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: ``neurop_diff_diffusers.<old path>`` imports the module's new home and warns (see
    `_MOVED_MODULES`).

    Example:
        >>> import sys, warnings
        >>> _ = sys.modules.pop("neurop_diff_diffusers.scene", None)  # imported before: no second warning
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     from neurop_diff_diffusers.scene import upscale_scene
        >>> upscale_scene.__module__, caught[0].category.__name__
        ('neurop_diff_diffusers.jobs.scene.engine', 'DeprecationWarning')
    """

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in _MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):  # noqa: D102
        homes = _MOVED_MODULES[spec.name.rpartition(".")[2]]
        homes = (homes,) if isinstance(homes, str) else homes
        new_names = [f"{__name__}.{home}" for home in homes]
        warnings.warn(
            f"{spec.name} moved to {' and '.join(new_names)}; the old path is kept for one release",
            DeprecationWarning,
            stacklevel=2,
        )
        modules = [importlib.import_module(name) for name in new_names]
        if len(modules) == 1:
            return modules[0]
        merged = ModuleType(spec.name, f"Deprecated: the names of {' and '.join(new_names)}.")

        def find(name: str) -> Any:
            for module in modules:
                if hasattr(module, name):
                    return getattr(module, name)
            raise AttributeError(f"module {spec.name!r} has no attribute {name!r}")

        merged.__getattr__ = find
        return merged

    def exec_module(self, module) -> None:  # noqa: D102
        # The module is already executed under its new name; importlib registers it under the old name too.
        return None


if "diffusers" in sys.modules:
    _register_with_diffusers(sys.modules["diffusers"])
elif not any(isinstance(finder, _RegisterAfterDiffusersImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterDiffusersImport())

if not any(isinstance(finder, _MovedModuleAlias) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleAlias())
