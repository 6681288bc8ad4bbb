"""What every script shares on the command line: the error type, the entry point, the signals,
argument types and common flags, and the device.

    from cli import UserError, run, parser, number, resolve_device

Library code raises UserError for anything the user can fix (a missing file, a bad flag
value, a foreign checkpoint); `run` prints it as one `error: ...` line and exits 1, and so
does argparse for a bad flag. Ctrl+C, `kill` and a closed terminal print one line and exit
130. Nothing else in the project prints errors or calls SystemExit.

The platform's differences live here, each in one place: the signals it has (Windows has no
SIGHUP), the processes that may handle them (a script, never its DataLoader workers), a
console in another encoding or closed early, and the devices (CUDA, the Apple GPU, the CPU).
Every module imports cli first (pyproject.toml's isort sections), and cli imports nothing slow
(torch is imported where it is used), so its signal handlers are in place before the heavy
imports: a Ctrl+C or a `kill` while a script loads ends it at once with one line too.
"""

import argparse
import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WEIGHTS_DIR, OUTPUTS_DIR = "weights", "outputs"  # where the lab's scripts write by default
CLOSED_OUTPUT = "the standard output was closed (its reader, such as | head, went away)"
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130  # 130 = 128 + SIGINT, what shells report for Ctrl+C
# More loader processes than cores only contend for them (and PyTorch warns about it).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
# A `kill` and a closed terminal stop a script as Ctrl+C does; Windows has no SIGHUP.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)
DEVICES = ("cpu", "cuda", "mps")  # mps: the Apple GPU


class UserError(Exception):
    """An error the user can fix; its message says what is wrong and what to do."""


class Stopped(Exception):
    """This process stops because another process of the same torchrun run failed and has
    printed why: exit 1 without a line of its own."""


def is_first_process() -> bool:
    """The only process, or torchrun's first (RANK 0): the one that speaks for the run."""
    return os.environ.get("RANK", "0") == "0"


def leave_now(signum: int, frame) -> None:
    """A stop signal before `run` starts, while the imports load: one line and exit 130 at
    once. Raising there, as `interrupt` does, can leave a module half-made: an import run by
    C code may swallow the exception and go on (seen: numpy without np.subtract, then a
    traceback from matplotlib). Nothing is written before `run`, so nothing is lost."""
    if is_first_process():
        os.write(2, b"\ninterrupted\n")  # not sys.stderr: it may be mid-write
    os._exit(EXIT_INTERRUPTED)


def interrupt(signum: int, frame) -> None:
    """A termination signal, raised as Ctrl+C is, where the program is, so that every
    temporary file is removed on the way out."""
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def quiet_worker(worker_id: int | None = None) -> None:
    """A DataLoader worker's signals (its worker_init_fn): Ctrl+C and a closed terminal reach
    the whole process group, and the script alone answers them, stopping its workers as it
    ends; SIGTERM, the way a script or the OS stops a worker, ends it at once, quietly."""
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))


def one_line_interrupt(kind: type, value: BaseException, traceback) -> None:
    """sys.excepthook: a Ctrl+C that no `run` caught (during the imports) is one line; Python
    then exits as killed by SIGINT, which shells report as 130. Anything else as Python prints
    it."""
    if issubclass(kind, KeyboardInterrupt):
        print("\ninterrupted", file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, traceback)


if multiprocessing.parent_process() is None:  # a script (each torchrun process is one)
    sys.excepthook = one_line_interrupt
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, leave_now)  # until `run` starts
else:  # a worker started by spawn (Windows, macOS) imports cli before its worker_init_fn
    quiet_worker()


