"""Every file the project writes, and every text file it reads back, in one room: outputs
written atomically, the locks of the outputs, text in UTF-8, JSON and CSV, and the schemas
that what is read back must match. Checkpoints are checkpoints.py's.

    from files import atomic_path, exclusive, write_json, read_json, mismatch

The rule for outputs: each is written to a temporary file beside it and renamed over it only
when whole, so a crash, Ctrl+C or a full disk leaves the old file or the new one, never half;
while a run writes, it holds a lock on each of its outputs, which the operating system lets go
when the run ends, however it ends. Every text file is UTF-8, whatever the machine's locale.
"""

from cli import UserError

import contextlib
import csv
import errno
import io
import json
import math
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import filelock

ENCODING = "utf-8"  # of every text file, on every OS (Windows' default is its ANSI code page)
MAX_TEXT_BYTES = 16 * 2**20  # a lab's result or table is kilobytes; beyond, it is not one
# A file that another program holds open (Excel, an image viewer) cannot be replaced on
# Windows: the rename is retried for about 3 s, then refused naming the file.
REPLACE_WAITS_S = (0.1, 0.2, 0.4, 0.8, 1.6)
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


class FileInUse(UserError):
    """An output that another program holds open, so that it cannot be replaced."""


# ----------------------------------------------------------------------------- writing outputs


def check_output(path: str | Path, folder: bool = False) -> Path:
    """Fail now, not after an hour of work, when `path` cannot be written: a folder where a
    file goes (or the reverse), a parent that is a file, a folder that takes no new file
    (read-only, or not ours). Creates the missing folders; a file is created there and
    deleted at once to know."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise UserError(
            f"{path} is {'a file' if folder else 'a folder'}; "
            f"give the path of a {'folder' if folder else 'file'}"
        )
    if path.exists() and not (folder or path.is_file()):  # renaming over it would replace it
        raise UserError(f"{path} is not a regular file (a device, a pipe?); give a file's path")
    directory = path if folder else path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder for {path}: {e.strerror or e}") from None
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as e:
        raise UserError(f"cannot write into {directory}: {e.strerror or e}") from None
    return path


_SHOWN = {}  # temporary path -> the path the user named, for an atomic_path inside another


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; it replaces `path` only when the block
    ends without error, and is deleted otherwise (disk full, Ctrl+C): a reader finds the old
    file or the new one, never half of one. The temporary name keeps the suffix, so
    matplotlib and zipfile still see what they write. Only the failure of this write (the
    temporary file, a full disk) or of the rename becomes a UserError naming `path`; any other
    error of the block goes on as it is."""
    path = check_output(path)
    shown = _SHOWN.get(path, path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    _SHOWN[tmp] = shown
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno not in WRITE_ERRNOS and e.filename not in (str(tmp), tmp):
                raise
            raise UserError(f"cannot write {shown}: {e.strerror or e}") from None
        replace(tmp, path, shown)
    finally:
        _SHOWN.pop(tmp, None)
        tmp.unlink(missing_ok=True)


def replace(tmp: Path, path: Path, shown: Path) -> None:
    """os.replace(tmp, path), retried while another program holds `path` open (Windows)."""
    for wait in (*REPLACE_WAITS_S, None):
        try:
            os.replace(tmp, path)
            return
        except PermissionError as e:
            if wait is None:
                raise FileInUse(
                    f"cannot replace {shown} ({e.strerror or e}): is it open in another program "
                    "(a spreadsheet, an image viewer)? Close it and run again"
                ) from None
            time.sleep(wait)
        except OSError as e:
            raise UserError(f"cannot write {shown}: {e.strerror or e}") from None


def lock_path(output: str | Path) -> Path:
    """The lock file of an output: hidden beside it, so no listing or zip takes it."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


@contextlib.contextmanager
def exclusive(outputs: list) -> Iterator[None]:
    """Hold a lock on each of a run's `outputs` for the block: a second run writing any of the
    same files is refused while the first lives. The locks are the operating system's
    (filelock: fcntl on Linux and macOS, msvcrt on Windows): they end with the process that
    holds them, killed or not, and no other process is ever signalled or asked about."""
    with contextlib.ExitStack() as stack:
        for output in sorted({Path(p) for p in outputs}):
            check_output(output, folder=output.is_dir())  # its folder made, if missing
            lock = filelock.FileLock(lock_path(output), timeout=0)
            try:
                lock.acquire()
            except filelock.Timeout:
                raise UserError(
                    f"another run is writing {output} (it holds {lock_path(output)}); wait for "
                    "it to end, or choose other output paths"
                ) from None
            except OSError as e:
                raise UserError(f"cannot lock {output}: {e.strerror or e}") from None
            stack.callback(lock.release)
        yield


def check_run_outputs(
    outputs: list, cache: str | None, overwrite: bool, resumed: list | None = None
) -> None:
    """Before a training run: refuse to replace any of its `outputs` (the best and last
    checkpoints, the log, the plot) unless --overwrite: a log of the same name may be another
    run's, from another --out folder. With --resume (`resumed`: the history of the run it
    continues), its checkpoints are replaced, and its log and plot only if the log there is
    its own (the CSV of the first epochs of that history). Fail now on an output that cannot be
    written, not after the first epoch, and on the folder where a teacher cache will go."""
    outputs = [Path(p) for p in outputs]
    found = [p for p in outputs if p.exists()] if not overwrite else []
    if resumed is not None and found:
        log, written = outputs[2], [csv_text(resumed[:n]) for n in range(1, len(resumed) + 1)]
        own = log.is_file() and log.stat().st_size < MAX_TEXT_BYTES and read_utf8(log) in written
        found = [p for p in found if p not in outputs[:2] and not own]
    if found and resumed is None:
        raise UserError(
            f"{', '.join(map(str, found))} already exist(s); use --resume to continue that run or "
            "--overwrite to start over (or another --out or --out-dir)"
        )
    if found:
        raise UserError(
            f"{', '.join(map(str, found))} already exist(s) and are not the log of the run "
            "--resume continues (another run's?); use another --out-dir, or --overwrite"
        )
    for path in outputs:
        check_output(path)
    if cache is not None and not Path(cache).exists():
        check_output(Path(cache).parent, folder=True)  # where it will be built


def write_text(text: str, path: str | Path) -> None:
    """UTF-8 text, atomically; a character UTF-8 cannot hold (a file name's undecodable
    byte) as a backslash escape."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=ENCODING, errors="backslashreplace")


