"""A scene run against hostile names and a hostile resume state: GDAL-special outputs, a work folder that is a link,
a file or someone else's, devices and FIFOs at the output or the map, an input rewritten behind the journal's back,
two runs of one output, damaged journals and window files (huge headers, random bytes, links out of the job), the
temporary file of a killed commit, and batch output folders that are links. Each ends with the right output or one
line, and nothing outside the job is read, written or removed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")

from conftest import one_error_line  # noqa: E402
from conftest import smooth_scene as _smooth_scene  # noqa: E402
from conftest import write_geotiff as _write  # noqa: E402
from neurop_diff_diffusers.cli import commands as cli  # noqa: E402
from neurop_diff_diffusers.file_safety import WORK_MARKER  # noqa: E402
from neurop_diff_diffusers.jobs.scene import (  # noqa: E402
    ScenePlan,
    assemble_and_commit,
    prepare_scene,
    upscale_scene,
    work_folder,
)
from neurop_diff_diffusers.jobs.scene.journal import hold_work_folder, launch_id, load_window  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
#: Four windows of a 32 x 32 scene, the prior only (fast).
KW = {"scale": 2, "window": 16, "halo": 4, "seed": 1, "workers": 1, "prior_only": True}
CLI = ("--scale", "2", "--window", "16", "--halo", "4", "--prior-only", "--model", "preset:tiny", "--seed", "3")


@pytest.fixture
def scene(tmp_path) -> Path:
    return _write(tmp_path / "in.tif", _smooth_scene(32, 32))


@pytest.fixture(scope="module")
def reference(pipe, tmp_path_factory) -> bytes:
    """The output of an uninterrupted run of the ``scene`` fixture's input with ``KW``."""
    folder = tmp_path_factory.mktemp("reference")
    path = _write(folder / "in.tif", _smooth_scene(32, 32))
    return upscale_scene(pipe, path, folder / "u.tif", **KW).read_bytes()


def _tree(folder: Path) -> dict[str, object]:
    """Every entry below ``folder`` (no link followed): its bytes, its link target, or its kind."""
    found: dict[str, object] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            mode = os.lstat(path).st_mode
            key = path.relative_to(folder).as_posix()
            if stat.S_ISLNK(mode):
                found[key] = f"-> {os.readlink(path)}"
            elif stat.S_ISREG(mode):
                found[key] = path.read_bytes()
            else:
                found[key] = stat.S_IFMT(mode)
    return found


def _interrupted(pipe, src, dst, after=2, **kwargs) -> Path:
    """A run that crashes after ``after`` windows are saved; its work folder."""
    calls = []

    class Bar:
        total, n = 4, 0

        def update(self, n):
            calls.append(n)
            if len(calls) >= after:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        upscale_scene(pipe, src, dst, progress=lambda total, done: Bar(), **{**KW, **kwargs})
    folder = work_folder(dst)
    assert sorted(p.name for p in folder.glob("w*.npy")) == [f"w{i:06d}.npy" for i in range(after)]
    return folder


def _cli_error(capsys, *args) -> str:
    assert cli.main(["upscale", *map(str, args), *CLI]) == 2
    return one_error_line(capsys)


# --------------------------------------------------------------------------------------------------------------------
# Names: local files only
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["/vsimem/o.tif", "/vsizip/x.zip/o.tif"])
def test_a_gdal_special_output_is_one_line_and_nothing_is_made(scene, capsys, pipe, name):
    before = os.path.exists("/vsimem"), os.path.exists("/vsizip")
    message = _cli_error(capsys, scene, "-o", name)
    assert f"output `{name}`: only local file names are written" in message
    with pytest.raises(ValueError, match="only local file names are written"):
        upscale_scene(pipe, scene, name, **KW)
    assert (os.path.exists("/vsimem"), os.path.exists("/vsizip")) == before  # no real folder made for it
    assert not os.path.lexists(name) and not os.path.lexists(work_folder(name))
    assert sorted(p.name for p in scene.parent.iterdir()) == ["in.tif"]


