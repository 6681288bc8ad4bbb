"""checkpoints.py: checkpoints read without running code and checked at every level, and the
training state that --resume restores, checked against the run it goes into. The damage is
generated (Hypothesis): any entry at any depth dropped, retyped, reshaped, re-typed in its
dtype or made non-finite, any byte of the file flipped."""

from cli import UserError

import copy
import errno
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import checkpoints
from checkpoints import load_file, load_state, read_checkpoint, resume, save_file, training_state
from conftest import HISTORY_ROW, examples
from lab import OptimConfig, build_optimizer

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
FLAGS = {"kd": "feature", "epochs": 3, "lr": 0.01}


class Tiny(torch.nn.Module):
    """A trainee as checkpoints.py sees one (a student, adapters), small enough that each
    generated example saves and reads its checkpoint in milliseconds, its weights most of the
    file (a flipped bit falls mostly in them)."""

    def __init__(self):
        super().__init__()
        self.student = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.BatchNorm2d(64))
        adapter = torch.nn.Sequential(torch.nn.Conv2d(64, 256, 1), torch.nn.BatchNorm2d(256))
        self.adapters = torch.nn.ModuleDict({"low": adapter})


def trained_state(seed: int = 7) -> tuple:
    """(trainee, optimizer, scaler, the checkpoint train.py saves after two epochs of them):
    student and adapters, one SGD step taken (momentum buffers), a --kd feature history."""
    torch.manual_seed(seed)
    trainee = Tiny()
    optimizer = build_optimizer(trainee.parameters(), OptimConfig())
    for param in trainee.parameters():
        param.grad = torch.ones_like(param)
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rows = [{**HISTORY_ROW, "epoch": e, "train_feat": 0.5, "train_feat_low": 0.2} for e in (1, 2)]
    return (
        trainee,
        optimizer,
        scaler,
        training_state(trainee, optimizer, scaler, FLAGS, rows, True),
    )


ORIGINAL = trained_state()[3]
FRESH = trained_state(seed=1)[:3]  # what a damaged checkpoint is loaded into, copied each time


