"""Hub-ready folders (remote-code layout) and push_to_hub, all local: the network step is mocked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from neurop_diff_diffusers import build_pipeline
from neurop_diff_diffusers.pipelines.hub import self_contained_source

LR = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)


def _sample(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(LR, scale=2.5, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="np")


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    pipe = build_pipeline("tiny", seed=3)
    folder = tmp_path_factory.mktemp("hub") / "pipe"
    pipe.save_pretrained(folder, hub_ready=True)
    return folder, _sample(pipe).images


def test_plain_save_has_no_code(tmp_path):
    build_pipeline("tiny").save_pretrained(tmp_path / "plain")
    assert not list((tmp_path / "plain").rglob("*.py"))
    index = json.loads((tmp_path / "plain" / "model_index.json").read_text())
    assert index["_class_name"] == "NeurOpDiffPipeline"


def test_hub_ready_layout(hub_folder):
    folder, _ = hub_folder
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_neurop_diff", "NeurOpDiffPipeline"]
    assert index["neural_operator"] == ["neural_operator", "GalerkinNeuralOperator"]
    for rel in ("pipeline_neurop_diff.py", "neural_operator/neural_operator.py"):
        text = (folder / rel).read_text()
        assert not re.search(r"^\s*(from|import) neurop_diff_diffusers", text, re.MULTILINE)
        assert "\nfrom ." not in text
        compile(text, rel, "exec")


def test_self_contained_source_strips_relative_imports():
    src = self_contained_source(
        ["pipelines/image_processing.py", "pipelines/scheduling.py", "pipelines/pipeline_neurop_diff.py"]
    )
    assert "from .." not in src and src.count("from __future__ import annotations") == 1
    assert "class NeurOpDiffPipeline(DiffusionPipeline)" in src and "def noise_level(" in src


def test_hub_ready_loads_in_process_with_remote_code(hub_folder, tmp_path, monkeypatch):
    folder, reference = hub_folder
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(pipe).__module__.startswith("diffusers_modules")
    np.testing.assert_array_equal(_sample(pipe).images, reference)


def test_hub_ready_loads_without_the_package(hub_folder, tmp_path):
    folder, reference = hub_folder
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "neurop_diff_diffusers":
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        try:
            import neurop_diff_diffusers  # noqa: F401
            raise SystemExit("the package must not be importable here")
        except ImportError:
            pass
        import numpy as np, torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        lr = np.load({str(tmp_path / "lr.npy")!r})
        out = pipe(lr, scale=2.5, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="np")
        assert "neurop_diff_diffusers" not in sys.modules
        np.save({str(tmp_path / "out.npy")!r}, out.images)
        print(type(pipe).__module__)
        """
    )
    np.save(tmp_path / "lr.npy", LR)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith("diffusers_modules")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), reference)


def test_push_to_hub_uploads_hub_ready_folder(tmp_path):
    pipe = build_pipeline("tiny")
    card = tmp_path / "card.md"
    card.write_text("---\nlibrary_name: diffusers\n---\n# card\n")
    uploaded = {}

    def fake_upload_folder(*, repo_id, folder_path, token, commit_message, create_pr):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*"))
        uploaded["readme"] = (Path(folder_path) / "README.md").read_text()
        return "https://huggingface.co/me/model/commit/123"

    fake_repo = mock.Mock(repo_id="me/model")
    with (
        mock.patch("huggingface_hub.create_repo", return_value=fake_repo) as create_repo,
        mock.patch("huggingface_hub.upload_folder", side_effect=fake_upload_folder),
    ):
        url = pipe.push_to_hub("me/model", model_card=card, private=True)
    create_repo.assert_called_once_with("me/model", private=True, token=None, exist_ok=True)
    assert url.endswith("/123") and uploaded["repo_id"] == "me/model"
    assert "pipeline_neurop_diff.py" in uploaded["files"] and "neural_operator/neural_operator.py" in uploaded["files"]
    assert "unet/diffusion_pytorch_model.safetensors" in uploaded["files"]
    assert uploaded["readme"].startswith("---\nlibrary_name: diffusers")


def test_hub_ready_folder_holds_no_local_path(tmp_path):
    build_pipeline("tiny", seed=0).save_pretrained(tmp_path / "first")
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "first")  # records `_name_or_path` = this folder
    reloaded.save_pretrained(tmp_path / "hub", hub_ready=True)
    for path in (tmp_path / "hub").rglob("*.json"):
        text = path.read_text()
        assert "_name_or_path" not in text and str(tmp_path) not in text, path


def test_push_folder_to_hub_uploads_a_pipeline_folder_hub_ready_and_leaves_it_unchanged(tmp_path):
    """Training's --push_to_hub goes through push_folder_to_hub: the hub-ready layout, without training state."""
    from neurop_diff_diffusers.pipelines.hub import push_folder_to_hub

    folder = tmp_path / "run"
    build_pipeline("tiny").save_pretrained(folder)
    (folder / "checkpoint-4").mkdir()
    (folder / "checkpoint-4" / "state.bin").write_bytes(b"x")
    (folder / "split.json").write_text("{}")
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    uploaded = {}

    def fake_upload_folder(*, repo_id, folder_path, commit_message, ignore_patterns):
        uploaded["files"] = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*"))
        return "https://huggingface.co/me/run/commit/1"

    with (
        mock.patch("huggingface_hub.create_repo", return_value=mock.Mock(repo_id="me/run")) as create_repo,
        mock.patch("huggingface_hub.upload_folder", side_effect=fake_upload_folder),
    ):
        assert push_folder_to_hub(folder, "me/run").endswith("/1")
    create_repo.assert_called_once_with("me/run", private=None, exist_ok=True)
    assert "pipeline_neurop_diff.py" in uploaded["files"] and "split.json" in uploaded["files"]
    assert not any(name.startswith("checkpoint-") for name in uploaded["files"])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == before
