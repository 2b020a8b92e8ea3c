"""`neurop-diff upscale --input-dir`: a folder in one process or several (`accelerate launch`), bit-identical outputs,
one manifest line per input, a bad file recorded and skipped, resume after a crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import one_error_line
from neurop_diff_diffusers.cli import main
from neurop_diff_diffusers.jobs.batch import (
    LOCK_NAME,
    MANIFEST_NAME,
    append_record,
    compact_manifest,
    find_inputs,
    lock_folder,
    stale_temporaries,
    unlock_folder,
)
from neurop_diff_diffusers.runtime.optimization import resolve_dtype

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ("--model", "preset:tiny", "--scale", "2", "--steps", "2", "--seed", "0")


def _run(*args):
    return main([str(a) for a in args])


@pytest.fixture
def scenes(tmp_path) -> Path:
    """Six small images of different sizes and formats, one of them corrupt."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, suffix in enumerate([".png", ".png", ".jpg", ".tif", ".png"]):
        Image.fromarray(rng.integers(0, 255, (10 + i, 12 + 2 * i, 3), dtype=np.uint8)).save(folder / f"s{i}{suffix}")
    (folder / "s5_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "notes.txt").write_text("not an input")
    return folder


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != MANIFEST_NAME}


def _manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / MANIFEST_NAME).read_text().splitlines()]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_find_inputs_sorted_filtered_and_recursive(scenes, tmp_path):
    (scenes / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(scenes / "sub" / "deep.PNG")
    (scenes / ".s0.abcdefgh.png").write_bytes(b"temporary")
    assert [p.name for p in find_inputs(scenes)] == [
        "s0.png",
        "s1.png",
        "s2.jpg",
        "s3.tif",
        "s4.png",
        "s5_corrupt.png",
    ]
    assert [p.relative_to(scenes).as_posix() for p in find_inputs(scenes, recursive=True, pattern="*.PNG")] == [
        "sub/deep.PNG"
    ]
    assert find_inputs(scenes, recursive=True, exclude=scenes / "sub")[-1].name == "s5_corrupt.png"
    with pytest.raises(ValueError, match="--input-dir"):
        find_inputs(tmp_path / "missing")


def test_a_link_out_of_the_input_folder_is_not_an_input(scenes, tmp_path, capsys):
    """Nothing outside the declared input is read: a file link (or a file under a linked sub-folder, reached by a
    --glob) that leaves the folder is skipped with one warning; a link within the folder is an input."""
    secret = tmp_path / "private"
    secret.mkdir()
    Image.new("RGB", (4, 4), "red").save(secret / "photo.png")
    (scenes / "leak.png").symlink_to(secret / "photo.png")
    (scenes / "linked").symlink_to(secret)
    (scenes / "again.png").symlink_to(scenes / "s0.png")
    with pytest.warns(UserWarning, match=r"1 file\(s\) reached through a symbolic link out of the folder"):
        names = [p.name for p in find_inputs(scenes, pattern="*.png")]
    assert "leak.png" not in names and "again.png" in names
    with pytest.warns(UserWarning, match=r"not inputs \(not followed\), e.g. linked/photo.png"):
        assert find_inputs(scenes, pattern="linked/*.png") == []
    out = tmp_path / "out"
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "*.png", *FAST) == 2  # the corrupt one
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith("neurop-diff: warning: --input-dir ") and "leak.png" in warned[0]
    assert not (out / "leak_x2.png").exists() and (out / "again_x2.png").is_file()
    assert all(record["input"] != str(scenes / "leak.png") for record in _manifest(out))


def test_stale_temporaries_and_compact_manifest(tmp_path):
    target = tmp_path / "a_x2.png"
    for name in (".a_x2.k3j_x9q0.png", ".a_x2.short.png", ".b_x2.k3j_x9q0.png", "a_x2.png"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in stale_temporaries(target)] == [".a_x2.k3j_x9q0.png"]
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_text(
        '{"input": "b", "status": "error"}\n{"input": "a", "status": "ok"}\nnot json\n{"input": "b", "status": "ok"}\n'
    )
    assert compact_manifest(manifest, ["a", "b", "c"]) == [
        {"input": "a", "status": "ok"},
        {"input": "b", "status": "ok"},
    ]
    assert [json.loads(line)["input"] for line in manifest.read_text().splitlines()] == ["a", "b"]


