"""The package imports lazily (a fast CLI) and still registers its classes with diffusers in every import order."""

import subprocess
import sys

import pytest

import neurop_diff_diffusers


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_cli_import_loads_neither_torch_nor_diffusers():
    out = _run(
        "import sys, neurop_diff_diffusers.cli\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'numpy', 'PIL') if m in sys.modules))"
    )
    assert out == "[]"


@pytest.mark.parametrize(
    "code",
    [
        # ours first, diffusers later: the import hook registers the classes once diffusers has loaded
        "import neurop_diff_diffusers\nimport diffusers",
        # diffusers first: registered at our import
        "import diffusers\nimport neurop_diff_diffusers",
        # one of our modules pulls diffusers in while it is itself being imported (no circular import)
        "from neurop_diff_diffusers.models import GalerkinNeuralOperator\nimport diffusers",
        "import neurop_diff_diffusers.pipelines.scheduling\nimport diffusers",
    ],
    ids=["ours-first", "diffusers-first", "operator-first", "scheduling-first"],
)
def test_classes_are_registered_with_diffusers_in_any_import_order(code):
    out = _run(
        code + "\nfrom neurop_diff_diffusers.pipelines.pipeline_neurop_diff import NeurOpDiffPipeline\n"
        "from neurop_diff_diffusers.models.neural_operator import GalerkinNeuralOperator\n"
        "print(diffusers.NeurOpDiffPipeline is NeurOpDiffPipeline,"
        " diffusers.GalerkinNeuralOperator is GalerkinNeuralOperator)"
    )
    assert out == "True True"


def test_lazy_public_names_resolve_and_unknown_names_raise():
    from neurop_diff_diffusers.runtime.presets import build_pipeline

    assert neurop_diff_diffusers.build_pipeline is build_pipeline
    assert set(neurop_diff_diffusers.__all__) <= set(dir(neurop_diff_diffusers))
    for name in neurop_diff_diffusers.__all__:
        assert getattr(neurop_diff_diffusers, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        getattr(neurop_diff_diffusers, "not_a_name")  # noqa: B009
