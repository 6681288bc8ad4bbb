"""Checkpoints: read without running code, checked entry by entry against what train.py writes
(CHECKPOINT), loaded only into a model of the same shapes and dtypes, and the training state
that --resume restores, each part checked against the run it goes into before any work.

    from checkpoints import read_checkpoint, load_state, save_file, training_state, resume
"""

from cli import UserError

import math
import zipfile
from pathlib import Path

import torch
from torch import nn

from files import (
    AMOUNT,
    COUNT,
    FRACTION,
    ListOf,
    Maybe,
    Number,
    OneOf,
    atomic_path,
    check_input,
    mismatch,
)
from voc import KD_METHODS

EPOCH = Number(1, integer=True)
# One row of a run's history: what train.py logs for an epoch; every other column is a
# training loss term (train_<term>), a number at least 0.
HISTORY_ROW = {
    "epoch": EPOCH,
    "data": str,
    "device": str,  # the hardware it ran on
    "lr": AMOUNT,
    "train_ce": AMOUNT,
    "val_ce": AMOUNT,
    "val_miou": FRACTION,
    "epoch_time_s": AMOUNT,
    ...: AMOUNT,
}
# The trained model as train.py writes it at --out: its weights and what the report needs,
# every entry; `args` holds the run's flags, of which the readers use --kd.
MODEL_FILE = {
    "model": dict,
    "args": {"kd": OneOf(*KD_METHODS), ...: object},
    "epoch": EPOCH,
    "miou": FRACTION,  # val mIoU after that epoch, a figure to watch, not to select by
    "history": ListOf(HISTORY_ROW, min_length=1),
    "synthetic": bool,
}
# What --resume needs beside it, in <out stem>_last.pth.
TRAINING_STATE = {
    **MODEL_FILE,
    "adapters": Maybe(dict),
    "optimizer": {"state": dict, "param_groups": ListOf(dict, min_length=1)},
    "scaler": dict,
}
SCALER = {
    "scale": AMOUNT,
    "growth_factor": AMOUNT,
    "backoff_factor": AMOUNT,
    "growth_interval": COUNT,
    "_growth_tracker": COUNT,
}