def test_a_local_file_whose_name_reads_as_a_gdal_driver_is_written_as_that_file(scene, pipe, reference, monkeypatch):
    target = scene.parent / "GTIFF_DIR:1:x.tif"
    assert cli.main(["upscale", str(scene), "-o", str(target), *CLI]) == 0  # absolute: a file, for GDAL too
    with rasterio.open(target) as ds:
        assert (ds.count, ds.height, ds.width) == (3, 64, 64)
    monkeypatch.chdir(scene.parent)
    upscale_scene(pipe, "in.tif", "./GTIFF_DIR:1:y.tif", **KW)  # the library keeps `./`: a local name
    assert (scene.parent / "GTIFF_DIR:1:y.tif").read_bytes() == reference
    assert sorted(p.name for p in scene.parent.iterdir()) == ["GTIFF_DIR:1:x.tif", "GTIFF_DIR:1:y.tif", "in.tif"]


# --------------------------------------------------------------------------------------------------------------------
# The work folder: made by this tool, never a link, one run at a time
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("restart", [False, True], ids=["resume", "restart"])
def test_a_work_folder_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, scene, capsys, restart):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "journal.json").write_text("{}")  # a stale journal there, and someone's file
    (elsewhere / "keep.txt").write_text("not the tool's")
    folder = work_folder(tmp_path / "o.tif")
    folder.symlink_to(elsewhere)
    before = _tree(tmp_path)
    message = _cli_error(capsys, scene, "-o", tmp_path / "o.tif", *(["--restart"] if restart else []))
    assert f"work folder `{folder}` is a symbolic link, not a folder this tool made: remove it first" in message
    assert _tree(tmp_path) == before


def test_a_work_folder_without_the_marker_is_refused(tmp_path, scene, capsys):
    folder = work_folder(tmp_path / "o.tif")
    folder.mkdir()
    (folder / "journal.json").write_text("{}")
    before = _tree(tmp_path)
    message = _cli_error(capsys, scene, "-o", tmp_path / "o.tif", "--restart")
    assert f"work folder `{folder}` was not made by this tool" in message
    assert _tree(tmp_path) == before


def test_a_work_folder_that_is_a_file_is_named_as_such(tmp_path, scene, capsys):
    folder = work_folder(tmp_path / "o.tif")
    folder.write_text("someone's file")
    message = _cli_error(capsys, scene, "-o", tmp_path / "o.tif")
    assert message == f"{scene}: work folder `{folder}` is a file, not a folder this tool made: remove it first"
    assert "appeared while" not in message
    assert folder.read_text() == "someone's file" and not (tmp_path / "o.tif").exists()


