"""cli.py: the entry point's one-line errors and exit codes, argument ranges, atomic writes."""

import cli
from cli import UserError, atomic_path, check_output, number, write_json

import argparse
import ast
import io
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import GUARD, ROOT, assert_limits, dest, documented_defaults, load_script, run_python
from model import save_file


def run_main(main) -> tuple:
    with pytest.raises(SystemExit) as e:
        cli.run(main, lambda: None)
    return e.value.code


def test_a_user_error_is_one_line_and_exit_1(capsys):
    def main(args):
        raise UserError("the thing is wrong; do this")

    assert run_main(main) == 1
    assert capsys.readouterr().err == "error: the thing is wrong; do this\n"


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    def main(args):
        raise KeyboardInterrupt("saved x.pth")

    assert run_main(main) == 130
    assert capsys.readouterr().err.strip() == "interrupted: saved x.pth"


def test_an_error_raised_in_a_dataloader_worker_keeps_its_one_line(capsys):
    def load(i):
        raise UserError(f"image {i} is damaged")

    loader = torch.utils.data.DataLoader(range(2), num_workers=1, collate_fn=load)
    batches = iter(loader)

    def main(args):
        next(batches)

    assert run_main(main) == 1
    assert capsys.readouterr().err == "error: image [0] is damaged\n"
    batches._shutdown_workers()  # now, not in a 5 s wait when the session ends


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "-1", "1e300", "many"])
def test_numbers_outside_their_range_or_not_finite_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        number(float, 0, 100)(text)
    if text != "1e300":  # with no upper bound, 1e300 is a number like another
        with pytest.raises(argparse.ArgumentTypeError):
            number(float, 0)(text)


