"""The package's shape: its layers (import-linter contracts in setup.cfg), sizes that keep modules readable, the
old module paths that still import, and no tracker references in what users and maintainers read."""

import ast
import importlib
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import neurop_diff_diffusers

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(neurop_diff_diffusers.__file__).resolve().parent
MAX_ROOT_MODULES = 12
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 120


def _package_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


@pytest.mark.skipif(
    shutil.which("lint-imports") is None, reason="import-linter is not installed (pip install '.[test]')"
)
def test_import_contracts_are_kept():
    result = subprocess.run(
        ["lint-imports", "--config", str(REPO_ROOT / "setup.cfg"), "--no-cache"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_package_root_holds_few_modules():
    modules = sorted(p.name for p in PACKAGE_DIR.glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, modules


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: p.relative_to(PACKAGE_DIR).as_posix())
def test_modules_and_functions_stay_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    long_functions = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
            start = body[1].lineno if has_docstring and len(body) > 1 else body[0].lineno
            if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                long_functions.append(f"{node.name} (line {node.lineno}: {node.end_lineno - start + 1} lines)")
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines, docstring excluded: {long_functions}"


def test_no_tracker_references():
    """No tracker numbers, and no folder of the machine something was measured on (commands name relative paths)."""
    pattern = re.compile(r"\bissues? #?\d+|\(#\d+\)|(?<![\w.])/" + "work/", re.IGNORECASE)
    folders = ["src", "tests", "benchmarks", "docs", "training", "examples", "model_cards"]
    files = [REPO_ROOT / "README.md"] + [p for d in folders for p in (REPO_ROOT / d).rglob("*") if p.is_file()]
    hits = []
    for path in files:
        if path.suffix not in {".py", ".md", ".txt", ".sh", ".cfg", ".toml"}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("old", sorted(neurop_diff_diffusers._MOVED_MODULES))
def test_old_module_paths_import_with_a_deprecation_warning(old):
    name = f"neurop_diff_diffusers.{old}"
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    assert any(issubclass(w.category, DeprecationWarning) and name in str(w.message) for w in caught)
    homes = neurop_diff_diffusers._MOVED_MODULES[old]
    if isinstance(homes, str):  # one home: the very module object, so a patch through either name patches both
        assert module is importlib.import_module(f"neurop_diff_diffusers.{homes}")


def test_old_geo_path_reaches_both_homes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from neurop_diff_diffusers.geo import read_scene, upscale_geotiff
    from neurop_diff_diffusers.io.geo import read_scene as new_read_scene
    from neurop_diff_diffusers.jobs.scene import upscale_geotiff as new_upscale_geotiff

    assert read_scene is new_read_scene and upscale_geotiff is new_upscale_geotiff


def test_unknown_module_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("neurop_diff_diffusers.no_such_module")
