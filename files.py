"""Every file the project writes or reads back, in one room: outputs written atomically, the
lock of a run, JSON and CSV, and checkpoints (read without running code, checked entry by entry,
and the training state that --resume restores).

    from files import atomic_path, write_json, save_file, load_file, read_checkpoint

The rule for outputs: each is written to a temporary file beside it and renamed over it only
when whole, so a crash, Ctrl+C or a full disk leaves the old file or the new one, never half.
"""

from cli import UserError

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

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


def check_run_outputs(outputs: list, cache: str | None, replaces: bool) -> None:
    """Before a training run: refuse to replace any of its `outputs` (checkpoints, log, plot)
    unless `replaces` (--resume, --overwrite): a log of the same name may be another run's,
    from another --out folder. Fail now on an output that cannot be written, not after the
    first epoch, and on the folder where a teacher cache will go."""
    found = [str(path) for path in outputs if Path(path).exists()]
    if found and not replaces:
        raise UserError(
            f"{', '.join(found)} already exist(s); use --resume to continue that run or "
            "--overwrite to start over (or another --out or --out-dir)"
        )
    for path in outputs:
        check_output(path)
    if cache is not None and not Path(cache).exists():
        check_output(Path(cache).parent, folder=True)  # where it will be built


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; it replaces `path` only when the block
    ends without error, and is deleted otherwise (disk full, Ctrl+C): a reader finds the old
    file or the new one, never half of one. The temporary name keeps the suffix, so
    matplotlib and zipfile still see what they write."""
    path = check_output(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold the lock file `path` (holding this process's id) for the block, so that a second
    run writing the same outputs is refused while the first lives; a lock left by a process
    that no longer exists (killed) is taken over."""
    path = Path(path)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = lock_owner(path)
            if owner is not None:
                raise UserError(
                    f"another run (process {owner}) is writing these outputs ({path}); wait "
                    "for it to end, or choose other output paths. If no run of the lab is "
                    f"writing there (process {owner} may be another program), delete {path}"
                ) from None
            path.unlink(missing_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {path}: {e.strerror or e}") from None
    else:
        raise UserError(f"cannot take the lock {path}; delete it if no run is writing there")
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def lock_owner(path: Path) -> int | None:
    """The id of the live process holding the lock file, or None (gone, or unreadable)."""
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (OSError, ValueError):
        return None
    return pid


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj: dict, path: str | Path) -> None:
    """JSON with NaN and infinities written as null (they are not JSON), atomically."""

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return [clean(v) for v in x] if isinstance(x, (list, tuple)) else x

    write_text(json.dumps(clean(obj), indent=2) + "\n", path)


def write_csv(rows: list, path: str | Path) -> None:
    """Rows (dicts) as CSV, the columns in order of first appearance, atomically."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(text.getvalue(), path)


# ----------------------------------------------------------------------------- results read back

NUMBER = (int, float)
# Entries that are fractions from 0 to 1 (a number, or a list of numbers and nulls, as the
# per-class IoU where a class is absent); every other number of a lab's result is at least 0.
FRACTIONS = {"miou", "pixel_acc", "iou", "best_miou", "val_miou"}


def mismatch(data, schema: dict) -> str | None:
    """None when `data` is a dict whose every key of `schema` ({key: type}) holds a value of
    its type (bool is not a number), its numbers finite and at least 0, at most 1 under a
    FRACTIONS key; else what is wrong, for the first key that is not so."""
    if not isinstance(data, dict):
        return f"a {type(data).__name__}, not an object"
    for key, kind in schema.items():
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"entry {key!r} missing or of the wrong type"
        high = 1 if key in FRACTIONS else math.inf
        numbers = [value] if isinstance(value, NUMBER) else []
        if isinstance(value, list) and key in FRACTIONS:  # per class: a number, or null if absent
            numbers = [x for x in value if x is not None]
            odd = [x for x in numbers if isinstance(x, bool) or not isinstance(x, NUMBER)]
            if odd:
                return f"entry {key!r} holds {odd[0]!r}, not a number"
        for x in numbers:
            if not (math.isfinite(x) and 0 <= x <= high):
                return f"entry {key!r} is {x!r}, not a number from 0 to {high}"
    return None


def read_json(path: str | Path, schema: dict) -> dict:
    """The JSON object at `path` whose entries match `schema` (mismatch), or a UserError."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    problem = mismatch(data, schema)
    if problem:
        raise UserError(f"{path}: not what the lab's commands write ({problem})")
    return data


# ----------------------------------------------------------------------------- checkpoints


def load_file(path: str | Path, what: str) -> dict:
    """torch.load(weights_only=True), so a checkpoint can never run code, with a UserError for
    a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{what} {path} {'is not a regular file' if path.exists() else 'does not exist'}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors have no common base class
        raise UserError(
            f"cannot read {what} {path}: corrupt or not a PyTorch file ({type(e).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path} holds a {type(obj).__name__}, not a dict")
    return obj


def save_file(obj: dict, path: str | Path) -> None:
    """torch.save through atomic_path: a crash never leaves half a checkpoint. torch.save
    reports a full disk or a file-size limit as a RuntimeError: a UserError here, the old
    file intact."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            raise UserError(
                f"cannot write {path}: the write failed midway (a full disk, or a file-size "
                f"limit?): {str(e).splitlines()[0][:200]}"
            ) from None


def non_finite(state: dict) -> list:
    """Names of the floating-point tensors of a state dict holding a NaN or an infinity."""
    floats = {k: v for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}
    return [k for k, v in floats.items() if not torch.isfinite(v).all()]


