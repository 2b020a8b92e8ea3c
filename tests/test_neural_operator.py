"""GalerkinNeuralOperator: shapes, exact chunked streaming, the official-checkpoint loader, save/load, errors."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT, SHARED_PAPER_DIR
from neurop_diff_diffusers import GalerkinNeuralOperator, build_neural_operator
from neurop_diff_diffusers.models import neural_operator
from neurop_diff_diffusers.models.neural_operator import CPU_TILE_BYTES, DEFAULT_CHUNK_SIZE
from reference_srno import random_official_state_dict, reference_srno


@pytest.fixture(scope="module")
def tiny_operator() -> GalerkinNeuralOperator:
    return build_neural_operator("tiny", seed=0).eval()


def _lr(b=1, h=9, w=13, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(
    "out_size", [(9, 13), (18, 26), (33, 48), (90, 130), (20, 70), (31, 7), (1, 1)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_output_shape_any_size(tiny_operator, out_size):
    with torch.no_grad():
        out = tiny_operator(_lr(2), out_size).sample
    assert out.shape == (2, 3, *out_size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("chunk_size", [1, 97, 500, 1024, 4096])
def test_chunked_equals_unchunked(tiny_operator, chunk_size):
    x = _lr(2, 11, 8, seed=1)
    size = (47, 29)  # 1363 pixels: most chunk sizes leave a ragged last chunk
    with torch.no_grad():
        full = tiny_operator(x, size, chunk_size=size[0] * size[1]).sample
        chunked = tiny_operator(x, size, chunk_size=chunk_size).sample
    assert (full - chunked).abs().max().item() <= 1e-5


def _lifted_pixels(operator, **kwargs):
    """Run the operator on a 120 x 100 output; the pixel count of every call of its lifting layer, and the output."""
    seen = []
    lift = operator._lift

    def recording_lift(lattice, coord):
        seen.append(coord.shape[0])
        return lift(lattice, coord)

    operator._lift = recording_lift
    try:
        with torch.no_grad():
            out = operator(_lr(), (120, 100), **kwargs).sample
    finally:
        del operator._lift
    return seen, out


def test_chunk_bounds_the_pixels_processed_at_once(tiny_operator, monkeypatch):
    """No layer after the encoder ever sees more than `chunk_size` pixels; each pixel is lifted once when the
    activations between the passes fit in `ACTIVATION_CACHE_BYTES`, else once per pass."""
    seen, cached = _lifted_pixels(tiny_operator, chunk_size=1000)
    assert max(seen) == 1000 and sum(seen) == 120 * 100
    assert len(seen) == 12  # one pass over 12 chunks; later passes start from the kept activations

    monkeypatch.setattr(neural_operator, "ACTIVATION_CACHE_BYTES", 0)
    seen, streamed = _lifted_pixels(tiny_operator, chunk_size=1000)
    assert max(seen) == 1000
    # (1 + number of Galerkin blocks) streaming passes over 12 chunks, recomputing the earlier blocks
    assert len(seen) == 12 * (1 + tiny_operator.config.num_galerkin_blocks)
    assert (cached - streamed).abs().max().item() <= 1e-5


def test_cpu_tiles_bound_the_pixels_processed_at_once(tiny_operator, monkeypatch):
    seen, out = _lifted_pixels(tiny_operator)
    tile = CPU_TILE_BYTES // (4 * tiny_operator.config.width)  # float32
    assert 1 < tile < 120 * 100
    assert max(seen) == tile and sum(seen) == 120 * 100
    monkeypatch.setattr(neural_operator, "CPU_TILE_BYTES", 10**9)
    seen, whole = _lifted_pixels(tiny_operator)
    assert seen == [12000]
    assert (out - whole).abs().max().item() <= 1e-5


def test_default_chunk_size_bounds_paper_size_outputs():
    assert DEFAULT_CHUNK_SIZE <= 2**17


def test_official_loader_matches_reference_small_config():
    sd = random_official_state_dict(encoder_channels=8, encoder_num_blocks=3, width=24, heads=4, head_channels=16)
    model = GalerkinNeuralOperator.from_official_state_dict({"model": sd}).eval()
    assert model.config.encoder_num_blocks == 3 and model.config.num_heads == 4 and model.config.width == 24
    x = _lr(2, 7, 10, seed=3)
    for size in [(7, 10), (16, 23), (30, 41), (13, 50)]:
        ref = reference_srno(sd, x, *size, heads=4)
        with torch.no_grad():
            out = model(x, size).sample
            chunked = model(x, size, chunk_size=37).sample
        assert (out - ref).abs().max().item() <= 1e-5, size
        assert (chunked - ref).abs().max().item() <= 1e-5, size


def _official_names_and_shapes():
    path = SHARED_PAPER_DIR / "official-srno-state-dict.txt"
    if not path.is_file():
        pytest.skip(f"needs {path} (the authors' parameter list, not part of a user's clone)")
    entries = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(\S+) \(([\d, ]*)\)$", line.strip())
        if m:
            entries[m.group(1)] = tuple(int(v) for v in m.group(2).split(",") if v.strip())
    return entries


def test_official_layout_paper_size_matches_reference():
    expected = _official_names_and_shapes()
    sd = random_official_state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    model = GalerkinNeuralOperator.from_official_state_dict({"model": sd}).eval()
    defaults = GalerkinNeuralOperator().config  # the paper's configuration is the default
    for key in (
        "encoder_channels",
        "encoder_num_blocks",
        "width",
        "num_heads",
        "num_galerkin_blocks",
        "head_channels",
    ):
        assert model.config[key] == defaults[key], key
    x = _lr(1, 8, 6, seed=4)
    ref = reference_srno(sd, x, 27, 19)
    with torch.no_grad():
        out = model(x, (27, 19), chunk_size=100).sample
    assert ref.abs().max().item() > 0.1  # a non-trivial output
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_zero_weights_give_bilinear_upsampling():
    sd = {k: torch.zeros_like(v) for k, v in random_official_state_dict(8, 2, 16, 4, 2, 16).items()}
    model = GalerkinNeuralOperator.from_official_state_dict(sd).eval()
    x = _lr(2, 10, 7, seed=5)
    with torch.no_grad():
        out = model(x, (37, 23)).sample
    expected = F.interpolate(x, size=(37, 23), mode="bilinear", align_corners=False)
    assert (out - expected).abs().max().item() <= 1e-5


def test_official_loader_rejects_foreign_keys():
    sd = random_official_state_dict(8, 1, 16, 4, 2, 16)
    sd["decoder.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="decoder.weight"):
        GalerkinNeuralOperator.from_official_state_dict(sd)
    with pytest.raises(TypeError, match="state_dict"):
        GalerkinNeuralOperator.from_official_state_dict([1, 2])


def test_accepts_ddp_prefixes():
    sd = random_official_state_dict(8, 1, 16, 4, 2, 16)
    model = GalerkinNeuralOperator.from_official_state_dict({f"module.{k}": v for k, v in sd.items()})
    assert model.config.encoder_num_blocks == 1


def test_save_load_round_trip(tmp_path, tiny_operator):
    tiny_operator.save_pretrained(tmp_path / "op")
    files = sorted(p.name for p in (tmp_path / "op").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = GalerkinNeuralOperator.from_pretrained(tmp_path / "op").eval()
    x = _lr(1, 12, 12, seed=6)
    with torch.no_grad():
        assert torch.equal(tiny_operator(x, (30, 25)).sample, loaded(x, (30, 25)).sample)


def test_query_at_sampled_points_matches_grid(tiny_operator):
    """`query` on all grid points of an output equals `forward` (the training path and inference agree)."""
    from neurop_diff_diffusers import make_cell, make_coord

    x = _lr(1, 9, 9, seed=7)
    coord = make_coord((20, 16)).reshape(1, -1, 2)
    with torch.no_grad():
        pts = tiny_operator.query(x, coord, make_cell((20, 16)))
        grid = tiny_operator(x, (20, 16)).sample
    assert pts.shape == (1, 3, 320)
    assert (pts.reshape(1, 3, 20, 16) - grid).abs().max().item() <= 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"output_size": (0, 5)}, "output_size"),
        ({"output_size": (5,)}, "output_size"),
        ({"output_size": (5.0, 5)}, "output_size"),
        ({"output_size": (5, 5), "chunk_size": 0}, "chunk_size"),
        ({"output_size": (5, 5), "chunk_size": 2.5}, "chunk_size"),
    ],
)
def test_errors(tiny_operator, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_operator(_lr(), **kwargs)


def test_wrong_channels(tiny_operator):
    with pytest.raises(ValueError, match="image"):
        tiny_operator(torch.zeros(1, 4, 5, 5), (10, 10))


def _documented_official_names_and_shapes():
    """The authors' parameter names and shapes as docs/method.md section 9 lists them (its table, expanded)."""
    text = (REPO_ROOT / "docs" / "method.md").read_text()
    section = text[text.index("## 9. ") : text.index("## 10. ")]
    entries = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`") or "authors" in cells[0]:
            continue
        shape = tuple(int(v) for v in re.findall(r"\d+", cells[1]))
        for name in re.findall(r"`([\w.{}]+)`", cells[0]):
            if "." not in name and not name.startswith(("conv", "fc")):
                continue  # `i`, `b`: the ranges
            for i in range(16) if "{i}" in name else [None]:
                for b in (0, 1) if "{b}" in name else [None]:
                    full = name.replace("{i}", str(i)).replace("{b}", str(b))
                    entries[f"{full}.weight"] = shape
                    entries[f"{full}.bias"] = shape if full.endswith(("kln", "vln")) else shape[:1]
    return entries


def test_docs_list_the_authors_parameter_names_and_shapes():
    documented = _documented_official_names_and_shapes()
    assert {k: tuple(v.shape) for k, v in random_official_state_dict().items()} == documented


def test_galerkin_block_forward_matches_the_authors_block():
    """A block on its own, on (B, width, H, W), with its own Galerkin sum: the authors' block, literally."""
    from reference_srno import _galerkin

    sd = random_official_state_dict(encoder_channels=8, encoder_num_blocks=1, width=24, heads=4, head_channels=8)
    block = GalerkinNeuralOperator.from_official_state_dict(sd).galerkin_blocks[0]
    z = torch.randn(2, 24, 7, 9, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = block(z)
    expected = _galerkin(z, sd, "conv0", heads=4)
    assert out.shape == z.shape
    assert (out - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
