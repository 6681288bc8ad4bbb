"""What every script shares on the command line: the error type, the entry point, argument
types and common flags, the device.

    from cli import UserError, run, parser, number, resolve_device

Library code raises UserError for anything the user can fix (a missing file, a bad flag
value, a foreign checkpoint); `run` prints it as one `error: ...` line and exits 1. Ctrl+C
prints one line and exits 130. Nothing else in the project prints errors or calls SystemExit.

Every module imports cli first (pyproject.toml's isort sections), and cli imports nothing slow
(torch is imported where it is used): a Ctrl+C while a script's imports load, before `run`
starts, is one line too (`one_line_interrupt`), not a traceback through torch's imports.
"""

import argparse
import math
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


class UserError(Exception):
    """An error the user can fix; its message says what is wrong and what to do."""


def run(main: Callable, parse_args: Callable) -> None:
    """main(parse_args()), the entry point of every script: a UserError becomes one
    `error: ...` line and exit 1; Ctrl+C one `interrupted` line (with what was saved, when
    main says so in the KeyboardInterrupt) and exit 130. SIGTERM and SIGHUP (a `kill`, a
    closed terminal) are handled as Ctrl+C is, so that every temporary file is removed on the
    way out; a closed pipe (`| head`) stops the script with one line on stderr saying so."""
    args = parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    try:
        main(args)
    except UserError as e:
        print(f"error: {message(e)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{': ' + str(e) if e.args else ''}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        print(f"stopped: {CLOSED_OUTPUT}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def one_line_interrupt(kind: type, value: BaseException, traceback) -> None:
    """sys.excepthook: a Ctrl+C that no `run` caught (during the imports) is one line; Python
    then exits as killed by SIGINT, which shells report as 130. Anything else as Python prints
    it."""
    if issubclass(kind, KeyboardInterrupt):
        print("\ninterrupted", file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, traceback)


sys.excepthook = one_line_interrupt


def interrupt(signum: int, frame) -> None:
    """A termination signal, raised as Ctrl+C is, where the program is."""
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def message(error: UserError) -> str:
    """The error's one line. A DataLoader worker's error reaches the main process with the
    worker's traceback as its text; the original message is on that text's last line."""
    text = str(error).strip()
    if "Traceback" not in text:
        return text
    return text.splitlines()[-1].split(f"{UserError.__name__}: ", 1)[-1]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows every flag's default, written once."""


def parser(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)


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
    """An argparse type for paths: any text but the empty one, which would silently mean the
    current folder or the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def file_path(suffix: str) -> Callable:
    """An argparse type for the path of a file the script writes in one format: a path_arg
    ending in `suffix` (a checkpoint under an .onnx name would mislead whoever reads it)."""

    def check(text: str) -> str:
        if Path(path_arg(text)).suffix != suffix:
            raise argparse.ArgumentTypeError(f"{text} must end in {suffix}")
        return text

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
        help="cpu, cuda or cuda:N; none given: cuda if available, else cpu",
    )


def resolve_device(name: str | None) -> "torch.device":
    """--device value -> torch.device; None means cuda when available, else cpu."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (try cpu or cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported here (try cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU here")
    return device


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