def load_state(model: nn.Module, state: dict, what: str) -> None:
    """model.load_state_dict(state), strict, refusing non-finite weights; a UserError keeps
    PyTorch's lists of missing and unexpected keys, the detail needed after changing a model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise UserError(f"{what} does not fit: a different architecture ({detail[:600]})") from None
    bad = non_finite(state)
    if bad:
        raise UserError(
            f"{what} holds NaN or infinite values in {len(bad)} tensor(s), first "
            f"{bad[0]}: the run that wrote it diverged"
        )


# What train.py writes beside `model`, and the type of each, checked before use.
CHECKPOINT_ENTRIES = {"args": dict, "epoch": int, "history": list, "synthetic": bool}


def check_checkpoint(ckpt: dict, path: str | Path) -> dict:
    """`ckpt` when it is a checkpoint of train.py: a `model` state dict and, where present,
    the CHECKPOINT_ENTRIES of their types, `history` a list of dicts; else a UserError
    naming the file and the entry."""
    if not isinstance(ckpt.get("model"), dict):
        raise UserError(f"{path} is not a checkpoint of train.py (no 'model' entry)")
    for key, kind in CHECKPOINT_ENTRIES.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise UserError(
                f"{path}: its {key!r} entry is a {type(ckpt[key]).__name__}, not a "
                f"{kind.__name__}: not a checkpoint of train.py"
            )
    if not all(isinstance(row, dict) for row in ckpt.get("history", [])):
        raise UserError(f"{path}: its 'history' entry is not a list of epochs")
    return ckpt


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """A checkpoint of train.py from `path`, read and checked (load_file, check_checkpoint)."""
    return check_checkpoint(load_file(path, what), path)


# ----------------------------------------------------------------------------- training state


def training_state(trainee: nn.Module, optimizer, scaler, flags: dict, history: list, synthetic):
    """The saved run: the student's state dict alone under `model` (the teacher is never
    saved, the adapters apart), what --resume needs, and the history of every epoch."""
    mious = [row["val_miou"] for row in history]
    adapters = trainee.adapters
    return {
        "model": trainee.student.state_dict(),
        "adapters": adapters.state_dict() if adapters is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "args": flags,
        "epoch": len(history),
        "miou": mious[-1] if mious else math.nan,
        "best_miou": max(mious, default=math.nan),
        "history": history,
        "synthetic": synthetic,
    }


def save_epoch(ckpt: dict, best: Path, last: Path, log: Path) -> None:
    """The log, the last checkpoint and, when this epoch has the best val mIoU so far, the
    best one; a model with non-finite weights or statistics is never saved."""
    bad = non_finite(ckpt["model"])
    if bad:
        raise UserError(
            f"the student's {bad[0]} became NaN or infinite; stopping without "
            "saving this epoch. Try a lower --lr."
        )
    write_csv(ckpt["history"], log)
    save_file(ckpt, last)
    if ckpt["miou"] == ckpt["best_miou"]:
        save_file(ckpt, best)


def resume(
    best: Path,
    last: Path,
    flags: dict,
    fixed: dict,
    synthetic: bool,
    trainee: nn.Module,
    optimizer,
    scaler,
) -> list:
    """Load the last checkpoint's state into the trainee (student, adapters), optimizer and
    scaler; returns its history. `fixed` maps each flag a resume may not change to its default:
    a run whose value differs from the checkpoint's is refused, listing them (a flag the
    checkpoint does not record, added to train.py after it was written, counts as its default).
    A run on SYNTHETIC data never continues one on real data, or the reverse (`synthetic`:
    whether this run's data is). The best checkpoint must still be there: without it the run
    would end with none, or with one that is not its best epoch."""
    if not best.is_file():
        raise UserError(
            f"{best}, the best epoch's checkpoint, is missing: put it back to resume, or "
            "start over with --overwrite"
        )
    ckpt = read_checkpoint(last, "checkpoint to resume")
    if ckpt.get("synthetic", False) != synthetic:
        kinds = ("real", "SYNTHETIC") if synthetic else ("SYNTHETIC", "real")
        raise UserError(
            f"{last} was trained on {kinds[0]} data and --data-root holds {kinds[1]} data: one "
            "history would mix them; resume on the run's own data, or start over with --overwrite"
        )
    missing = [k for k in ("args", "history", "optimizer", "scaler") if k not in ckpt]
    if missing or not isinstance(ckpt["optimizer"], dict) or not isinstance(ckpt["scaler"], dict):
        raise UserError(f"{last} cannot be resumed: no {', '.join(missing) or 'optimizer state'}")
    saved = ckpt["args"]
    changed = [
        f"--{k.replace('_', '-')} {flags[k]} (checkpoint: {saved.get(k, default)})"
        for k, default in fixed.items()
        if saved.get(k, default) != flags[k]
    ]
    if changed:
        raise UserError(
            f"{last} was trained with other flags: {', '.join(changed)}; resume with "
            "the checkpoint's flags, or start over with --overwrite"
        )
    load_state(trainee.student, ckpt["model"], f"checkpoint {last}")
    if trainee.adapters is not None:
        load_state(trainee.adapters, ckpt["adapters"], f"adapters of {last}")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{last}: its optimizer state does not fit this run ({e})") from None
    if len(ckpt["history"]) >= flags["epochs"]:
        raise UserError(f"{last} already has {len(ckpt['history'])} epochs; raise --epochs")
    return ckpt["history"]