class Console:
    """sys.stdout or sys.stderr as `run` leaves it: text the console's encoding cannot show
    is written as \\uXXXX escapes, not raised as UnicodeEncodeError (a Windows console
    redirected to a file is cp1252), and a reader that went away (`| head`) stops the output,
    not the work: the script goes on to the end, its files whole, and says so once."""

    def __init__(self, stream):
        self.stream, self.reader_gone = stream, False
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")

    def write(self, text: str) -> int:
        return self._call("write", text) or len(text)

    def flush(self) -> None:
        self._call("flush")

    def _call(self, name: str, *args):
        if self.reader_gone:
            return None
        try:
            return getattr(self.stream, name)(*args)
        except OSError:  # BrokenPipeError; EINVAL on Windows
            self.reader_gone = True
            try:  # what Python would flush at exit now goes nowhere, without an error
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            if self.stream is sys.__stdout__:
                print(f"note: {CLOSED_OUTPUT}; the run goes on (Ctrl+C stops it)", file=sys.stderr)
            return None

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def run(main: Callable, parse_args: Callable) -> None:
    """main(parse_args()), the entry point of every script: a UserError becomes one
    `error: ...` line and exit 1; Ctrl+C, SIGTERM and SIGHUP one `interrupted` line (with what
    was saved, when main says so in the KeyboardInterrupt) and exit 130, printed by the first
    process only under torchrun; an operation the device lacks one line saying the way out."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, raised where the
    for sig in STOP_SIGNALS:  # program is, so that every temporary file is removed on the way
        signal.signal(sig, interrupt)
    sys.stdout, sys.stderr = Console(sys.stdout), Console(sys.stderr)
    try:
        main(parse_args())
    except UserError as e:
        print(f"error: {message(e)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except Stopped:
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt as e:
        if is_first_process():
            print(f"\ninterrupted{': ' + str(e) if e.args else ''}", file=sys.stderr)
        if main.__module__ == "__main__":  # a script (not a test calling run), about to end:
            # leave at once. Python raises KeyboardInterrupt wherever the program was, even
            # between a lock's acquire and its release, and the DataLoader's finalizers at exit
            # would wait forever on such a lock; every temporary file is gone already.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        sys.exit(EXIT_INTERRUPTED)
    except NotImplementedError as e:
        if "MPS" not in str(e):
            raise
        first = str(e).strip().splitlines()[0]
        print(
            f"error: {first}; set the environment variable PYTORCH_ENABLE_MPS_FALLBACK=1 to "
            "run such operations on the CPU, or use --device cpu",
            file=sys.stderr,
        )
        sys.exit(EXIT_ERROR)
    finally:
        sys.stdout, sys.stderr = sys.stdout.stream, sys.stderr.stream


def message(error: UserError) -> str:
    """The error's one line. A DataLoader worker's error reaches the main process with the
    worker's traceback as its text; the original message is on that text's last line."""
    text = str(error).strip()
    if "Traceback" not in text:
        return text
    return text.splitlines()[-1].split(f"{UserError.__name__}: ", 1)[-1]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows every flag's default, written once."""