def write_json(obj: dict, path: str | Path) -> None:
    """JSON with NaN and infinities written as null (they are not JSON), atomically."""

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return [clean(v) for v in x] if isinstance(x, (list, tuple)) else x

    write_text(json.dumps(clean(obj), indent=2) + "\n", path)


def csv_text(rows: list) -> str:
    """Rows (dicts) as CSV, the columns in order of first appearance."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_csv(rows: list, path: str | Path) -> None:
    write_text(csv_text(rows), path)


# ----------------------------------------------------------------------------- reading back


def check_input(path: str | Path, what: str) -> Path:
    """`path` when it is a regular file it may read; else a UserError saying what it is
    instead (missing, a link to nothing, a link loop, a folder, a device, forbidden)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows links: a loop or a link to nothing fails here
    except OSError as e:
        if e.errno == errno.ENOENT:
            link = " (a link to nothing)" if path.is_symlink() else ""
            raise UserError(f"{what} {path} does not exist{link}") from None
        raise UserError(f"{what} {path}: {(e.strerror or str(e)).lower()}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, a pipe?)"
        raise UserError(f"{what} {path} is {kind}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path} cannot be read (permission denied)")
    return path


def read_utf8(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file of at most MAX_TEXT_BYTES, or a UserError naming it."""
    path = check_input(path, what)
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise UserError(
            f"{what} {path} is {path.stat().st_size / 2**20:.0f} MiB, more than any file of "
            f"the lab ({MAX_TEXT_BYTES // 2**20} MiB): not one of its results"
        )
    try:
        return path.read_text(encoding=ENCODING)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path}: unreadable ({e})") from None


def read_json(path: str | Path, schema: dict, what: str = "result") -> dict:
    """The JSON object at `path` matching `schema` (mismatch), or a UserError."""
    try:
        data = json.loads(read_utf8(path, what))
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    problem = mismatch(data, schema)
    if problem:
        raise UserError(f"{path}: not what the lab's commands write ({problem})")
    return data


# ----------------------------------------------------------------------------- schemas


class Number:
    """A finite int or float (never a bool) from `low` to `high`; an int if `integer`."""

    def __init__(self, low: float = 0, high: float = math.inf, integer: bool = False):
        self.low, self.high, self.integer = low, high, integer

    def problem(self, x) -> str | None:
        kinds = int if self.integer else (int, float)
        if isinstance(x, bool) or not isinstance(x, kinds):
            return f"{x!r:.40}, not {'an integer' if self.integer else 'a number'}"
        if not (math.isfinite(x) and self.low <= x <= self.high):
            return f"{x!r}, not a number from {self.low} to {self.high}"
        return None


class OneOf:
    def __init__(self, *values):
        self.values = values

    def problem(self, x) -> str | None:
        return None if x in self.values else f"{x!r:.40}, not one of {', '.join(self.values)}"


class Maybe:
    """None, or what `schema` says."""

    def __init__(self, schema):
        self.schema = schema

    def problem(self, x) -> str | None:
        return None if x is None else _problem(x, self.schema)


class ListOf:
    """A list of `length` items (any number from `min_length` if None), each `item`."""

    def __init__(self, item, length: int | None = None, min_length: int = 0):
        self.item, self.length, self.min_length = item, length, min_length

    def problem(self, x) -> str | None:
        if not isinstance(x, list):
            return f"a {type(x).__name__}, not a list"
        if (self.length is not None and len(x) != self.length) or len(x) < self.min_length:
            wanted = self.length if self.length is not None else f"at least {self.min_length}"
            return f"a list of {len(x)} items, not {wanted}"
        for i, value in enumerate(x):
            if p := _problem(value, self.item):
                return f"item {i}: {p}"
        return None


FRACTION, AMOUNT, COUNT = Number(0, 1), Number(0), Number(0, integer=True)


def mismatch(data, schema: dict) -> str | None:
    """None when `data` matches `schema`, else what is wrong, for the first entry that is not
    as it says. A schema is a dict {key: schema of its value} (every key required; the key
    `...` gives the schema of any other key), a type (bool is no int), a Number, OneOf, Maybe
    or ListOf."""
    return _problem(data, schema)


def _problem(x, schema) -> str | None:
    if isinstance(schema, dict):
        if not isinstance(x, dict):
            return f"a {type(x).__name__}, not an object"
        for key, value in x.items() if ... in schema else ():
            if key not in schema and (p := _problem(value, schema[...])):
                return f"entry {key!r}: {p}"
        for key, value_schema in schema.items():
            if key is ...:
                continue
            if key not in x:
                return f"entry {key!r} missing"
            if p := _problem(x[key], value_schema):
                return f"entry {key!r}: {p}"
        return None
    if isinstance(schema, (Number, OneOf, Maybe, ListOf)):
        return schema.problem(x)
    kinds = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(x, bool) and bool not in kinds and {int, float} & set(kinds):
        return f"{x!r}, not a number"
    return None if isinstance(x, schema) else f"a {type(x).__name__}, of the wrong type"
