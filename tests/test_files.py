"""files.py: atomic writes that keep the old file, output checks, locks, UTF-8 text, JSON and
CSV, the schemas of what is read back."""

import cli
from cli import UserError

import ast
import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import files
from conftest import ROOT, load_script, run_python, run_script
from files import (
    AMOUNT,
    COUNT,
    FRACTION,
    FileInUse,
    ListOf,
    Maybe,
    OneOf,
    atomic_path,
    check_input,
    check_output,
    exclusive,
    mismatch,
    read_json,
    read_utf8,
    write_csv,
    write_json,
    write_text,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """A full disk in the middle of a write: the previous file is untouched."""
    path = tmp_path / "r.json"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(UserError, match="cannot write .*r.json: No space left on device"):
        with atomic_path(path) as tmp:
            tmp.write_text("half a file", encoding="utf-8")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text(encoding="utf-8") == "old" and os.listdir(tmp_path) == ["r.json"]


def test_ctrl_c_while_writing_leaves_no_temporary(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "r.json") as tmp:
        tmp.write_text("{", encoding="utf-8")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_only_the_writes_own_failure_becomes_cannot_write(tmp_path):
    """A closed pipe or any other error of the block is not the file's: it goes on as it is
    (a `| head` must not turn into "cannot write"), and the old file stays."""
    path = tmp_path / "r.json"
    path.write_text("old", encoding="utf-8")
    for error in (BrokenPipeError(errno.EPIPE, "Broken pipe"), ValueError("a bug")):
        with pytest.raises(type(error)), atomic_path(path) as tmp:
            tmp.write_text("new", encoding="utf-8")
            raise error
    assert path.read_text(encoding="utf-8") == "old" and os.listdir(tmp_path) == ["r.json"]


def test_a_full_disk_inside_a_nested_write_names_the_users_file_not_a_temporary(tmp_path):
    path = tmp_path / "model.onnx"
    with pytest.raises(UserError) as e, atomic_path(path) as outer, atomic_path(outer) as inner:
        inner.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(inner))
    assert str(e.value) == f"cannot write {path}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_a_file_held_open_is_retried_then_named_and_the_old_one_kept(tmp_path, monkeypatch):
    """Windows refuses to replace a file another program holds open (WinError 5 or 32, a
    PermissionError): simulated by os.replace failing so for a while."""
    path = tmp_path / "log.csv"
    path.write_text("old", encoding="utf-8")
    real, tries = os.replace, []

    def held_open(src, dst, limit):
        tries.append(dst)
        if len(tries) <= limit:
            raise PermissionError(errno.EACCES, "Access is denied")
        real(src, dst)

    monkeypatch.setattr(files, "REPLACE_WAITS_S", (0.001,) * 5)
    monkeypatch.setattr(os, "replace", lambda s, d: held_open(s, d, limit=3))
    write_text("new", path)  # closed again after 3 tries: written
    assert path.read_text(encoding="utf-8") == "new" and len(tries) == 4
    tries.clear()
    monkeypatch.setattr(os, "replace", lambda s, d: held_open(s, d, limit=99))
    with pytest.raises(FileInUse, match=f"cannot replace {path} .*open in another program"):
        write_text("newer", path)
    assert path.read_text(encoding="utf-8") == "new" and os.listdir(tmp_path) == ["log.csv"]
    assert len(tries) == len(files.REPLACE_WAITS_S) + 1