class Parser(argparse.ArgumentParser):
    """argparse with the project's refusal: one `error:` line and exit 1, as for every other
    bad input, instead of a usage block and exit 2."""

    def error(self, text: str):
        print(f"error: {text} (python {self.prog} --help lists the flags)", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def parser(doc: str) -> argparse.ArgumentParser:
    return Parser(description=doc, formatter_class=HelpFormatter)


# ----------------------------------------------------------------------------- argument types


def number(kind: type, minimum: float, maximum: float = math.inf, strict: bool = False):
    """An argparse type: a finite `kind` in [minimum, maximum] (minimum excluded with strict),
    else argparse's one-line "argument --x: must be ..." error."""

    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        low_ok = value > minimum if strict else value >= minimum
        if not (math.isfinite(value) and low_ok and value <= maximum):
            low = f"above {minimum}" if strict else f"at least {minimum}"
            high = "" if maximum == math.inf else f" and at most {maximum}"
            raise argparse.ArgumentTypeError(f"must be {low}{high}, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int, non_negative_int = number(int, 1), number(int, 0)
seed_int = number(int, 0, 2**63 - 1)  # what torch.manual_seed accepts


def path_arg(text: str) -> str:
    """An argparse type for paths: `~` is the home folder (PowerShell and a quoted path leave
    it to the program); refused: the empty text, which would silently mean the current folder
    or the default, and a name that is not text (bytes a file system took but that no file
    written in UTF-8, a JSON result or a report, can name)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid UTF-8: rename it") from None
    return os.path.expanduser(text)


def has_suffix(path: str | Path, *suffixes: str) -> bool:
    """Whether the file name ends in one of `suffixes`, in any case (UP.ONNX is an .onnx)."""
    return Path(path).suffix.lower() in suffixes


def file_path(suffix: str) -> Callable:
    """An argparse type for the path of a file the script writes in one format: a path_arg
    ending in `suffix` (a checkpoint under an .onnx name would mislead whoever reads it)."""

    def check(text: str) -> str:
        path = path_arg(text)
        if not has_suffix(path, suffix):
            raise argparse.ArgumentTypeError(f"{text} must end in {suffix}")
        return path

    return check


positive_float, non_negative_float = number(float, 0, strict=True), number(float, 0)


# ----------------------------------------------------------------------------- common flags


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=path_arg, default="data", help="folder holding VOCdevkit/")


def add_num_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=DEFAULT_WORKERS,
        help="data loading processes (at most the CPU count by default)",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N or mps (the Apple GPU); none given: cuda if available, "
        "else mps, else cpu",
    )


# ----------------------------------------------------------------------------- devices


def resolve_device(name: str | None) -> "torch.device":
    """--device value -> torch.device; None means the machine's accelerator when PyTorch has
    one that works (a CUDA GPU, the Apple GPU), else the CPU."""
    import torch

    if name is None:
        found = (
            torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        )
        return torch.device(found.type if found is not None and found.type in DEVICES else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (try {', '.join(DEVICES)})") from None
    if device.type not in DEVICES:
        raise UserError(f"device {name!r} is not supported here (try {', '.join(DEVICES)})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda asked for, but PyTorch sees no CUDA GPU here (on Windows, PyPI's "
            "torch is the CPU build: README.md, Set-up)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but PyTorch sees no Apple GPU here")
    return device


def mixed_precision(device: "torch.device") -> bool:
    """Whether training autocasts to float16 with a GradScaler: on CUDA only. The Apple GPU
    trains in float32: its autocast has not run on a Mac here (docs/platforms.md)."""
    return device.type == "cuda"


def synchronize(device: "torch.device") -> None:
    """Wait for the device's queued work (CUDA and the Apple GPU run asynchronously), so that
    a timer read next measures it; nothing to wait for on the CPU."""
    import torch

    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def add_timing_args(p: argparse.ArgumentParser, size: int, runs: int) -> None:
    """--size and --runs of the ms/image measurement (metrics.ms_per_image)."""
    p.add_argument(
        "--size",
        type=number(int, 32, 4096),
        default=size,
        help="side of the square input timed for ms/image",
    )
    p.add_argument(
        "--runs",
        type=number(int, 1, 10_000),
        default=runs,
        help="timed passes, after warm-up; the median is kept",
    )


def add_eval_args(p: argparse.ArgumentParser, size: int) -> None:
    """The flags test_pretrained.py and test.py share; `size` is the timed input's side."""
    add_data_root(p)
    p.add_argument("--split", default="val", choices=("train", "val"), help="VOC split scored")
    add_device(p)
    p.add_argument(
        "--limit", type=positive_int, metavar="N", help="the first N images only; none given: all"
    )
    add_num_workers(p)
    add_timing_args(p, size, runs=20)
    p.add_argument(
        "--num-overlays", type=number(int, 0, 100), default=3, help="best and worst overlays, each"
    )
    p.add_argument(
        "--out-dir", type=path_arg, default=OUTPUTS_DIR, help="folder for the JSON and the images"
    )
    add_overwrite(p, "the results of an earlier run (JSON, table, panels)")


def add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")