def places(obj, path=()) -> list:
    """Every place of a nested checkpoint: the path of keys to each dict entry, list item and
    tensor, at every depth."""
    found = [path] if path else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += places(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += places(value, (*path, i))
    return found


PLACES = places(ORIGINAL)
ODD_VALUES = [None, "text", -1, 2.5, float("nan"), True, [], {}, [1, 2], {"a": 1}]


@st.composite
def damaged(draw):
    """A copy of ORIGINAL with one place damaged, and what was done."""
    ckpt = copy.deepcopy(ORIGINAL)
    path = draw(st.sampled_from(PLACES))
    parent = ckpt
    for key in path[:-1]:
        parent = parent[key]
    value, key = parent[path[-1]], path[-1]
    kinds = ["drop", "retype"] + (["reshape", "dtype", "nan"] if torch.is_tensor(value) else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "drop":
        if isinstance(parent, list):
            parent.pop(key)
        else:
            del parent[key]
    elif kind == "retype":
        parent[key] = draw(st.sampled_from(ODD_VALUES))
    elif kind == "reshape":
        parent[key] = torch.zeros(value.numel() + draw(st.integers(1, 3)))
    elif kind == "dtype":
        dtype = draw(st.sampled_from([torch.int64, torch.float64, torch.float16, torch.complex64]))
        parent[key] = value.to(dtype) if value.dtype != dtype else value.to(torch.float32)
    else:
        parent[key] = torch.full_like(value, float("nan")) if value.is_floating_point() else value
    return ckpt, (kind, path)


def scores(history: list) -> list:
    """What a history says of the model: each epoch's val mIoU, in order, and its columns. The
    other numbers (an epoch's time, its first lr) are a log: another plausible value there is
    an edit no schema can tell from the truth, and changes no result."""
    return [(row["epoch"], row["val_miou"], sorted(row)) for row in history]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@settings(suppress_health_check=FIXTURES, max_examples=examples(100))
@given(damaged())
def test_a_damaged_checkpoint_is_refused_or_loads_exactly_what_was_saved(tmp_path, case):
    """What test.py and export.py read: one UserError, never another exception, and never a
    model that is not the one saved (an int64 or float16 weight cast silently, a NaN)."""
    ckpt, what = case
    path = tmp_path / "c.pth"
    torch.save(ckpt, path)
    student = copy.deepcopy(FRESH[0].student)
    try:
        loaded = read_checkpoint(path)
        load_state(student, loaded["model"], "c")
    except UserError:
        return
    assert same_tensors(student.state_dict(), ORIGINAL["model"]), what
    assert scores(loaded["history"]) == scores(ORIGINAL["history"]), what
    assert loaded["args"]["kd"] == "feature", what


@settings(suppress_health_check=FIXTURES, max_examples=examples(100))
@given(damaged())
def test_a_damaged_training_state_is_refused_before_any_work_or_resumes_exactly(tmp_path, case):
    """What --resume reads: one UserError before anything is loaded (a momentum buffer of
    another shape would fail at the first step, an epoch later), or the very state saved."""
    ckpt, what = case
    last = tmp_path / "s_last.pth"
    torch.save(ckpt, last)
    trainee, optimizer, scaler = copy.deepcopy(FRESH)  # one copy: the optimizer's are its
    fixed = {"kd": "feature", "lr": 0.01}
    try:
        history = resume(last, FLAGS, fixed, True, trainee, optimizer, scaler)
    except UserError:
        return
    assert scores(history) == scores(ORIGINAL["history"]), what
    assert same_tensors(trainee.student.state_dict(), ORIGINAL["model"]), what
    assert same_tensors(trainee.adapters.state_dict(), ORIGINAL["adapters"]), what
    saved, loaded = ORIGINAL["optimizer"], optimizer.state_dict()
    # a group's lr is the schedule's at the last step: the scheduler sets it again on resume
    groups = [
        [{k: v for k, v in g.items() if k != "lr"} for g in d["param_groups"]]
        for d in (saved, loaded)
    ]
    assert groups[0] == groups[1], what
    assert all(same_tensors(loaded["state"][i], saved["state"][i]) for i in saved["state"]), what


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "original.pth"
    torch.save(ORIGINAL, path)
    return path


@settings(suppress_health_check=FIXTURES, max_examples=examples(60))
@given(st.integers(0, 10**9), st.integers(0, 7))
def test_a_flipped_bit_anywhere_in_the_file_is_refused_or_changes_nothing(
    saved, tmp_path, position, bit
):
    """torch.load reads a flipped byte of the weights as another number; each record's CRC-32
    (zipfile.testzip) does not."""
    data = bytearray(saved.read_bytes())
    data[position % len(data)] ^= 1 << bit
    damaged = tmp_path / "flipped.pth"
    damaged.write_bytes(bytes(data))
    try:
        loaded = read_checkpoint(damaged)
    except UserError:
        return
    assert same_tensors(loaded["model"], ORIGINAL["model"])


def test_the_optimizer_state_must_be_the_optimizers_own_kind():
    """An AdamW state in an SGD run has the parameters' shapes, yet SGD would ignore it (and
    AdamW fail at its first step on an SGD state): the keys each keeps are read off the class."""
    sgd = trained_state()[1]
    assert checkpoints.state_keys(sgd) == {"momentum_buffer"}
    assert checkpoints.optimizer_state_problem(sgd.state_dict(), sgd) is None
    other = sgd.state_dict()
    other["state"] = {
        i: {
            "step": torch.tensor(1.0),
            "exp_avg": s["momentum_buffer"],
            "exp_avg_sq": s["momentum_buffer"],
        }
        for i, s in other["state"].items()
    }
    assert "the state of parameter 0 is not SGD's" == checkpoints.optimizer_state_problem(
        other, sgd
    )


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """A full disk in the middle of torch.save: the previous checkpoint is untouched."""
    path = tmp_path / "s.pth"
    save_file({"epoch": 1}, path)
    before = path.read_bytes()

    def half_written(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(UserError, match="cannot write .*s.pth: No space left on device"):
        save_file({"epoch": 2}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["s.pth"]


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


def test_a_checkpoint_of_another_shape_or_kind_is_named(tmp_path):
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="holds a list, not a dict"):
        load_file(tmp_path / "list.pth", "checkpoint")
    (tmp_path / "loop.pth").symlink_to(tmp_path / "loop.pth")
    with pytest.raises(UserError, match="too many levels of symbolic links"):
        load_file(tmp_path / "loop.pth", "checkpoint")
    ckpt = dict(ORIGINAL, epoch=3)
    torch.save(ckpt, tmp_path / "c.pth")
    with pytest.raises(UserError, match="its epoch is 3, its history has 2"):
        read_checkpoint(tmp_path / "c.pth")


def test_resume_with_no_run_says_so(tmp_path):
    trainee, optimizer, scaler, _ = trained_state()
    args = (FLAGS, {"kd": "feature"}, True, trainee, optimizer, scaler)
    with pytest.raises(UserError, match="there is no run to continue"):
        resume(tmp_path / "s_last.pth", *args)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.float64, torch.complex64])
def test_weights_of_another_dtype_are_refused_not_cast(tmp_path, dtype):
    """An int64 student was cast into the float weights and scored, silently: 8.39 % for a
    model at 0.46 % (the trial of 2026-12-07)."""
    model = dict(ORIGINAL["model"], **{"0.weight": ORIGINAL["model"]["0.weight"].to(dtype)})
    torch.save(dict(ORIGINAL, model=model), tmp_path / "c.pth")
    with pytest.raises(UserError, match=f"holds {dtype} values in 0.weight"):
        load_state(Tiny().student, read_checkpoint(tmp_path / "c.pth")["model"], "c")


@pytest.mark.parametrize("row", [0, 1])
def test_a_history_row_without_its_methods_term_is_refused(tmp_path, row):
    """A --kd feature run logs train_feat every epoch: a row without it is not train.py's."""
    history = [dict(r) for r in ORIGINAL["history"]]
    del history[row]["train_feat"]
    torch.save(dict(ORIGINAL, history=history), tmp_path / "c.pth")
    with pytest.raises(UserError, match="rows do not all hold train_ce, train_feat, train_loss"):
        read_checkpoint(tmp_path / "c.pth")
