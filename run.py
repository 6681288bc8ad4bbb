"""Run the commands of train.txt and test.txt, one after another, stopping at the first that
fails: the same on Windows (PowerShell), macOS and Linux.

    python run.py train.txt test.txt    # the whole lab
    python run.py test.txt --from 7     # from its 7th command on (after fixing the 6th)
    python run.py test.txt --list       # number the commands, run nothing

Each line of a .txt file that is neither blank nor a comment (#) is one command, `python
<script>.py <flags>`, as you would paste it into a terminal; the script is the lab's (beside
this one), run with the Python that runs this one (your virtual environment's, whatever
`python` or `bash` would find); the paths in its flags are read from the current folder.
Shell syntax (pipes, `&&`, `set -e`, `\\` continuations, variables) is refused: it means
something else, or nothing, in each shell.
"""

from cli import UserError, parser, path_arg, positive_int, run

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from files import read_utf8

SHELL_ONLY = tuple("|&;<>$`\\*?")  # what bash, zsh and PowerShell read differently, or at all
HERE = Path(__file__).resolve().parent


def commands(path: str | Path) -> list:
    """[(line number, argv)] of a commands file: each line not blank or a comment, split as a
    shell splits quoted words; a UserError naming the line for anything but `python x.py ...`
    without shell syntax."""
    found = []
    for number, line in enumerate(read_utf8(path, "commands file").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        odd = [c for c in SHELL_ONLY if c in line]
        try:
            argv = shlex.split(line) if not odd else []
        except ValueError as e:
            raise UserError(f"{path}, line {number}: {e}") from None
        if len(argv) < 2 or argv[0] != "python" or not argv[1].endswith(".py"):
            why = "is not python <script>.py ..."
            if odd:
                slash = " (write paths with /, which Windows takes too)" if odd[0] == "\\" else ""
                why = f"holds {odd[0]!r}, shell syntax{slash}"
            raise UserError(f"{path}, line {number} {why}: {line.strip()[:80]}")
        found.append((number, argv))
    return found


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("files", nargs="+", type=path_arg, metavar="FILE", help="train.txt, test.txt")
    p.add_argument(
        "--from",
        dest="start",
        type=positive_int,
        default=1,
        metavar="N",
        help="start at the Nth command (counted over the files, as --list numbers them)",
    )
    p.add_argument("--list", action="store_true", help="number the commands and run nothing")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    todo = [(path, *command) for path in args.files for command in commands(path)]
    if args.start > len(todo):
        raise UserError(f"--from {args.start}: the files hold {len(todo)} commands")
    for n, (path, line, argv) in enumerate(todo, 1):
        shown = f"[{n}/{len(todo)}] {path}:{line}: {shlex.join(argv)}"
        if args.list or n < args.start:
            print(shown if args.list else f"{shown}  (skipped, --from {args.start})")
            continue
        print(f"\n{shown}", flush=True)
        again = f"python run.py {' '.join(args.files)} --from {n}"
        script = HERE / argv[1] if (HERE / argv[1]).is_file() else Path(argv[1])  # the lab's
        with subprocess.Popen([sys.executable, str(script), *argv[2:]]) as child:
            try:
                code = child.wait()
            except KeyboardInterrupt:  # the console's Ctrl+C reached the command too
                child.wait()  # it stops in its own time, its files whole
                raise KeyboardInterrupt(f"command {n}; continue with: {again}") from None
        if code:
            raise UserError(
                f"command {n} ({path}, line {line}) failed with exit code {code}; fix what its "
                f"error says, then continue with: {again}"
            )
    if not args.list:
        print(f"\nall {len(todo) - args.start + 1} commands succeeded")


if __name__ == "__main__":
    run(main, parse_args)
