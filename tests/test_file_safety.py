"""The policy for what the tool writes or reads besides its input: local names, no links, no devices, folders it made,
JSON within budgets, names that cannot forge a line."""

import json
import os
import socket

import pytest

from neurop_diff_diffusers.file_safety import (
    WORK_MARKER,
    check_file_target,
    check_local_name,
    claim_work_folder,
    gdal_path,
    load_json_file,
    loads_bounded,
    make_dirs_inside,
    printable,
    read_bytes_no_follow,
)
from neurop_diff_diffusers.utils import atomic_write_text


@pytest.mark.parametrize("name", ["/vsimem/o.tif", "/vsizip/a.zip/b.tif", "http://x/o.tif", "GTIFF_DIR:1:x.tif"])
def test_gdal_special_output_names_are_refused_before_anything_is_made(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="only local file names are written"):
        atomic_write_text(name, "x")
    assert list(tmp_path.iterdir()) == []  # no /vsimem-like folder created, no temporary left


def test_a_local_name_with_a_colon_written_as_a_path_is_usable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_write_text("./GTIFF_DIR:1:x.tif", "data")
    assert (tmp_path / "GTIFF_DIR:1:x.tif").read_text() == "data"
    assert gdal_path("GTIFF_DIR:1:x.tif") == str(tmp_path / "GTIFF_DIR:1:x.tif")


def test_non_regular_targets_are_never_replaced(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(outside)
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for target, kind in [
            (folder, "a directory"),
            (fifo, "a FIFO"),
            (link, "a symbolic link"),
            (sock_path, "a socket"),
        ]:
            with pytest.raises(ValueError, match=f"is {kind}: only a regular file is replaced"):
                atomic_write_text(target, "new")
    finally:
        sock.close()
    assert outside.read_text() == "keep" and link.is_symlink() and fifo.exists() and folder.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "link.txt", "outside.txt", "s.sock"]


def test_a_device_is_named_as_such():
    with pytest.raises(ValueError, match="output `/dev/null` is a device"):
        check_file_target("/dev/null", "output")


def test_folders_below_the_declared_root_are_never_links(tmp_path):
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "sub").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="`.*sub` is a symbolic link: only a real folder is written into"):
        make_dirs_inside(root / "sub" / "deeper", root, "output folder")
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(ValueError, match="is not inside"):
        make_dirs_inside(tmp_path / "x", root, "output folder")
    assert make_dirs_inside(root / "a" / "b", root, "output folder").is_dir()


def test_work_folders_are_only_those_the_tool_made(tmp_path):
    work = claim_work_folder(tmp_path / ".o.neurop-diff-scene", "run-7")
    assert (work / WORK_MARKER).read_text() == "run-7"
    assert claim_work_folder(work, "run-8") == work  # its own folder: resumed, marker kept
    assert (work / WORK_MARKER).read_text() == "run-7"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(ValueError, match="was not made by this tool"):
        claim_work_folder(foreign, "run-1")
    link = tmp_path / "link"
    link.symlink_to(work)
    with pytest.raises(ValueError, match="is a symbolic link"):
        claim_work_folder(link, "run-1")
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(ValueError, match="is not a regular file|not a folder this tool made"):
        claim_work_folder(plain, "run-1")
    assert not claim_work_folder(tmp_path / "absent", "r", create=False).exists()


def test_reads_follow_no_link_and_respect_the_budget(tmp_path):
    outside = tmp_path / "outside.npy"
    outside.write_bytes(b"x" * 100)
    link = tmp_path / "w0.npy"
    link.symlink_to(outside)
    with pytest.raises(ValueError, match="is a symbolic link: not followed"):
        read_bytes_no_follow(link, 1000, "window file")
    with pytest.raises(ValueError, match="has 100 bytes or more, more than the 99 allowed"):
        read_bytes_no_follow(outside, 99, "window file")
    assert read_bytes_no_follow(outside, 100, "window file") == b"x" * 100


def test_deep_json_is_refused_before_parsing(tmp_path):
    deep = tmp_path / "model_index.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested 100000 levels deep, more than the 64 allowed"):
        load_json_file(deep, "model_index.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        loads_bounded("{", "journal")
    assert loads_bounded(json.dumps({"a": ["[", "{", '\\"']}), "journal") == {"a": ["[", "{", '\\"']}
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(ValueError, match="more than the 100 allowed"):
        load_json_file(big, "journal", max_bytes=100)


def test_names_cannot_forge_a_second_line():
    assert printable("all good.png\nneurop-diff: forged") == "all good.png\\nneurop-diff: forged"
    assert "\n" not in printable("a\r\n\x1b[31mred")
    assert printable("plain.tif") == "plain.tif"


def test_local_name_type_errors_name_the_argument():
    with pytest.raises(TypeError, match="output must be a str or os.PathLike, got int"):
        check_local_name(3, "output")
    with pytest.raises(ValueError, match="only local file names"):
        check_local_name("a\x00b", "output")


def test_checking_folders_below_the_root_makes_nothing(tmp_path):
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    assert make_dirs_inside(root / "a" / "b", root, "output folder", create=False) == root / "a" / "b"
    assert list(root.iterdir()) == []
    (root / "sub").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="is a symbolic link"):
        make_dirs_inside(root / "sub" / "deeper", root, "output folder", create=False)
    assert list(elsewhere.iterdir()) == []


def test_a_file_at_a_work_folder_is_named_a_file(tmp_path):
    (tmp_path / "work").write_text("x")
    with pytest.raises(ValueError, match="work folder `.*work` is a file, not a folder this tool made"):
        claim_work_folder(tmp_path / "work", "run")


def test_a_name_with_a_newline_cannot_forge_a_line_of_the_success_output(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from neurop_diff_diffusers.cli import main

    src = tmp_path / "all good.png\nneurop-diff: forged.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src, format="PNG")
    out = tmp_path / "o\nforged.png"
    assert main(["upscale", str(src), "--scale", "2", "--model", "preset:tiny", "--steps", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "\\n" in printed[0] and out.is_file()


def test_resume_and_split_files_are_read_within_budgets(tmp_path):
    import datasets

    from neurop_diff_diffusers.data.splits import split_parts
    from neurop_diff_diffusers.training.checkpointing import TRAINING_ARGS_FILE, read_training_args

    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / TRAINING_ARGS_FILE).write_text(deep)
    assert read_training_args(tmp_path) == {}  # damaged: as an unreadable file, never a RecursionError
    split = tmp_path / "split.json"
    split.write_text(deep)
    with pytest.raises(ValueError, match="`split_file`.*nested 100000 levels deep"):
        split_parts(datasets.Dataset.from_dict({"label": [0, 1]}), split_file=split)