def test_two_processes_write_the_files_of_one_process_bit_for_bit(scenes, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run("upscale", "--input-dir", scenes, "--out-dir", one, *FAST) == 2  # one corrupt input
    captured = capsys.readouterr()
    assert "s5_corrupt.png: damaged image" in captured.err or "s5_corrupt.png: not an image" in captured.err
    assert "6 inputs: 5 written, 0 already complete, 1 failed" in captured.err
    expected = _outputs(one)
    assert sorted(expected) == ["s0_x2.png", "s1_x2.png", "s2_x2.jpg", "s3_x2.tif", "s4_x2.png"]
    assert Image.open(one / "s4_x2.png").size == (40, 28)

    # The same command under `accelerate launch` with 2 CPU processes (torchrun's launcher: accelerate runs several
    # CPU processes only through it or MPI).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command += ["-m", "neurop_diff_diffusers.cli", "upscale", "--input-dir", str(scenes), "--out-dir", str(two), *FAST]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "s5_corrupt.png" in done.stderr, done.stderr[-3000:]
    assert _outputs(two) == expected  # bit for bit, and nothing else (no temporary file) in the folder

    records = _manifest(two)
    assert [Path(r["input"]).name for r in records] == [p.name for p in find_inputs(scenes)]  # every input once
    assert {r["process"] for r in records} == {0, 1}  # really split: each file written by one process
    bad = records[-1]
    assert bad["status"] == "error" and "s5_corrupt.png" in bad["message"] and bad["size"] is None
    good = records[0]
    assert good["status"] == "ok" and good["size"] == [20, 24] and good["scale"] == 2.0 and good["seconds"] > 0
    assert good["output"] == str(two / "s0_x2.png")

    # The issue's exact command: `accelerate launch --cpu` (Accelerate starts one process here without MPI).
    cpu = tmp_path / "cpu"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    command += ["-m", "neurop_diff_diffusers.cli", "upscale", "--input-dir", str(scenes), "--out-dir", str(cpu), *FAST]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert "s5_corrupt.png" in done.stderr, done.stderr[-3000:]
    assert _outputs(cpu) == expected and len(_manifest(cpu)) == 6


def test_rerun_completes_only_the_missing_outputs(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, *FAST) == 2
    expected = _outputs(out)
    stamps = {name: _stamp(out / name) for name in expected}
    # A crash: one output never written, one left as a stray temporary file, one not complete (e.g. a copy that
    # was cut short).
    (out / "s1_x2.png").unlink()
    (out / "s2_x2.jpg").rename(out / ".s2_x2.q1w2e3r4.jpg")
    (out / "s3_x2.tif").write_bytes(expected["s3_x2.tif"][:100])
    capsys.readouterr()

    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, *FAST) == 2
    assert "6 inputs: 3 written, 2 already complete, 1 failed" in capsys.readouterr().err
    assert _outputs(out) == expected
    for name in ("s0_x2.png", "s4_x2.png"):
        assert _stamp(out / name) == stamps[name]  # kept, not rewritten
    records = {Path(r["input"]).name: r for r in _manifest(out)}
    assert len(records) == 6 and len(_manifest(out)) == 6
    assert records["s0.png"]["resumed"] and "resumed" not in records["s1.png"]

    # --overwrite redoes everything (same bits).
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, *FAST, "--overwrite") == 2
    assert _outputs(out) == expected and _stamp(out / "s0_x2.png") != stamps["s0_x2.png"]


