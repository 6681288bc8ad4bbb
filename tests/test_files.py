"""files.py: atomic writes that keep the old file, output checks, locks, JSON, checkpoints."""

import cli
from cli import UserError

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_script, run_python
from files import (
    NUMBER,
    atomic_path,
    check_output,
    exclusive,
    read_json,
    save_file,
    write_csv,
    write_json,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """A full disk in the middle of torch.save: the previous checkpoint is untouched."""
    path = tmp_path / "s.pth"
    save_file({"epoch": 1}, path)
    before = path.read_bytes()

    def half_written(obj, f):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(UserError, match="cannot write .*s.pth: No space left on device"):
        save_file({"epoch": 2}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["s.pth"]


def test_ctrl_c_while_writing_leaves_no_temporary(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "r.json") as tmp:
        tmp.write_text("{")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_json_writes_nan_and_infinities_as_null(tmp_path):
    write_json({"iou": [0.5, math.nan, math.inf]}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"iou": [0.5, None, None]}


def test_output_paths_of_the_wrong_kind_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file; give the path of a folder"):
        check_output(tmp_path / "file", folder=True)
    with pytest.raises(UserError, match="is a folder; give the path of a file"):
        check_output(tmp_path, folder=False)
    with pytest.raises(UserError, match="cannot create the folder"):
        check_output(tmp_path / "file" / "below" / "out.json")


def test_the_missing_folders_of_an_output_are_made_and_nothing_is_left_in_them(tmp_path):
    assert check_output(tmp_path / "a" / "b" / "out.json") == tmp_path / "a" / "b" / "out.json"
    assert check_output(tmp_path / "c" / "d", folder=True).is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone


def test_a_failing_torch_save_is_one_error_and_the_old_file_stays(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError, not an OSError."""
    path = tmp_path / "ckpt.pth"
    path.write_bytes(b"the previous checkpoint")

    def full_disk(obj, f):
        Path(f).write_bytes(b"half")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        UserError, match="cannot write .*ckpt.pth: .*full disk.*PytorchStreamWriter"
    ):
        save_file({"model": {}}, path)
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temporary file left


SIGTERM_DURING_A_WRITE = """
import os, signal, sys, time
import cli, files

def main(args):
    with files.atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("half of a new file")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

cli.run(main, lambda: None)
"""


@pytest.mark.slow
def test_sigterm_during_a_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    proc = run_python("-c", SIGTERM_DURING_A_WRITE, path, timeout=60)
    assert proc.returncode == cli.EXIT_INTERRUPTED and "SIGTERM received" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_folder_that_takes_no_new_file_is_refused_before_any_work(tmp_path):
    """/proc/self exists but takes no file, root or not: what a read-only folder is for a user.
    train.py stops on it before reading any data."""
    with pytest.raises(UserError, match="cannot write into /proc/self"):
        check_output("/proc/self/student.pth")
    with pytest.raises(UserError, match="cannot write into /proc/self"):
        check_output("/proc/self", folder=True)
    check_output(tmp_path / "new" / "student.pth")  # a folder that does: created, left empty
    assert list((tmp_path / "new").iterdir()) == []
    proc = load_script("train")
    with pytest.raises(UserError, match="cannot write into /proc/self"):
        proc.main(proc.parse_args(["--out", "/proc/self/s.pth", "--data-root", "nowhere"]))


def test_a_lock_is_refused_while_its_owner_lives_and_the_owner_is_left_alone(tmp_path):
    lock = tmp_path / "out.lock"
    # A run as the user starts it: every signal at its default (a nohup'd parent ignores SIGHUP).
    sleeper = "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); print(flush=True)"
    sleeper += "; time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", sleeper], stdout=subprocess.PIPE) as owner:
        owner.stdout.readline()  # its handler is set
        lock.write_text(f"{owner.pid}\n")
        stale = f"process {owner.pid} may be another program\\), delete {lock}"
        with pytest.raises(UserError, match=f"another run \\(process {owner.pid}\\).*{stale}"):
            with exclusive(lock):
                pass
        with pytest.raises(subprocess.TimeoutExpired):  # asked whether it lives, not signalled
            owner.wait(timeout=1)
        assert lock.read_text() == f"{owner.pid}\n"
        owner.kill()


def test_a_lock_holds_this_process_id_until_the_block_ends_then_goes(tmp_path):
    lock = tmp_path / "out.lock"
    with exclusive(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError, match="another run"), exclusive(lock):
            pass
    assert not lock.exists()
    lock.write_text("not a process id")  # unreadable: a stale lock, taken over
    with exclusive(lock):
        assert lock.read_text() == f"{os.getpid()}\n"


def test_a_csv_has_every_column_of_every_row_in_order_of_first_appearance(tmp_path):
    write_csv(
        [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.0, "val_miou": 0.5}], tmp_path / "l"
    )
    lines = (tmp_path / "l").read_text().splitlines()
    assert lines == ["epoch,loss,val_miou", "1,2.5,", "2,2.0,0.5"]


def test_an_output_that_is_a_device_or_a_pipe_is_refused_and_left_as_it_is(tmp_path):
    """Renaming a finished file over /dev/null or a FIFO would replace it with a file."""
    pipe = tmp_path / "results.json"
    os.mkfifo(pipe)
    for path in (pipe, Path("/dev/null")):
        with pytest.raises(UserError, match="is not a regular file"):
            write_json({"miou": 0.5}, path)
    assert pipe.is_fifo() and Path("/dev/null").is_char_device()


SCHEMA = {"miou": NUMBER, "iou": list, "params": int, "ms_per_image": NUMBER}
GOOD = {"miou": 0.5, "iou": [0.5, None, 1.0], "params": 7, "ms_per_image": 2.5}


def test_a_result_read_back_is_taken_when_it_is_what_the_lab_writes(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(GOOD))
    assert read_json(tmp_path / "r.json", SCHEMA) == GOOD


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"miou": math.nan}, "'miou' is nan, not a number from 0 to 1"),
        ({"miou": 1.5}, "'miou' is 1.5, not a number from 0 to 1"),
        ({"iou": [0.5, -0.1]}, "'iou' is -0.1"),
        ({"iou": [0.5, "high"]}, "'iou' holds 'high', not a number"),
        ({"params": -3}, "'params' is -3, not a number from 0 to inf"),
        ({"params": True}, "'params' missing or of the wrong type"),
        ({"ms_per_image": math.inf}, "'ms_per_image' is inf"),
        ({"ms_per_image": None}, "'ms_per_image' missing or of the wrong type"),
    ],
)
def test_a_result_with_impossible_numbers_is_refused_naming_the_entry(tmp_path, change, problem):
    """Python's json reads NaN and Infinity; a hand-edited file can hold anything."""
    (tmp_path / "r.json").write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(UserError, match=f"not what the lab's commands write \\(entry {problem}"):
        read_json(tmp_path / "r.json", SCHEMA)
