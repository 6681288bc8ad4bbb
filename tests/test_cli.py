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


LONG_OUTPUT = """
import sys
import cli, files

def main(args):
    for _ in range(10_000):
        print("a line for | head")
    files.write_text("the finished work", sys.argv[1])
    print("done")

cli.run(main, lambda: None)
"""


@pytest.mark.slow
def test_a_closed_pipe_stops_the_output_not_the_work_and_says_so_once(tmp_path):
    """What `python export.py ... | head -1` meets: the reader goes, the next write fails; the
    script goes on to the end and writes its file, with one line on stderr, no traceback and
    no "Exception ignored ... BrokenPipeError" at exit."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), str(ROOT)]))
    command = [sys.executable, "-c", LONG_OUTPUT, str(tmp_path / "work.txt")]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        assert p.stdout.readline() == b"a line for | head\n"
        p.stdout.close()
        stderr = p.stderr.read().decode()
        assert p.wait(timeout=60) == 0
    assert stderr == f"note: {cli.CLOSED_OUTPUT}; the run goes on (Ctrl+C stops it)\n"
    assert (tmp_path / "work.txt").read_text(encoding="utf-8") == "the finished work"


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
        imports = [
            n for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, IMPORTS)
        ]
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


@pytest.mark.parametrize("name", ["SIGINT", *(sig.name for sig in cli.STOP_SIGNALS)])
def test_a_signal_while_the_imports_load_ends_the_script_at_once_raising_nothing(name):
    """The handlers are in place once cli is imported, before torch, and until `run` starts
    a stop signal is one line and exit 130 at once: nothing is raised into the import under
    way, where C code may swallow it and leave a module half-made (dev/hostile.py saw numpy
    without np.subtract, then a matplotlib traceback)."""
    script = (
        f"import cli, os, signal, time\ntry:\n    os.kill(os.getpid(), signal.{name})\n"
        "    time.sleep(10)\nexcept BaseException:\n    print('raised')\n"
    )
    proc = run_python("-c", script)
    assert (proc.stdout, proc.stderr, proc.returncode) == ("", "\ninterrupted\n", 130)


WITHOUT_SIGHUP = """
import runpy, signal, sys
del signal.SIGHUP  # as on Windows
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_script_runs_as_on_a_windows_console_without_sighup_and_in_cp1252(tmp_path):
    """Windows' signal module has no SIGHUP (a script that asked for it would stop at once),
    and a Windows console redirected to a file writes cp1252, which has no Cyrillic: the
    folder's name is printed escaped, not raised as a traceback."""
    folder = tmp_path / "данные"
    proc = run_python(
        "-c",
        WITHOUT_SIGHUP,
        ROOT / "dataset.py",
        "--fake-voc",
        folder,
        "--num-images",
        2,
        env={"PYTHONIOENCODING": "cp1252"},
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "wrote a SYNTHETIC dataset" in proc.stdout and "\\u0434\\u0430\\u043d" in proc.stdout
    assert (folder / "VOCdevkit").is_dir()


def test_cuda_asked_for_without_a_gpu_is_one_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda asked for, but PyTorch sees no CUDA GPU"):
        cli.resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device mps asked for, but PyTorch sees no Apple GPU"):
        cli.resolve_device("mps")
    with pytest.raises(UserError, match="device 'xla' is not supported here"):
        cli.resolve_device("xla")


@pytest.mark.parametrize("found, expected", [(None, "cpu"), ("cuda", "cuda"), ("mps", "mps")])
def test_the_default_device_is_the_machines_accelerator_else_the_cpu(monkeypatch, found, expected):
    """A Mac's Apple GPU (mocked here: no such machine) is taken as a CUDA GPU is."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: found is not None)
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda *a: torch.device(found or "cpu")
    )
    assert cli.resolve_device(None) == torch.device(expected)


def test_an_operation_the_apple_gpu_lacks_is_one_line_with_the_way_out(capsys):
    def main(args):
        raise NotImplementedError(
            "The operator 'aten::foo' is not currently implemented for the MPS device. If you "
            "want this op to be added...\nmore lines"
        )

    assert run_main(main) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'aten::foo' is not currently implemented for the MPS" in err
    assert "PYTORCH_ENABLE_MPS_FALLBACK=1" in err and "--device cpu" in err


def test_a_bad_flag_is_one_line_and_exit_1(capsys):
    with pytest.raises(SystemExit) as e:
        load_script("train").parse_args(["--epochs", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: argument --epochs: must be at least 1") and "--help" in err


@pytest.mark.parametrize("text", ["~/x.pth", "~"])
def test_a_path_starting_with_a_tilde_is_in_the_home_folder(text):
    """PowerShell, and bash for a quoted path, pass ~ to the program as it is."""
    assert cli.path_arg(text) == os.path.expanduser(text) != text


def test_a_path_that_is_not_text_is_refused_and_a_suffix_is_read_in_any_case():
    with pytest.raises(argparse.ArgumentTypeError, match="not valid UTF-8"):
        cli.path_arg("photo\udcff.pth")
    assert cli.file_path(".onnx")("UP.ONNX") == "UP.ONNX"
    with pytest.raises(argparse.ArgumentTypeError, match="must end in .onnx"):
        cli.file_path(".onnx")("up.onx")


def test_a_dataloader_worker_leaves_the_signals_to_its_script_and_ends_on_sigterm():
    """Ctrl+C, a `kill` of the group and a closed terminal reach every process of the group:
    the workers leave them to the script; SIGTERM (how a worker is stopped) ends one quietly."""
    proc = run_python(
        "-c",
        "import os, signal, cli\ncli.quiet_worker(0)\n"
        "for s in (signal.SIGINT, signal.SIGHUP): os.kill(os.getpid(), s)\n"
        "print('alive', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\nprint('not here')",
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "alive\n", "")


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
