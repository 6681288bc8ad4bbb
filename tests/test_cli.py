"""cli.py: the entry point's one-line errors and exit codes, argument ranges, atomic writes."""

import cli
from cli import UserError, number

import argparse
import ast
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import GUARD, ROOT, assert_limits, dest, documented_defaults, load_script, run_python


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


ENDLESS_OUTPUT = """
import cli

def main(args):
    while True:
        print("a line for | head")

cli.run(main, lambda: None)
"""


@pytest.mark.slow
def test_a_closed_pipe_stops_with_one_line_saying_so_and_exit_1():
    """What `python test.py ... | head -1` meets: the reader goes, the next write fails."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), str(ROOT)]))
    command = [sys.executable, "-c", ENDLESS_OUTPUT]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        assert p.stdout.readline() == b"a line for | head\n"
        p.stdout.close()
        stderr = p.stderr.read().decode()
        assert p.wait(timeout=60) == cli.EXIT_ERROR
    # no traceback, no "Exception ignored ... BrokenPipeError" at exit
    assert stderr == f"stopped: {cli.CLOSED_OUTPUT}\n"


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