def test_numbers_in_range_are_parsed():
    assert number(int, 1, 10)("10") == 10 and number(float, 0, strict=True)("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="above 0"):
        number(float, 0, strict=True)("0")


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
import cli

def main(args):
    with cli.atomic_path(sys.argv[1]) as tmp:
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


ENDLESS_OUTPUT = """
import cli

def main(args):
    while True:
        print("a line for | head")

cli.run(main, lambda: None)
"""


@pytest.mark.slow
def test_a_closed_pipe_ends_the_output_quietly_with_exit_1():
    """What `python test.py ... | head -1` meets: the reader goes, the next write fails."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), str(ROOT)]))
    command = [sys.executable, "-c", ENDLESS_OUTPUT]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        assert p.stdout.readline() == b"a line for | head\n"
        p.stdout.close()
        stderr = p.stderr.read().decode()
        assert p.wait(timeout=60) == cli.EXIT_ERROR
    assert stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError" at exit


@pytest.mark.parametrize(
    "script",
    [
        "train",
        "test",
        "test_pretrained",
        "benchmark",
        "export",
        "report",
        "make_submission",
        "dataset",
    ],
)
def test_help_shows_every_default_and_no_negative_flag_reads_true(script, capsys):
    with pytest.raises(SystemExit):
        load_script(script).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert not re.search(r"(?<!, )--no-[\w-]+ +[^-]*\(default: True\)", text)  # alone, negated
    for flag, default in {
        "train": [("--epochs", "100"), ("--weight-decay", "0.0001")],
        "test": [("--split", "val")],
        "benchmark": [("--onnx", "True")],
    }.get(script, []):
        assert re.search(rf"{flag}\b.*?\(default: {re.escape(default)}\)", text), flag


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", ""], "--out: must not be empty"),
        (["--seed", "-1"], "--seed: must be at least 0"),
        (["--seed", str(2**64)], "--seed: must be at least 0 and at most"),
        (["--tau", "1e-300"], "--tau: must be at least 0.1"),
    ],
)
def test_degenerate_and_empty_flag_values_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        load_script("train").parse_args(argv)
    assert message in capsys.readouterr().err


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


def test_importing_cli_loads_nothing_slow_and_every_module_imports_it_first():
    """A Ctrl+C while a script loads torch is one line only if cli (which sets the hook) came
    before torch: cli imports no torch, and each root module's first import is cli's."""
    proc = run_python("-c", "import sys, cli; print('torch' in sys.modules)")
    assert proc.stdout.strip() == "False"
    for path in sorted(ROOT.glob("*.py")):
        imports = [n for n in ast.parse(path.read_text()).body if isinstance(n, IMPORTS)]
        if path.name != "cli.py" and any("cli" in modules(n) for n in imports):
            assert modules(imports[0]) == ["cli"], path.name


IMPORTS = (ast.Import, ast.ImportFrom)


def modules(node) -> list:
    return [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]


def test_a_ctrl_c_during_the_imports_is_one_line():
    """What a script's top level meets when Ctrl+C comes while torch loads: one line, and the
    exit of a process stopped by SIGINT (130 in a shell)."""
    proc = run_python("-c", "import cli\nimport json\nraise KeyboardInterrupt")
    assert proc.stderr == "\ninterrupted\n" and proc.returncode == -signal.SIGINT
    proc = run_python("-c", "import cli\nraise ValueError('other errors keep their traceback')")
    assert "Traceback" in proc.stderr and proc.returncode == 1


def test_cuda_asked_for_without_a_gpu_is_one_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda asked for, but PyTorch sees no CUDA GPU"):
        cli.resolve_device("cuda")
    assert cli.resolve_device(None) == torch.device("cpu")


@pytest.mark.parametrize(
    "cpuinfo, name",
    [
        ("processor\t: 0\nmodel name\t: Some CPU: 8-Core @ 2GHz\n", "Some CPU: 8-Core @ 2GHz"),
        ("processor\t: 0\n", platform.processor() or platform.machine()),  # no model name
    ],
)
def test_the_cpu_is_named_by_cpuinfos_model_name_with_the_threads(monkeypatch, cpuinfo, name):
    monkeypatch.setattr(cli, "open", lambda path: io.StringIO(cpuinfo), raising=False)
    threads = torch.get_num_threads()
    assert cli.device_name(torch.device("cpu")) == f"{name} ({threads} threads)"


def test_a_lock_is_refused_while_its_owner_lives_and_the_owner_is_left_alone(tmp_path):
    lock = tmp_path / "out.lock"
    # A run as the user starts it: every signal at its default (a nohup'd parent ignores SIGHUP).
    sleeper = "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); print(flush=True)"
    sleeper += "; time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", sleeper], stdout=subprocess.PIPE) as owner:
        owner.stdout.readline()  # its handler is set
        lock.write_text(f"{owner.pid}\n")
        with pytest.raises(UserError, match=f"another run \\(process {owner.pid}\\)"):
            with cli.exclusive(lock):
                pass
        with pytest.raises(subprocess.TimeoutExpired):  # asked whether it lives, not signalled
            owner.wait(timeout=1)
        assert lock.read_text() == f"{owner.pid}\n"
        owner.kill()


def test_a_lock_holds_this_process_id_until_the_block_ends_then_goes(tmp_path):
    lock = tmp_path / "out.lock"
    with cli.exclusive(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError, match="another run"), cli.exclusive(lock):
            pass
    assert not lock.exists()
    lock.write_text("not a process id")  # unreadable: a stale lock, taken over
    with cli.exclusive(lock):
        assert lock.read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize(
    "flag, taken, refused",
    [
        ("--size", ("32", "4096"), ("31", "4097")),
        ("--runs", ("1", "10000"), ("0", "10001")),
        ("--num-overlays", ("0", "100"), ("-1", "101")),
    ],
)
def test_the_evaluation_flags_take_their_limits_and_refuse_what_lies_beyond(
    flag, taken, refused, capsys
):
    p = cli.parser("test")
    cli.add_eval_args(p, size=512)
    assert_limits(p.parse_args, flag, taken, refused, capsys)


def test_the_evaluation_defaults_are_the_documented_ones():
    p = cli.parser("test")
    cli.add_eval_args(p, size=512)
    args = vars(p.parse_args([]))
    documented = documented_defaults(args)
    for flag in ("--runs", "--num-overlays"):
        assert args[dest(flag)] == int(documented[flag]), flag