def test_recursive_keeps_sub_folders_and_glob_filters(scenes, tmp_path):
    (scenes / "sub").mkdir()
    shutil.copy(scenes / "s0.png", scenes / "sub" / "s0.png")
    out = scenes / "out"  # inside the input folder: never read as input
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--recursive", "--glob", "s0.png", *FAST) == 0
    assert (out / "s0_x2.png").read_bytes() == (out / "sub" / "s0_x2.png").read_bytes()
    assert len(_manifest(out)) == 2
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--recursive", "--glob", "s0.png", *FAST) == 0
    assert all(r["resumed"] for r in _manifest(out))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input-dir", "IN", "--out-dir", "OUT", "IN/s0.png"], "not both"),
        (["--input-dir", "IN"], "needs --out-dir"),
        (["--input-dir", "IN", "-o", "x.png"], "-o/--output"),
        (["--input-dir", "IN", "--out-dir", "OUT", "--glob", "*.bmp"], "no input files"),
        (["--input-dir", "IN/missing", "--out-dir", "OUT"], "is not a folder"),
        (["IN/s0.png", "--recursive", "--out-dir", "OUT"], "--recursive and --glob go with --input-dir"),
    ],
)
def test_bad_batch_flags_are_one_line(scenes, tmp_path, capsys, argv, message):
    argv = [a.replace("IN", str(scenes)).replace("OUT", str(tmp_path / "o")) for a in argv]
    assert _run("upscale", *argv, *FAST) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neurop-diff: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("neurop-diff: error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_manifest_that_is_not_a_regular_file_is_refused_before_any_work(scenes, tmp_path, capsys, kind):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    if kind == "symlink":
        (out / MANIFEST_NAME).symlink_to(victim)
    else:
        (out / MANIFEST_NAME).mkdir()
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *FAST) == 2
    err = _one_line(capsys)
    assert f"{out / MANIFEST_NAME} is a {'symbolic link' if kind == 'symlink' else 'directory'}" in err
    assert victim.read_text() == "precious\n"  # never appended through the link
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]  # no output written


def test_append_record_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / MANIFEST_NAME).symlink_to(victim)
    with pytest.raises(ValueError, match="symbolic link"):
        append_record(tmp_path / MANIFEST_NAME, {"input": "a"})
    assert victim.read_text() == "precious\n"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the manifest's descriptor through /proc")
def test_a_full_disk_while_recording_is_one_line_and_keeps_what_was_written(scenes, tmp_path, capsys, monkeypatch):
    import errno

    real_write = os.write

    def write(fd, data):  # the disk is full for the manifest only (the outputs are written through other calls)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(MANIFEST_NAME):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    out = tmp_path / "out"
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *FAST) == 2
    assert one_error_line(capsys) == f"{out / MANIFEST_NAME}: cannot append to it (No space left on device)"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "s0_x2.png"]  # no lock left
    assert (out / MANIFEST_NAME).read_bytes() == b""
    monkeypatch.undo()
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *FAST) == 0
    assert "1 inputs: 0 written, 1 already complete" in capsys.readouterr().out


def test_a_second_run_on_a_locked_out_dir_is_refused(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *FAST) == 0
    before = (_outputs(out), (out / MANIFEST_NAME).read_bytes())
    capsys.readouterr()
    held = lock_folder(out)  # another run holds the folder
    try:
        assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s*.png", *FAST) == 2
        assert "another neurop-diff run is writing in --out-dir" in _one_line(capsys)
        assert (out / LOCK_NAME).is_file()  # the other run's
        outputs = {k: v for k, v in _outputs(out).items() if k != LOCK_NAME}
        assert (outputs, (out / MANIFEST_NAME).read_bytes()) == before  # nothing marked, nothing written
    finally:
        unlock_folder(out, held)
    assert not (out / LOCK_NAME).exists()
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *FAST) == 0  # released