def test_a_second_run_of_the_same_output_is_one_line_while_the_first_holds_it(tmp_path, scene, capsys, pipe):
    target = tmp_path / "o.tif"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from neurop_diff_diffusers.jobs.scene import prepare_scene;"
            "from neurop_diff_diffusers.jobs.scene.journal import hold_work_folder;"
            "job = prepare_scene(sys.argv[1], sys.argv[2], scale=2)\n"
            "with hold_work_folder(job):\n    print('held', flush=True); sys.stdin.read()",
            str(scene),
            str(target),
        ],
        env={**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        message = _cli_error(capsys, scene, "-o", target)
        assert f"another run is writing `{target}`" in message and str(work_folder(target)) in message
        assert sorted(os.listdir(work_folder(target))) == [WORK_MARKER]  # the holder's folder, untouched
    finally:
        holder.communicate("", timeout=120)
    assert holder.returncode == 0
    assert not work_folder(target).exists()  # the holder removed its empty folder
    assert cli.main(["upscale", str(scene), "-o", str(target), *CLI]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.tif"]


def test_the_lock_is_released_after_a_run_in_the_same_process(tmp_path, scene, pipe):
    job = prepare_scene(scene, tmp_path / "o.tif", **{k: v for k, v in KW.items() if k != "workers"})
    with hold_work_folder(job):
        with pytest.raises(ValueError, match="another run is writing"):
            upscale_scene(pipe, scene, tmp_path / "o.tif", **KW)
    _interrupted(pipe, scene, tmp_path / "o.tif")  # a failed run lets go of it too
    upscale_scene(pipe, scene, tmp_path / "o.tif", **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.tif"]


class _Rank:
    """Accelerate's process state as a process other than the main one of a 2-process launch sees it."""

    num_processes, is_main_process = 2, False

    def wait_for_everyone(self):
        pass

    @contextlib.contextmanager
    def split_between_processes(self, items):
        yield items[len(items) // 2 :]


def _launch_env(monkeypatch, rank: int, port: int, run: str) -> None:
    """The variables torchrun sets in each process of a launch."""
    env = {"WORLD_SIZE": "2", "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in {**env, "TORCHELASTIC_RUN_ID": run}.items():
        monkeypatch.setenv(key, value)


def test_a_process_of_another_launch_never_writes_into_a_held_work_folder(tmp_path, scene, pipe, monkeypatch):
    """Under ``accelerate launch`` only the main process locks the work folder: a non-main process of a second
    launch on the same output is refused in one line (it wrote its windows into the first run's folder), while the
    processes of the launch that holds the folder go on."""
    from neurop_diff_diffusers.jobs.scene import engine, run_scene
    from neurop_diff_diffusers.jobs.scene.journal import HOLDER

    monkeypatch.setattr(engine, "_process_state", lambda cpu: _Rank())
    target = tmp_path / "o.tif"
    job = prepare_scene(scene, target, **{k: v for k, v in KW.items() if k != "workers"})
    _launch_env(monkeypatch, 0, 29500, "first")
    with hold_work_folder(job, is_main=True):  # the first launch's main process holds the folder
        assert (job.folder / HOLDER).read_text() == launch_id()
        before = _tree(job.folder)
        _launch_env(monkeypatch, 1, 29501, "second")
        with pytest.raises(ValueError) as caught:
            run_scene(pipe, job, distributed=True)
        assert str(caught.value) == (
            f"another run holds the work folder `{job.folder}` of `{target}`: this process (rank 1) is not of the "
            "launch that holds it; wait for it to end"
        )
        assert _tree(job.folder) == before  # no window, no journal written
        _launch_env(monkeypatch, 1, 29500, "first")  # the first launch's other process: its share of the windows
        assert run_scene(pipe, job, distributed=True) == target
        assert len(list(job.folder.glob("w*.npy"))) == 2 and not target.exists()


# --------------------------------------------------------------------------------------------------------------------
# Devices, FIFOs and links at the output and the map: refused, never replaced
# --------------------------------------------------------------------------------------------------------------------
def _device(path: Path) -> Path:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("making a character device needs root")
    return path


def test_a_device_at_the_output_is_refused_even_with_overwrite(tmp_path, scene, capsys, pipe):
    device = _device(tmp_path / "o.tif")
    message = _cli_error(capsys, scene, "-o", device, "--overwrite")
    assert message == f"output `{device}` is a device: only a regular file is replaced"
    with pytest.raises(ValueError, match="is a device"):
        upscale_scene(pipe, scene, device, overwrite=True, **KW)
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.tif"]


@pytest.mark.parametrize("which", ["output", "uncertainty map"])
def test_the_commit_refuses_a_fifo_or_link_that_appeared_at_the_output_or_the_map(tmp_path, scene, pipe, which):
    target = tmp_path / "o.tif"
    kwargs = {k: v for k, v in KW.items() if k not in ("workers", "prior_only")}
    job = prepare_scene(scene, target, num_samples=2, num_inference_steps=1, **kwargs)
    with hold_work_folder(job):  # the windows of a run, then a FIFO where the commit goes
        from neurop_diff_diffusers.jobs.scene.engine import _run_scene

        name = target if which == "output" else job.uncertainty_path
        os.mkfifo(name)
        with pytest.raises(ValueError, match=f"{which} `.*` is a FIFO: only a regular file is replaced"):
            _run_scene(pipe, job, overwrite=True)
    assert stat.S_ISFIFO(os.lstat(name).st_mode)
    os.unlink(name)
    outside = tmp_path / "outside.tif"
    outside.write_bytes(b"keep")
    name.symlink_to(outside)
    with pytest.raises(ValueError, match="is a symbolic link"):
        assemble_and_commit(job, overwrite=True)
    assert outside.read_bytes() == b"keep" and name.is_symlink()
    leftovers = {p.name for p in tmp_path.iterdir()} - {"in.tif", "outside.tif", name.name, work_folder(target).name}
    assert leftovers == set()  # no map without its output, no temporary file


# --------------------------------------------------------------------------------------------------------------------
# The input: known by its bytes
# --------------------------------------------------------------------------------------------------------------------
def test_an_input_rewritten_with_the_same_size_and_time_is_not_resumed(tmp_path, pipe, capsys):
    src = _write(tmp_path / "in.tif", _smooth_scene(32, 32))
    target = tmp_path / "o.tif"
    folder = _interrupted(pipe, src, target)
    saved = src.stat()
    _write(src, _smooth_scene(32, 32, seed=5))  # another scene, same size and mtime
    os.utime(src, ns=(saved.st_atime_ns, saved.st_mtime_ns))
    assert src.stat().st_size == saved.st_size
    with pytest.raises(ValueError, match=r"other settings \(input\).*restart=True \(CLI: --restart\)"):
        upscale_scene(pipe, src, target, **KW)
    assert len(list(folder.glob("w*.npy"))) == 2  # kept until --restart
    message = _cli_error(capsys, src, "-o", target)
    assert re.search(r"other settings \([^)]*input", message) and "--restart" in message
    upscale_scene(pipe, src, target, restart=True, **KW)
    fresh = upscale_scene(pipe, src, tmp_path / "fresh.tif", **KW)
    assert target.read_bytes() == fresh.read_bytes()


# --------------------------------------------------------------------------------------------------------------------
# The journal and the window files: hostile until checked
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, reason",
    [
        ("[]", "is not a journal of this tool"),
        ('"x"', "is not a journal of this tool"),
        ('{"settings": [], "windows": 4}', "its settings are not an object"),
        ('{"settings": {}, "windows": -1}', "its window count is not an integer"),
        ('{"settings": {}, "windows": 4, "extra": 1}', "is not a journal of this tool"),
        ("[" * 100 + "]" * 100, "JSON nested 100 levels deep"),
        ("{" + " " * (2 * 1024 * 1024) + "}", "more than the 1048576 allowed"),
        (b"\xff\xfe", "is not UTF-8 text"),
        ("not json", "not valid JSON"),
    ],
    ids=["list", "string", "settings", "count", "extra", "deep", "large", "bytes", "text"],
)
def test_a_damaged_journal_is_one_line_naming_restart(tmp_path, scene, pipe, reference, capsys, content, reason):
    target = tmp_path / "o.tif"
    folder = _interrupted(pipe, scene, target)
    journal = folder / "journal.json"
    journal.write_bytes(content if isinstance(content, bytes) else content.encode())
    message = _cli_error(capsys, scene, "-o", target)
    assert reason in message and "--restart" in message and str(journal) in message
    assert journal.read_bytes() == (content if isinstance(content, bytes) else content.encode())
    upscale_scene(pipe, scene, target, restart=True, **KW)
    assert target.read_bytes() == reference and not folder.exists()


def test_a_journal_that_is_a_link_is_not_followed(tmp_path, scene, pipe, reference):
    target = tmp_path / "o.tif"
    folder = _interrupted(pipe, scene, target)
    outside = tmp_path / "outside.json"
    outside.write_text((folder / "journal.json").read_text())
    (folder / "journal.json").unlink()
    (folder / "journal.json").symlink_to(outside)
    with pytest.raises(ValueError, match="is a symbolic link: not followed.*--restart"):
        upscale_scene(pipe, scene, target, **KW)
    upscale_scene(pipe, scene, target, restart=True, **KW)
    assert target.read_bytes() == reference and outside.exists()


def _npy_header(shape, dtype="<f4", fortran=False) -> bytes:
    header = {"descr": dtype, "fortran_order": fortran, "shape": shape}
    text = repr(header).encode("latin1")
    text += b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


#: The first window of the 32 x 32 scene (a 16 px core and a 4 px halo, twice): its file's shape.
WINDOW = (3, *ScenePlan.create((32, 32), (64, 64), window=16, halo=4).windows()[0].out_shape)


@pytest.mark.parametrize(
    "content, reason",
    [
        (_npy_header((3, 100000, 100000)), f"not float32 {WINDOW}"),  # 112 GiB declared: never allocated
        (np.random.default_rng(0).bytes(5000), "not a saved window"),
        (_npy_header(WINDOW, "|O"), "holds object"),
        (_npy_header(WINDOW, fortran=True), "in Fortran order"),
        (_npy_header(WINDOW) + b"\x00" * 100, "not the"),  # truncated
        (_npy_header(WINDOW, "<f8") + b"\x00" * (8 * 3 * 24 * 24), "holds float64"),
        # the right header, values no model output has: never blended into the scene
        (_npy_header(WINDOW) + np.full(WINDOW, np.nan, dtype="<f4").tobytes(), "holds NaN or infinite values"),
        (_npy_header(WINDOW) + np.full(WINDOW, -np.inf, dtype="<f4").tobytes(), "holds NaN or infinite values"),
    ],
    ids=["huge", "random", "object", "fortran", "truncated", "float64", "nan", "inf"],
)
def test_a_damaged_window_file_is_recomputed_with_one_warning(tmp_path, scene, pipe, reference, content, reason):
    target = tmp_path / "o.tif"
    folder = _interrupted(pipe, scene, target)
    (folder / "w000000.npy").write_bytes(content)
    with pytest.raises(ValueError, match=rf"window file `{folder / 'w000000.npy'}` is damaged .*--restart") as err:
        load_window(folder, _first_window(scene, target), 3)
    assert reason in str(err.value) and "allow_pickle" not in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        upscale_scene(pipe, scene, target, **KW)
    damaged = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(damaged) == 1 and "w000000.npy" in damaged[0] and reason in damaged[0]
    assert target.read_bytes() == reference and not folder.exists()


def _first_window(scene, target):
    job = prepare_scene(scene, target, **{k: v for k, v in KW.items() if k != "workers"})
    window = job.plan.windows()[0]
    assert (3, *window.out_shape) == WINDOW
    return window


def test_a_window_file_linked_out_of_the_job_is_never_read(tmp_path, scene, pipe, reference):
    target = tmp_path / "o.tif"
    folder = _interrupted(pipe, scene, target, after=1)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.full(WINDOW, 0.5, dtype=np.float32))  # a valid window, of other values
    (folder / "w000001.npy").symlink_to(outside)
    with pytest.raises(ValueError, match="a symbolic link"):
        load_window(folder, prepare_scene(scene, target, scale=2, window=16, halo=4).plan.windows()[1], 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        upscale_scene(pipe, scene, target, **KW)
    assert any("w000001.npy: a symbolic link" in str(w.message) for w in caught)
    assert target.read_bytes() == reference  # blended from computed windows only
    assert np.load(outside).max() == 0.5 and not folder.exists()


# --------------------------------------------------------------------------------------------------------------------
# A commit killed midway: its temporary file swept by the next run of the output
# --------------------------------------------------------------------------------------------------------------------
def test_the_temporary_file_of_a_commit_killed_by_sigkill_is_swept_by_the_next_run(tmp_path, scene, pipe, reference):
    target = tmp_path / "o.tif"
    script = (
        "import os, signal, sys\n"
        "from neurop_diff_diffusers import build_pipeline\n"
        "from neurop_diff_diffusers.jobs.scene import cog, upscale_scene\n"
        "def killed(assembled, temp, resampling=None):\n"
        "    open(temp, 'wb').write(b'half a COG')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "cog.write_cog = killed\n"
        "pipe = build_pipeline('tiny', seed=0)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        f"upscale_scene(pipe, sys.argv[1], sys.argv[2], **{KW!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(scene), str(target)], env=env, timeout=600)
    assert done.returncode == -signal.SIGKILL
    temporary = [p.name for p in tmp_path.glob(".o.*.tif")]
    assert len(temporary) == 1 and len(temporary[0]) == len(".o.XXXXXXXX.tif")
    others = {".o.notmine.tif": b"a", ".other.abcd1234.tif": b"b", ".o.abcd1234.png": b"c"}  # not its pattern
    for name, data in others.items():
        (tmp_path / name).write_bytes(data)
    upscale_scene(pipe, scene, target, **KW)
    assert target.read_bytes() == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.tif", "o.tif", *others])


# --------------------------------------------------------------------------------------------------------------------
# A GeoTIFF under another name: its default output is a TIFF
# --------------------------------------------------------------------------------------------------------------------
def test_a_geotiff_named_png_gets_a_tif_output_by_default(tmp_path, capsys):
    src = _write(tmp_path / "in.tif", _smooth_scene(16, 16))
    src = src.rename(tmp_path / "scene.png")  # still a GeoTIFF: it takes the GeoTIFF path
    assert cli.main(["upscale", str(src), *CLI]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.png", "scene_x2.tif"]
    with rasterio.open(tmp_path / "scene_x2.tif") as out:
        assert out.crs is not None and out.shape == (32, 32)
    fifo = tmp_path / "pipe.png"  # a name that is not a regular file is never opened to choose the suffix
    os.mkfifo(fifo)
    assert cli.main(["upscale", str(fifo), *CLI]) == 2
    assert "pipe.png: not a regular file" in capsys.readouterr().err