def load_file(path: str | Path, what: str) -> dict:
    """torch.load(weights_only=True), so a checkpoint can never run code, after checking the
    CRC-32 of every record of its archive (a flipped byte is refused, not loaded); a
    UserError for a missing, damaged or foreign file."""
    path = check_input(path, what)
    try:
        if zipfile.is_zipfile(path):  # torch.save's format since PyTorch 1.6
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            damaged = damaged and f"its part {damaged} fails its checksum"
        else:
            damaged = None  # another format: torch.load says what it makes of it
    except Exception as e:  # zipfile and zlib raise several unrelated types
        damaged = f"its archive cannot be read: {type(e).__name__}"
    if damaged:
        raise UserError(
            f"cannot read {what} {path}: damaged ({damaged}); copy it again, or retrain"
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


def load_state(model: nn.Module, state, what: str) -> None:
    """model.load_state_dict(state), strict: the same names, and each tensor of the shape and
    dtype of the model's (an integer or complex tensor is never cast into the weights), every
    value finite. A UserError keeps PyTorch's lists of missing and unexpected keys, the detail
    needed after changing a model."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()
    ):
        raise UserError(f"{what} is not a state dict (names -> tensors)")
    own = model.state_dict()
    odd = [k for k, v in state.items() if k in own and v.dtype != own[k].dtype]
    if odd:
        raise UserError(
            f"{what} holds {state[odd[0]].dtype} values in {odd[0]}, where the model has "
            f"{own[odd[0]].dtype}: not this model's weights"
        )
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise UserError(f"{what} does not fit: a different architecture ({detail[:600]})") from None
    bad = non_finite(state)
    if bad:
        raise UserError(
            f"{what} holds NaN or infinite values in {len(bad)} tensor(s), first "
            f"{bad[0]}: the run that wrote it diverged"
        )


def check_checkpoint(ckpt: dict, path: str | Path, schema: dict = MODEL_FILE) -> dict:
    """`ckpt` when it is what train.py writes (`schema`: MODEL_FILE, or TRAINING_STATE), its
    history one row per epoch from 1 to `epoch`, each row with the terms of its --kd method,
    its mIoU the last row's; else a UserError naming the entry."""
    problem = mismatch(ckpt, schema)
    if not problem:
        history = ckpt["history"]
        terms = {f"train_{term}" for term in KD_METHODS[ckpt["args"]["kd"]]}
        if [row["epoch"] for row in history] != list(range(1, len(history) + 1)):
            problem = "its history's epochs are not 1, 2, 3, ..."
        elif any(row.keys() != history[0].keys() or not terms <= row.keys() for row in history):
            problem = f"its history's rows do not all hold {', '.join(sorted(terms))}"
        elif ckpt["epoch"] != len(history):
            problem = f"its epoch is {ckpt['epoch']}, its history has {len(history)}"
        elif ckpt["miou"] != history[-1]["val_miou"]:
            problem = "its mIoU is not its last epoch's"
    if problem:
        raise UserError(f"{path} is not a checkpoint of train.py, or is damaged ({problem})")
    return ckpt


def read_checkpoint(path: str | Path, what: str = "checkpoint", schema: dict = MODEL_FILE) -> dict:
    """A checkpoint of train.py from `path`, read and checked (load_file, check_checkpoint)."""
    return check_checkpoint(load_file(path, what), path, schema)


# ----------------------------------------------------------------------------- training state


def training_state(trainee: nn.Module, optimizer, scaler, flags: dict, history: list, synthetic):
    """The saved run (TRAINING_STATE): the student's state dict alone under `model` (the
    teacher is never saved, the adapters apart), what --resume needs, the history of every
    epoch."""
    adapters = trainee.adapters
    return {
        "model": trainee.student.state_dict(),
        "adapters": adapters.state_dict() if adapters is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "args": flags,
        "epoch": len(history),
        "miou": history[-1]["val_miou"] if history else math.nan,
        "history": history,
        "synthetic": synthetic,
    }


def save_epoch(state: dict, out: Path, last: Path) -> None:
    """The epoch's training state at `last` (for --resume), then its model at `out`: the
    weights and the run's record (MODEL_FILE), without the optimizer's state, which doubles the
    size and serves only a resume. A model with non-finite weights or statistics is never
    saved. The model kept is the last epoch's: choosing the epoch by val mIoU would choose it
    on the split it is scored on (docs/design.md)."""
    bad = non_finite(state["model"])
    if bad:
        raise UserError(
            f"the student's {bad[0]} became NaN or infinite; stopping without "
            "saving this epoch. Try a lower --lr."
        )
    save_file(state, last)
    save_file({key: state[key] for key in MODEL_FILE}, out)


def resume(
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
    whether this run's data is). Every part is checked before any is loaded."""
    if not last.exists():
        raise UserError(f"--resume: there is no run to continue ({last} does not exist)")
    ckpt = read_checkpoint(last, "checkpoint to resume", TRAINING_STATE)
    if ckpt["synthetic"] != synthetic:
        kinds = ("real", "SYNTHETIC") if synthetic else ("SYNTHETIC", "real")
        raise UserError(
            f"{last} was trained on {kinds[0]} data and --data-root holds {kinds[1]} data: one "
            "history would mix them; resume on the run's own data, or start over with --overwrite"
        )
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
    if len(ckpt["history"]) >= flags["epochs"]:
        raise UserError(f"{last} already has {len(ckpt['history'])} epochs; raise --epochs")
    problem = optimizer_state_problem(ckpt["optimizer"], optimizer) or scaler_problem(
        ckpt["scaler"], scaler
    )
    if problem:
        raise UserError(f"{last}: its optimizer state does not fit this run ({problem})")
    load_state(trainee.student, ckpt["model"], f"checkpoint {last}")
    if trainee.adapters is not None:
        load_state(trainee.adapters, ckpt["adapters"], f"adapters of {last}")
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler.is_enabled() and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    # else: a run that scaled no loss (on the CPU, the Apple GPU) continued on CUDA, or the
    # reverse: the scaler starts as in a new run, where it adapts within a few steps.
    return ckpt["history"]


def state_keys(optimizer: torch.optim.Optimizer) -> set:
    """What this kind of optimizer keeps per parameter, read off one step of a copy of it on
    a one-number parameter (momentum_buffer for SGD, step and both averages for AdamW)."""
    probe = torch.zeros(1, requires_grad=True)
    probe.grad = torch.zeros(1)
    trial = type(optimizer)([probe], **optimizer.defaults)
    trial.step()
    return set(trial.state[probe])


def optimizer_state_problem(saved: dict, optimizer: torch.optim.Optimizer) -> str | None:
    """What is wrong with an optimizer state dict for `optimizer`, or None: its groups those of
    the optimizer, with the same settings (the flags that set them cannot change on resume),
    the scheduled lr a number from 0, the scheduler's peak lr (initial_lr) the optimizer's lr;
    each parameter's state the keys this optimizer keeps, each tensor finite and of its
    parameter's shape and dtype."""
    groups = optimizer.param_groups
    params = [p for group in groups for p in group["params"]]
    if len(saved["param_groups"]) != len(groups):
        return f"{len(saved['param_groups'])} parameter groups, not {len(groups)}"
    for old, new in zip(saved["param_groups"], groups):
        if not isinstance(old.get("params"), list) or len(old["params"]) != len(new["params"]):
            return "parameter groups of other sizes"
        peak = old.get("initial_lr", new["lr"])  # set by the scheduler, after this check
        lr = old.get("lr")
        odd = [
            k
            for k, v in new.items()
            if k not in ("params", "lr")
            and (old.get(k, ...) != v or type(old.get(k)) is not type(v))
        ]
        odd += [k for k in set(old) - set(new) - {"initial_lr"}]
        odd += ["lr"] if not same_kind(lr, 0.0) or lr < 0 or not same_kind(peak, new["lr"]) else []
        odd += ["initial_lr"] if peak != new["lr"] else []
        if odd:
            return f"group setting {odd[0]!r} is not this run's"
    ids = [i for group in saved["param_groups"] for i in group["params"]]
    if ids != list(range(len(params))):
        return "its parameters are not numbered 0, 1, 2, ..."
    keys, state = state_keys(optimizer), saved["state"]
    if len(state) != len(ids):  # a saved epoch took steps: every parameter has its state
        return f"{len(state)} parameters have a state, not all {len(ids)}"
    for i, entry in state.items():
        if i not in ids or isinstance(i, bool) or not isinstance(entry, dict) or set(entry) != keys:
            return f"the state of parameter {i!r:.20} is not {optimizer.__class__.__name__}'s"
        for name, value in entry.items():
            like = torch.zeros(()) if name == "step" else params[i]  # a step count: one number
            if not (
                torch.is_tensor(value) and (value.shape, value.dtype) == (like.shape, like.dtype)
            ):
                return f"{name} of parameter {i} is not a tensor like the parameter"
            if value.is_floating_point() and not torch.isfinite(value).all():
                return f"{name} of parameter {i} holds NaN or infinite values"
    return None


def same_kind(a, b) -> bool:
    """Values of one setting: numbers both (finite), or of one type, or both None."""
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
    return type(a) is type(b)


def scaler_problem(saved: dict, scaler: torch.amp.GradScaler) -> str | None:
    """What is wrong with a GradScaler state for `scaler`, or None; an empty one is what a
    scaler that was off saves."""
    if not saved or not scaler.is_enabled():
        return None
    problem = mismatch(saved, SCALER)
    return f"its loss scaler: {problem}" if problem else None