def test_a_rerun_with_other_settings_is_refused_unless_overwrite(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *FAST) == 0
    settings = _manifest(out)[0]["settings"]
    assert settings["steps"] == 2 and settings["seed"] == 0 and settings["model"] == "preset:tiny"
    first = _outputs(out)
    capsys.readouterr()
    for changed in (("--steps", "3"), ("--seed", "1"), ("--prior-only",), ("--strength", "0.5")):
        argv = [*FAST, *changed] if changed[0] != "--steps" else [*FAST[:-4], "--steps", "3", "--seed", "0"]
        assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *argv) == 2
        err = _one_line(capsys)
        assert f"holds 1 output(s) of an earlier run with another {changed[0]}" in err and "--overwrite" in err
        assert _outputs(out) == first
    # a scale that gives the same file name is another setting; one that gives another name writes beside it
    argv = [*FAST[:2], "--scale", "2.0000001", *FAST[4:]]
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *argv) == 2
    assert "with another --scale" in _one_line(capsys)
    argv = [*FAST[:2], "--scale", "3", *FAST[4:]]
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *argv) == 0
    assert sorted(_outputs(out)) == ["s0_x2.png", "s0_x3.png"] and _outputs(out)["s0_x2.png"] == first["s0_x2.png"]
    capsys.readouterr()
    # the same settings resume; --overwrite redoes with the new ones and records them
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *FAST) == 0
    assert _manifest(out)[0]["resumed"]
    first = _outputs(out)
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *FAST, "--seed", "1",
                "--overwrite") == 0  # fmt: skip
    assert _outputs(out) != first and _manifest(out)[0]["settings"]["seed"] == 1
    # a manifest line without settings (an older version): not kept as complete either
    record = {k: v for k, v in _manifest(out)[0].items() if k != "settings"}
    (out / MANIFEST_NAME).write_text(json.dumps(record) + "\n")
    capsys.readouterr()
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, "--glob", "s0.png", *FAST, "--seed", "1") == 2
    assert "settings that were not recorded" in _one_line(capsys)


@pytest.mark.parametrize(
    "where, message",
    [("IN", "is --input-dir itself"), ("PARENT", "lies inside --out-dir")],
)
def test_out_dir_equal_to_or_above_the_input_dir_is_a_clear_refusal(scenes, capsys, where, message):
    out = scenes if where == "IN" else scenes.parent
    before = sorted(p.name for p in out.iterdir())
    assert _run("upscale", "--input-dir", scenes, "--out-dir", out, *FAST) == 2
    assert message in _one_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("pattern", ["/etc/*", "../*", "sub/../../*.png", "\\\\server\\*"])
def test_globs_leaving_the_input_dir_are_refused(scenes, tmp_path, capsys, pattern):
    assert _run("upscale", "--input-dir", scenes, "--out-dir", tmp_path / "o", "--glob", pattern, *FAST) == 2
    assert "--glob must be a pattern relative to --input-dir" in _one_line(capsys)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="--glob"):
        find_inputs(scenes, pattern=pattern)