def test_json_writes_nan_and_infinities_as_null(tmp_path):
    write_json({"iou": [0.5, math.nan, math.inf]}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == {
        "iou": [0.5, None, None]
    }


def test_text_is_utf_8_whatever_the_locale_and_a_name_that_is_not_is_escaped(tmp_path):
    write_text("Ω ‘данные’\n", tmp_path / "a.md")
    assert (tmp_path / "a.md").read_bytes() == "Ω ‘данные’\n".encode()
    write_text("photo \udcff.jpg", tmp_path / "b.md")  # a file name's undecodable byte
    assert read_utf8(tmp_path / "b.md") == "photo \\udcff.jpg"


PRODUCT = sorted([*ROOT.glob("*.py"), *ROOT.glob("dev/*.py"), *ROOT.glob("tests/*.py")])


def unspecified_encodings(path: Path) -> list:
    """The calls of open() in text mode and of Path.read_text and .write_text that name no
    encoding."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        f, keywords = node.func, {k.arg for k in node.keywords}
        mode = node.args[1] if len(node.args) > 1 else None
        text_mode = mode is None or isinstance(mode, ast.Constant) and "b" not in str(mode.value)
        binary = not text_mode or "mode" in keywords
        text_call = (isinstance(f, ast.Attribute) and f.attr in ("read_text", "write_text")) or (
            isinstance(f, ast.Name) and f.id == "open" and not binary
        )
        if text_call and "encoding" not in keywords:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_every_text_file_is_read_and_written_as_utf_8():
    """On Windows the default is the ANSI code page: a file written there would not read
    back on a Mac, and a name in Cyrillic would not encode at all."""
    assert [line for path in PRODUCT for line in unspecified_encodings(path)] == []


def test_the_encoding_check_finds_a_read_without_one(tmp_path):
    (tmp_path / "m.py").write_text(
        "open('a')\nPath('b').read_text()\nopen('c', 'rb')\nopen('d', encoding='utf-8')\n",
        encoding="utf-8",
    )
    assert unspecified_encodings(tmp_path / "m.py") == ["m.py:1", "m.py:2"]


def test_output_paths_of_the_wrong_kind_are_refused(tmp_path):
    (tmp_path / "file").write_text("x", encoding="utf-8")
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


SIGTERM_DURING_A_WRITE = """
import os, signal, sys, time
import cli, files

def main(args):
    with files.atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("half of a new file", encoding="utf-8")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

cli.run(main, lambda: None)
"""


@pytest.mark.slow
def test_sigterm_during_a_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old", encoding="utf-8")
    proc = run_python("-c", SIGTERM_DURING_A_WRITE, path, timeout=60)
    assert proc.returncode == cli.EXIT_INTERRUPTED and "SIGTERM received" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert path.read_text(encoding="utf-8") == "old" and os.listdir(tmp_path) == ["out.json"]


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


HOLD_THE_LOCK = """
import sys, time
import files
with files.exclusive([sys.argv[1]]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_a_lock_is_refused_while_its_owner_lives_and_taken_once_it_is_killed(tmp_path):
    """The lock ends with its process, however it ends (kill -9 included: no stale lock to
    delete by hand), and the owner is never signalled (on Windows, signal 0 is Ctrl+C)."""
    output = tmp_path / "s.pth"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-c", HOLD_THE_LOCK, str(output)]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as owner:
        assert owner.stdout.readline() == "locked\n"
        with pytest.raises(UserError, match=f"another run is writing {output}"):
            with exclusive([tmp_path / "other.pth", output]):
                pass
        with pytest.raises(subprocess.TimeoutExpired):  # still alive: not signalled
            owner.wait(timeout=0.5)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    with exclusive([output]):  # taken over at once
        assert output.parent.joinpath(".s.pth.lock").exists()
    assert not output.exists()


def test_a_lock_is_one_per_output_and_a_second_holder_in_this_process_is_refused(tmp_path):
    a, b = tmp_path / "a" / "log.csv", tmp_path / "b.pth"
    with exclusive([a, b]):
        with pytest.raises(UserError, match=f"another run is writing {a}"):
            with exclusive([tmp_path / "c.pth", a]):
                pass
        with exclusive([tmp_path / "c.pth"]):  # another output: free
            pass
    with exclusive([a]):  # let go when the block ended
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.pth.lock", ".c.pth.lock", "a"]


def test_a_csv_has_every_column_of_every_row_in_order_of_first_appearance(tmp_path):
    write_csv(
        [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.0, "val_miou": 0.5}], tmp_path / "l"
    )
    lines = (tmp_path / "l").read_text(encoding="utf-8").splitlines()
    assert lines == ["epoch,loss,val_miou", "1,2.5,", "2,2.0,0.5"]


def test_an_output_that_is_a_device_or_a_pipe_is_refused_and_left_as_it_is(tmp_path):
    """Renaming a finished file over /dev/null or a FIFO would replace it with a file."""
    pipe = tmp_path / "results.json"
    os.mkfifo(pipe)
    for path in (pipe, Path("/dev/null")):
        with pytest.raises(UserError, match="is not a regular file"):
            write_json({"miou": 0.5}, path)
    assert pipe.is_fifo() and Path("/dev/null").is_char_device()


def test_an_input_says_what_it_is_instead_of_a_file(tmp_path):
    loop, dangling = tmp_path / "loop", tmp_path / "dangling"
    loop.symlink_to(loop)
    dangling.symlink_to(tmp_path / "gone")
    os.mkfifo(tmp_path / "fifo")
    for path, problem in [
        (tmp_path / "none", "does not exist$"),
        (dangling, "does not exist \\(a link to nothing\\)"),
        (loop, "too many levels of symbolic links"),
        (tmp_path, "is a folder"),
        (tmp_path / "fifo", "is not a regular file"),
    ]:
        with pytest.raises(UserError, match=f"^result {path}:? {problem}"):
            check_input(path, "result")


def test_a_text_far_larger_than_any_result_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_TEXT_BYTES", 100)
    (tmp_path / "t.md").write_text("x" * 101, encoding="utf-8")
    with pytest.raises(UserError, match="more than any file of the lab"):
        read_utf8(tmp_path / "t.md", "table")


SCHEMA = {"miou": FRACTION, "iou": ListOf(Maybe(FRACTION), 3), "params": COUNT, "ms": AMOUNT}
GOOD = {"miou": 0.5, "iou": [0.5, None, 1.0], "params": 7, "ms": 2.5}


def test_a_result_read_back_is_taken_when_it_is_what_the_lab_writes(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(GOOD), encoding="utf-8")
    assert read_json(tmp_path / "r.json", SCHEMA) == GOOD


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"miou": math.nan}, "entry 'miou': nan, not a number from 0 to 1"),
        ({"miou": 1.5}, "entry 'miou': 1.5, not a number from 0 to 1"),
        ({"iou": [0.5, -0.1, 0.2]}, "entry 'iou': item 1: -0.1"),
        ({"iou": [0.5, "high", 0.2]}, "entry 'iou': item 1: 'high', not a number"),
        ({"iou": [0.5]}, "entry 'iou': a list of 1 items, not 3"),
        ({"params": -3}, "entry 'params': -3, not a number from 0 to inf"),
        ({"params": True}, "entry 'params': True, not an integer"),
        ({"params": 7.0}, "entry 'params': 7.0, not an integer"),
        ({"ms": math.inf}, "entry 'ms': inf"),
        ({"ms": None}, "entry 'ms': None, not a number"),
        ({"ms": ...}, "entry 'ms' missing"),
    ],
)
def test_a_result_with_impossible_numbers_is_refused_naming_the_entry(tmp_path, change, problem):
    """Python's json reads NaN and Infinity; a hand-edited file can hold anything."""
    data = {k: v for k, v in {**GOOD, **change}.items() if v is not ...}
    (tmp_path / "r.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match=f"not what the lab's commands write \\({problem}"):
        read_json(tmp_path / "r.json", SCHEMA)


def test_a_schema_names_other_keys_and_choices():
    schema = {"kd": OneOf("none", "response"), ...: AMOUNT}
    assert mismatch({"kd": "none", "train_kl": 0.5}, schema) is None
    assert mismatch({"kd": "crd"}, schema) == "entry 'kd': 'crd', not one of none, response"
    assert mismatch({"kd": "none", "x": "a"}, schema) == "entry 'x': 'a', not a number"
    assert mismatch([], schema) == "a list, not an object"


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@given(JSON)
def test_any_json_value_is_either_what_the_schema_says_or_a_problem_never_an_exception(data):
    schema = {"miou": FRACTION, "iou": ListOf(Maybe(FRACTION)), "kd": OneOf("none"), ...: str}
    problem = mismatch(data, schema)
    assert problem is None or isinstance(problem, str)
    if problem is None:  # then each promise holds
        assert 0 <= data["miou"] <= 1 and data["kd"] == "none"
        assert all(x is None or 0 <= x <= 1 for x in data["iou"])


def test_a_damaged_result_json_is_one_line_through_the_script_that_reads_it(tmp_path):
    """What a user sees: report.py reading a hand-edited Step 1 result lists it as unusable."""
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "step1_fcn_resnet50.json").write_text('{"miou": NaN}', encoding="utf-8")
    proc = run_script("report.py", "--out-dir", out, "--weights-dir", tmp_path / "w")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "step1_fcn_resnet50.json`: not what the lab's commands write (entry 'miou'" in report


def test_lock_files_are_hidden_beside_their_output(tmp_path):
    """Hidden: make_submission.py packs nothing whose name starts with a dot."""
    assert files.lock_path(tmp_path / "w" / "s.pth") == tmp_path / "w" / ".s.pth.lock"