# --------------------------------------------------------------------------------------------------------------------
# --uncertainty N in a batch: one map per output, N in the manifest's settings
# --------------------------------------------------------------------------------------------------------------------
def test_uncertainty_writes_a_map_per_output_and_records_n(tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")
    from conftest import smooth_scene, write_geotiff

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(smooth_scene(10, 12).transpose(1, 2, 0)).save(folder / "a.png")
    write_geotiff(folder / "b.tif", smooth_scene(12, 10, seed=1).astype(np.uint16) * 10, nodata=0)
    assert _run("upscale", "--input-dir", folder, "--out-dir", out, *FAST, "--uncertainty", "2") == 0
    assert sorted(_outputs(out)) == ["a_x2.png", "a_x2.uncertainty.tif", "b_x2.tif", "b_x2.uncertainty.tif"]
    with Image.open(out / "a_x2.uncertainty.tif") as spread:
        assert spread.mode == "F" and spread.size == (24, 20) and np.asarray(spread).max() > 0
    with rasterio.open(out / "b_x2.tif") as dst, rasterio.open(out / "b_x2.uncertainty.tif") as spread:
        assert spread.dtypes == ("float32",) and spread.shape == dst.shape == (24, 20)
        assert spread.transform == dst.transform and spread.crs == dst.crs
        values = spread.read(1)
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() > 0
    records = _manifest(out)
    assert [r["settings"]["uncertainty"] for r in records] == [2, 2]
    assert [r["uncertainty"] for r in records] == [str(out / f"{n}_x2.uncertainty.tif") for n in "ab"]
    first = _outputs(out)

    # a re-run resumes; an output whose map is missing (or cut short) is redone, with the same bits
    capsys.readouterr()
    assert _run("upscale", "--input-dir", folder, "--out-dir", out, *FAST, "--uncertainty", "2") == 0
    assert "2 inputs: 0 written, 2 already complete" in capsys.readouterr().out
    (out / "a_x2.uncertainty.tif").unlink()
    (out / "b_x2.uncertainty.tif").write_bytes(first["b_x2.uncertainty.tif"][:200])
    assert _run("upscale", "--input-dir", folder, "--out-dir", out, *FAST, "--uncertainty", "2") == 0
    assert "2 inputs: 2 written, 0 already complete" in capsys.readouterr().out
    assert _outputs(out) == first

    # another N, or none, is another setting: refused before any work
    for other in (("--uncertainty", "3"), ()):
        assert _run("upscale", "--input-dir", folder, "--out-dir", out, *FAST, *other) == 2
        err = _one_line(capsys)
        assert "holds 2 output(s) of an earlier run with another --uncertainty" in err and "--overwrite" in err
        assert _outputs(out) == first


def test_uncertainty_maps_of_two_inputs_in_one_file_are_refused(scenes, tmp_path, capsys):
    shutil.copy(scenes / "s0.png", scenes / "s0.jpg")  # s0_x2.png and s0_x2.jpg: one map s0_x2.uncertainty.tif
    argv = ["--input-dir", scenes, "--out-dir", tmp_path / "o", "--glob", "s0.*", *FAST, "--uncertainty", "2"]
    assert _run("upscale", *argv) == 2
    err = _one_line(capsys)
    assert "would both write the map" in err and "s0_x2.uncertainty.tif" in err
    assert not (tmp_path / "o").exists()


def test_two_inputs_with_one_output_file_are_refused_before_any_work(scenes, tmp_path, capsys):
    # a TIFF named .png takes a .tif output: s0.tif and s0.png would both write s0_x2.tif, the second over the first
    Image.open(scenes / "s0.png").save(scenes / "s0.tif")
    Image.open(scenes / "s1.png").save(scenes / "s0.png", format="TIFF")
    argv = ["--input-dir", scenes, "--out-dir", tmp_path / "o", "--glob", "s0.*", *FAST]
    for extra in ((), ("--overwrite",)):
        assert _run("upscale", *argv, *extra) == 2
        err = _one_line(capsys)
        assert f"{scenes / 's0.png'} and {scenes / 's0.tif'} would both write the output" in err
        assert str(tmp_path / "o" / "s0_x2.tif") in err and "--glob" in err
        assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------------------------------
# every per-file flag: a batch writes what single files with the same flags write, and records what its outputs
# depend on
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_and_geotiff(tmp_path_factory) -> Path:
    """A PNG and a small uint16 GeoTIFF (12 x 20: several windows of 8)."""
    pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")
    from conftest import smooth_scene, write_geotiff

    folder = tmp_path_factory.mktemp("mixed") / "in"
    folder.mkdir()
    Image.fromarray(smooth_scene(10, 12).transpose(1, 2, 0)).save(folder / "a.png")
    write_geotiff(folder / "b.tif", smooth_scene(12, 20, seed=1).astype(np.uint16) * 10)
    return folder


@pytest.fixture(scope="module")
def default_outputs(plain_and_geotiff, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("default")
    assert main(["upscale", *map(str, sorted(plain_and_geotiff.iterdir())), "--out-dir", str(out), *FAST]) == 0
    return _outputs(out)


@pytest.mark.parametrize(
    "flags, recorded",
    [
        (("--window", "16"), {"window": 16}),
        (("--window", "16", "--halo", "2"), {"window": 16, "halo": 2}),
        (("--value-range", "0,4000"), {"value_range": "0,4000"}),
        (("--workers", "2"), {}),
        (("--uncertainty", "2"), {"uncertainty": 2}),
        (("--data-consistency", "3"), {"data_consistency": 3}),
        (("--steps", "3"), {"steps": 3}),
        (("--seed", "5"), {"seed": 5}),
        (("--strength", "0.5"), {"strength": 0.5}),
        (("--prior-only",), {"prior_only": True}),
        (("--scheduler", "ddpm"), {"scheduler": "ddpm"}),
        (("--dtype", "bfloat16"), {"dtype": "bfloat16"}),
        (("--dtype", "float32"), {"dtype": "float32"}),
        (("--tile-size", "16", "--tile-overlap", "4"), {"tile_size": 16, "tile_overlap": 4}),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_a_batch_writes_what_single_files_with_the_same_flags_write(
    plain_and_geotiff, default_outputs, tmp_path, capsys, flags, recorded
):
    import torch

    single, batch = tmp_path / "single", tmp_path / "batch"
    files = [str(p) for p in sorted(plain_and_geotiff.iterdir())]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a batch computes on the CPU: float reductions split by thread count differ in ulps
    try:
        assert main(["upscale", *files, "--out-dir", str(single), *FAST, *flags]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main(["upscale", "--input-dir", str(plain_and_geotiff), "--out-dir", str(batch), *FAST, *flags]) == 0
    expected = _outputs(single)
    assert _outputs(batch) == expected  # byte for byte
    auto = str(resolve_dtype("auto", "cpu")).removeprefix("torch.")  # the default precision (--preset fast) here
    if flags[0] != "--workers" and flags != ("--dtype", auto):  # the others change what is written
        assert expected != default_outputs
    settings = _manifest(batch)[0]["settings"]
    assert {key: settings.get(key) for key in recorded} == recorded
    scene_flags = {"window": "--window", "halo": "--halo", "value_range": "--value-range"}
    if set(recorded) & set(scene_flags):  # a GeoTIFF's setting: a re-run without it is refused, as for the others
        capsys.readouterr()
        assert main(["upscale", "--input-dir", str(plain_and_geotiff), "--out-dir", str(batch), *FAST]) == 2
        err = _one_line(capsys)
        assert any(f"of an earlier run with another {scene_flags[key]};" in err for key in recorded), err
        assert _outputs(batch) == expected


def test_a_batch_dry_run_prints_each_plan_and_writes_nothing(plain_and_geotiff, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["upscale", "--input-dir", plain_and_geotiff, "--out-dir", out, *FAST, "--window", "16", "--dry-run"]
    assert _run(*argv) == 0
    printed = capsys.readouterr().out
    assert f"{plain_and_geotiff / 'a.png'} -> {out / 'a_x2.png'} (20x24, height x width): one image" in printed
    assert f"{plain_and_geotiff / 'b.tif'} -> {out / 'b_x2.tif'}\n" in printed and "windows: 1 x 2 = 2" in printed
    assert not out.exists()


def test_a_batch_output_sub_folder_that_is_a_link_is_refused(tmp_path, capsys):
    inputs, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "top").mkdir()
    rng = np.random.default_rng(0)
    for folder in ("sub", "top"):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(inputs / folder / "a.png")
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)
    assert _run("upscale", "--input-dir", inputs, "--out-dir", out, "--recursive", *FAST) == 2
    err = capsys.readouterr().err
    assert f"output folder `{out / 'sub'}` is a symbolic link: only a real folder is written into" in err
    assert list(elsewhere.iterdir()) == []
    assert (out / "top" / "a_x2.png").is_file()  # the other input is written
    assert (out / "sub").is_symlink()


def test_a_hostile_manifest_is_read_within_budgets(tmp_path, capsys, monkeypatch):
    from neurop_diff_diffusers.jobs import batch

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inputs / "a.png")
    manifest = out / MANIFEST_NAME
    manifest.write_text("[" * 100_000 + "]" * 100_000 + "\n" + "{" + "\n")  # a line nested 100,000 deep, a torn one
    argv = ["upscale", "--input-dir", inputs, "--out-dir", out, *FAST]
    assert _run(*argv) == 0  # the damaged lines are ignored, as any damaged line, never parsed recursively
    assert (out / "a_x2.png").is_file() and list(batch.read_manifest(manifest)) == [str(inputs / "a.png")]
    monkeypatch.setattr(batch, "MAX_MANIFEST_BYTES", 10)
    capsys.readouterr()
    assert _run(*argv) == 2
    assert "more than the 10 allowed" in capsys.readouterr().err
