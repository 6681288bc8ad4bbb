"""train.py: through its own functions (train_one_epoch, save_epoch, build_loaders, ...) and as
the script a user runs."""

import cli
from cli import UserError

import csv
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

import distributed
import files
import lab
import loaders
from checkpoints import load_file, save_file, training_state
from conftest import (
    GUARD,
    HISTORY_ROW,
    ROOT,
    TINY_TRAIN,
    assert_limits,
    dest,
    documented_defaults,
    load_script,
    run_python,
    run_script,
    train_tiny,
)
from dataset import image_path, read_split
from distill import KDConfig, Trainee, teacher_outputs
from files import exclusive
from loaders import eval_loader
from metrics import evaluate
from model import build_student, build_teacher, load_student
from synthetic import make_fake_voc
from voc import RANDOM_TEACHER, SYNTHETIC_MARKER, SYNTHETIC_NOTE, VOC

train = load_script("train")
CPU = torch.device("cpu")


def tiny_args(fake_voc, tmp_path, *flags):
    """train.py's arguments for the tiny runs, parsed by train.py itself."""
    argv = [
        "--data-root",
        str(fake_voc),
        "--out",
        str(tmp_path / "s.pth"),
        "--out-dir",
        str(tmp_path),
        *map(str, TINY_TRAIN),
        *map(str, flags),
    ]
    return train.parse_args(argv)


def resumable(trained, tmp_path):
    """A copy of the trained run's training state and model to resume, in tmp_path."""
    out = tmp_path / "student_none.pth"
    train.last_path(out).write_bytes(train.last_path(trained["out"]).read_bytes())
    out.write_bytes(trained["out"].read_bytes())
    return out


# ----------------------------------------------------------------------------- the script


def test_a_tiny_run_writes_the_model_its_training_state_log_and_plot(trained):
    """The model at --out: the last epoch's weights and the run's record, no optimizer state
    (half the size, and what the lab hands in); the training state beside it for --resume."""
    out, logs = trained["out"], trained["logs"]
    model = load_file(out, "checkpoint")
    assert set(model) == {"model", "args", "epoch", "miou", "history", "synthetic"}
    assert model["args"]["kd"] == "none" and model["synthetic"] is True and model["epoch"] == 2
    assert not any(k.startswith("teacher") for k in model["model"])
    last = load_file(train.last_path(out), "checkpoint")
    assert last["epoch"] == 2 and len(last["history"]) == 2 and last["adapters"] is None
    assert last["history"] == model["history"] and last["scaler"] == {}  # no scaling on a CPU
    assert all(torch.equal(last["model"][k], v) for k, v in model["model"].items())
    assert out.stat().st_size < train.last_path(out).stat().st_size * 0.6
    rows = list(csv.DictReader(open(logs / "student_none_log.csv", encoding="utf-8")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {r["data"] for r in rows} == {"SYNTHETIC data, not a VOC result"}
    assert {"train_loss", "train_ce", "val_ce", "val_miou", "lr", "epoch_time_s"} <= set(rows[0])
    assert (logs / "student_none_curves.png").stat().st_size > 1000


def test_the_console_reports_what_the_log_holds(trained):
    """Where it trains, an epoch's line each and the summary, nothing else (no "resuming" on a
    new run): the log's numbers (the mIoU in %), the last epoch's, where the files went."""
    out, logs = trained["out"], trained["logs"]
    rows = [
        {k: float(v) for k, v in row.items() if k not in ("data", "device")}
        for row in csv.DictReader(open(logs / "student_none_log.csv", encoding="utf-8"))
    ]
    lines = trained["proc"].stdout.splitlines()
    assert lines[0].startswith("training on ") and lines[0].endswith(" (cpu)")
    assert lines[1:-2] == [
        f"epoch {r['epoch']:.0f}: train CE {r['train_ce']:.4f}, val CE {r['val_ce']:.4f}, "
        f"val mIoU {100 * r['val_miou']:.2f}%, {r['epoch_time_s']:.1f} s (SYNTHETIC)"
        for r in rows
    ]
    times = [r["epoch_time_s"] for r in rows]
    assert lines[-2:] == [
        f"val mIoU after the last epoch {100 * rows[-1]['val_miou']:.2f}% on "
        f"SYNTHETIC data, not a VOC result -> {out}; to resume -> {train.last_path(out)}",
        f"training time {sum(times) / 60:.1f} min, {sum(times) / len(times):.1f} s per epoch "
        f"(including validation); log -> {logs / 'student_none_log.csv'} and "
        f"{logs / 'student_none_curves.png'}",
    ]


def test_the_summary_gives_the_last_epochs_miou_and_the_time_spent(capsys):
    """print_summary on a made-up history of long epochs (the tiny runs' round to 0.0 min):
    the last epoch's mIoU in %, the total in minutes, the mean per epoch in seconds."""
    args = train.parse_args(["--out", "w/s.pth", "--out-dir", "o"])
    history = [
        {"epoch": 1, "val_miou": 0.25, "epoch_time_s": 600.0},
        {"epoch": 2, "val_miou": 0.5, "epoch_time_s": 300.0},
        {"epoch": 3, "val_miou": 0.375, "epoch_time_s": 900.0},
    ]
    train.print_summary(args, history, with_teacher=True, synthetic=False)
    assert capsys.readouterr().out.splitlines() == [
        "val mIoU after the last epoch 37.50% -> w/s.pth; to resume -> w/s_last.pth",
        "training time 30.0 min, 600.0 s per epoch (including validation and the teacher); "
        "log -> o/s_log.csv and o/s_curves.png",
    ]


def test_a_long_run_on_the_cpu_and_a_random_teacher_are_said_before_it_starts(capsys):
    args = train.parse_args(["--kd", "response", "--teacher-weights", "none"])
    train.announce(args, torch.device("cpu"), images=1464)
    out, err = capsys.readouterr()
    assert out.startswith("training on ") and "(cpu), with a RANDOM teacher" in out
    assert err.startswith("warning: 100 epochs of 1,464 images on a CPU take many hours")
    train.announce(train.parse_args(["--epochs", "2"]), torch.device("cpu"), images=1464)
    out, err = capsys.readouterr()
    assert "RANDOM" not in out and err == ""


@pytest.mark.parametrize("data", ["VOC 2012", SYNTHETIC_NOTE])
def test_the_curves_title_says_the_data_and_a_random_teacher(data):
    random = train.parse_args(["--kd", "both", "--teacher-weights", "none"])
    assert train.curves_title(random, data) == f"student, --kd both ({data}, {RANDOM_TEACHER})"
    assert train.curves_title(train.parse_args(["--kd", "both"]), data) == (
        f"student, --kd both ({data})"
    )


def test_the_logged_lr_follows_warmup_then_poly_stepped_every_iteration(trained):
    """4 train images, batch 2: 2 steps an epoch, 4 in all, warm-up 1 epoch = 2 steps."""
    history = load_file(train.last_path(trained["out"]), "checkpoint")["history"]
    factor = lab.warmup_poly(total_steps=4, warmup_steps=2)
    assert [row["lr"] for row in history] == pytest.approx([0.01 * factor(0), 0.01 * factor(2)])


def interrupt_epoch_3(where: str, monkeypatch) -> None:
    """Ctrl+C in epoch 3 of train.main: as it begins, after its first training step (the
    weights, optimizer and schedule already moved), or during its validation."""
    run_epoch, validate = train.train_one_epoch, train.validate

    def first_step_then_stop(loader):
        batches = iter(loader)
        yield next(batches)
        raise KeyboardInterrupt

    def epoch(model, targets, loader, *rest):
        if rest[-1] == "epoch 3/3":
            if where == "start":
                raise KeyboardInterrupt
            if where == "mid-epoch":
                loader = first_step_then_stop(loader)
        return run_epoch(model, targets, loader, *rest)

    def validation(student, loader, device, epoch):
        if epoch == 3 and where == "validation":
            next(iter(loader))
            raise KeyboardInterrupt
        return validate(student, loader, device, epoch)

    monkeypatch.setattr(train, "train_one_epoch", epoch)
    monkeypatch.setattr(train, "validate", validation)


def resume_flags(workers: str) -> tuple:
    return ("--epochs", "3", "--warmup-epochs", "0.5", "--num-workers", workers)


@pytest.fixture(scope="module")
def uninterrupted(fake_voc, tmp_path_factory):
    """uninterrupted(workers) -> (_last.pth, wall time) of the 3-epoch run the interrupted
    ones are compared with, run once per --num-workers."""
    runs = {}

    def run(workers: str) -> tuple:
        if workers not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted{workers}")
            begin = time.perf_counter()
            train.main(tiny_args(fake_voc, out, *resume_flags(workers)))
            runs[workers] = load_file(out / "s_last.pth", "c"), time.perf_counter() - begin
        return runs[workers]

    return run


@pytest.mark.parametrize(
    "where, workers", [("start", "0"), ("validation", "0"), ("mid-epoch", "1")]
)
def test_resume_after_ctrl_c_ends_exactly_where_an_uninterrupted_run_does(
    fake_voc, tmp_path, monkeypatch, uninterrupted, where, workers
):
    """train.main in this process: Ctrl+C in epoch 3 of 3, --resume, and the same run without
    a stop and without a loader worker end with the same weights, BatchNorm counts, optimizer
    state and lrs: each sample is drawn from (seed, epoch, index), whatever process reads it."""
    flags = resume_flags(workers)
    with monkeypatch.context() as patched:
        interrupt_epoch_3(where, patched)
        with pytest.raises(KeyboardInterrupt, match="holds epoch 2; continue with --resume"):
            train.main(tiny_args(fake_voc, tmp_path / "a", *flags))
    train.main(tiny_args(fake_voc, tmp_path / "a", *flags, "--resume"))
    a = load_file(tmp_path / "a" / "s_last.pth", "c")
    b, elapsed = uninterrupted("0")
    times = [row["epoch_time_s"] for row in b["history"]]
    assert min(times) > 0 and sum(times) < elapsed  # each epoch's own time, within the run's
    assert a["epoch"] == b["epoch"] == 3
    assert [r["lr"] for r in a["history"]] == [r["lr"] for r in b["history"]]
    for key, value in b["model"].items():
        assert torch.allclose(a["model"][key].float(), value.float(), atol=1e-6), key
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.allclose(state_a["momentum_buffer"], state_b["momentum_buffer"], atol=1e-6)


def test_a_checkpoint_written_before_a_flag_existed_resumes_with_its_default(
    trained, fake_voc, tmp_path
):
    """An older _last.pth has no entry for a flag added since (here --alpha, as if it were
    new; its default is not None, as a missing entry reads): it resumes with that flag's
    default instead of being refused."""
    out = resumable(trained, tmp_path)
    ckpt = load_file(train.last_path(trained["out"]), "c")
    del ckpt["args"]["alpha"]
    torch.save(ckpt, train.last_path(out))
    proc = train_tiny(fake_voc, out, "--kd", "none", "--epochs", 3, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout and load_file(train.last_path(out), "c")["epoch"] == 3
    refused = train_tiny(fake_voc, out, "--kd", "none", "--epochs", 4, "--resume", "--lr", "0.5")
    assert refused.returncode == 1 and "--lr 0.5 (checkpoint: 0.01)" in refused.stderr


def test_resume_refuses_changed_flags_and_names_them(trained, tmp_path, fake_voc):
    out = resumable(trained, tmp_path)
    proc = train_tiny(
        fake_voc, out, "--epochs", 3, "--resume", "--lr", "0.5", "--optimizer", "adamw"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--lr 0.5 (checkpoint: 0.01)" in proc.stderr and "--optimizer adamw" in proc.stderr


def test_an_existing_checkpoint_is_not_overwritten_without_asking(trained, fake_voc):
    before = trained["out"].read_bytes()
    proc = train_tiny(fake_voc, trained["out"], "--epochs", 1)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert trained["out"].read_bytes() == before


@pytest.mark.parametrize("kd", ["response", "feature", "both"])
def test_each_kd_mode_runs_end_to_end_and_trains_the_adapters(kd, tmp_path, fake_voc):
    out = tmp_path / f"student_{kd}.pth"
    proc = train_tiny(fake_voc, out, "--kd", kd, "--epochs", 1)
    assert proc.returncode == 0, proc.stderr
    ckpt = load_file(train.last_path(out), "checkpoint")  # the training state: with adapters
    assert ckpt["args"]["kd"] == kd
    header = (
        (tmp_path / f"student_{kd}_log.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    )
    expected = {
        "response": {"train_kl"},
        "feature": {"train_feat"},
        "both": {"train_kl", "train_feat"},
    }[kd]
    assert expected | {"train_ce"} <= set(header)
    assert (ckpt["adapters"] is not None) == (kd != "response")
    if ckpt["adapters"] is not None:  # the run's adapters, rebuilt as main builds them
        torch.manual_seed(0)
        initial = train.build_models(tiny_args(fake_voc, tmp_path, "--kd", kd), CPU)[0]
        start = initial.adapters.state_dict()
        weights = [k for k in ckpt["adapters"] if k.endswith("0.weight")]
        assert weights and all(not torch.equal(ckpt["adapters"][k], start[k]) for k in weights)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--kd", "distill"], "invalid choice"),
        (["--epochs", "0"], "argument --epochs: must be at least 1"),
        (["--lr", "-1"], "argument --lr: must be above 0"),
        (["--lr", "nan"], "argument --lr: must be above 0"),
        (["--warmup-epochs", "inf"], "argument --warmup-epochs: must be at least 0"),
        (["--warmup-epochs", "1e300"], "--warmup-epochs: must be at most --epochs"),
        (["--alpha", "0", "--beta", "0", "--kd", "response"], "has weight 0"),
        (["--num-workers", "many"], "argument --num-workers: invalid int value"),
    ],
)
def test_bad_flag_values_exit_with_a_clear_message(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(flags)
    assert e.value.code == 1 and message in capsys.readouterr().err


def test_the_documented_defaults_are_the_flags_defaults():
    args = vars(train.parse_args([]))
    documented = documented_defaults(args)
    assert len(documented) >= 12  # the recipe's table and the KD table
    for flag, text in documented.items():
        default = args[dest(flag)]
        if isinstance(default, bool):
            assert default == {"on": True, "off": False}[text], flag
        elif flag == "--num-workers":  # "4, at most the CPU count"
            assert default == min(int(text), os.cpu_count()), flag
        elif isinstance(default, (int, float)):
            assert default == float(text), flag
        else:
            assert default == text, flag


def test_a_crop_too_small_for_the_aspp_is_warned_about_and_a_large_one_is_not(capsys):
    train.parse_args(["--crop-size", str(train.MIN_CROP - 1)])
    assert capsys.readouterr().err.startswith(f"warning: --crop-size {train.MIN_CROP - 1} is below")
    train.parse_args(["--crop-size", str(train.MIN_CROP)])
    assert capsys.readouterr().err == ""


# Each numeric flag's smallest and largest value taken, and the values just beyond refused.
FLAG_RANGES = {
    "--epochs": ("1", "100000", "0", "100001"),
    "--batch-size": ("1", "4096", "0", "4097"),
    "--crop-size": ("32", "4096", "31", "4097"),
    "--lr": ("1e-9", "10", "0", "10.01"),
    "--weight-decay": ("0", "1", "-1e-9", "1.01"),
    "--seed": ("0", str(2**63 - 1), "-1", str(2**63)),
    "--tau": ("0.1", "100", "0.09", "100.1"),
    "--limit-train": ("1", None, "0", None),
    "--limit-val": ("1", None, "0", None),
    "--alpha": ("0", None, "-1e-9", None),
    "--beta": ("0", None, "-1e-9", None),
    "--feat-weight": ("0", None, "-1e-9", None),
    "--warmup-epochs": ("0", None, "-1e-9", None),
}


@pytest.mark.parametrize("flag", FLAG_RANGES)
def test_each_numeric_flag_takes_its_limits_and_refuses_what_lies_beyond(flag, capsys):
    low, high, below, above = FLAG_RANGES[flag]
    # what lets the limit itself be valid: warm-up within the epochs, a loss term left
    extra = {"--warmup-epochs": ["--epochs", "100000"], "--alpha": ["--kd", "response"]}
    taken, refused = filter(None, (low, high)), filter(None, (below, above))
    assert_limits(train.parse_args, flag, taken, refused, capsys, extra.get(flag, []))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "cuda:banana"], "unknown device"),
        (["--data-root", "nowhere"], "--download"),
    ],
)
def test_bad_environments_exit_with_one_error_line(flags, message, tmp_path):
    proc = run_script(
        "train.py", "--out", tmp_path / "s.pth", "--out-dir", tmp_path, "--device", "cpu", *flags
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and message in proc.stderr


def no_work(monkeypatch) -> None:
    """train.main's checks must refuse before the run reads any data or builds any model."""

    def work(args):
        raise AssertionError("the run started before its outputs were checked")

    monkeypatch.setattr(train, "train", work)


def test_a_last_checkpoint_alone_is_not_replaced_without_asking(fake_voc, tmp_path, monkeypatch):
    no_work(monkeypatch)
    args = tiny_args(fake_voc, tmp_path)
    train.last_path(args.out).write_bytes(b"the user's last checkpoint")
    with pytest.raises(UserError, match="already exist\\(s\\); use --resume to continue that run"):
        train.main(args)


@pytest.mark.parametrize("flag", ["--out-dir", "--teacher-cache"])
def test_an_output_folder_below_a_file_is_refused_before_any_work(
    flag, fake_voc, tmp_path, monkeypatch
):
    no_work(monkeypatch)
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    kd = ["--kd", "response"] if flag == "--teacher-cache" else []
    args = tiny_args(fake_voc, tmp_path, *kd, flag, tmp_path / "a_file" / "below")
    with pytest.raises(UserError, match="cannot create the folder|a_file is a file"):
        train.main(args)


def test_output_paths_are_checked_before_any_work(tmp_path, fake_voc):
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    proc = train_tiny(fake_voc, tmp_path / "a_file" / "s.pth", "--epochs", 1)
    assert proc.returncode == 1 and "error: cannot create the folder" in proc.stderr
    assert "epoch 1" not in proc.stderr + proc.stdout


# ----------------------------------------------------------------------------- the loop


def test_warmup_then_poly_decay():
    factor = lab.warmup_poly(total_steps=100, warmup_steps=4)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(50) == pytest.approx(0.5**0.9) and factor(100) == 0.0 and factor(120) == 0.0


def test_each_epoch_and_process_draws_from_its_own_seed_and_shuffle():
    """loaders.epoch_batches: process r of w in epoch e seeds torch with seed + e w + r (one
    seed per epoch and process, none repeated), and under torchrun reshuffles the sampler each
    epoch, in the same order each time an epoch starts again (a resumed run)."""
    for world in (1, 2, 3):
        seeds = {}
        for epoch, rank in itertools.product(range(1, 6), range(world)):
            sampler = DistributedSampler(range(12), num_replicas=world, rank=rank, seed=0)
            loaders.epoch_batches(DataLoader(range(12), sampler=sampler), 5, epoch, rank, world)
            seeds[epoch, rank] = torch.initial_seed()
        assert len(set(seeds.values())) == len(seeds)
        assert seeds[3, world - 1] == 5 + 3 * world + world - 1
    orders = []
    for epoch in (1, 2, 2):
        sampler = DistributedSampler(range(12), num_replicas=2, rank=0, seed=0)
        loaders.epoch_batches(DataLoader(range(12), sampler=sampler), 0, epoch, 0, 2)
        orders.append(list(sampler))
    assert orders[0] != orders[1] == orders[2]


def fixed_batches(fake_voc, tmp_path, count: int = 2) -> list:
    torch.manual_seed(0)
    loader = train.build_loaders(tiny_args(fake_voc, tmp_path), 0, 1, CPU)[0]
    return [batch for batch, _ in zip(loader, range(count))]


NO_TEACHER = train.open_teacher(None, None, None, CPU)  # what --kd none trains with


class OneOtherProcess:
    """torch.distributed as train.py sees it as rank 0 of 2 under torchrun: each all_reduce
    adds what the other process sends, `loss` to the epoch's mean losses (a vector), `bad` to
    a step's not-finite flag (a scalar). The real collectives run in the torchrun test."""

    def __init__(self, loss: float = 0.0, bad: float = 0.0):
        self.loss, self.bad = loss, bad

    def is_initialized(self) -> bool:
        return True

    def get_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 2

    def all_reduce(self, tensor: torch.Tensor) -> None:
        tensor += self.bad if tensor.dim() == 0 else self.loss


def one_epoch(batches: list, scaled: bool = False) -> tuple:
    """(trainee, scheduler, what train_one_epoch returned) for a fresh student (seed 0) handed
    over in eval mode, as validation leaves it; SGD at a constant lr of 0.05, the loss scaled
    by an enabled GradScaler (as on CUDA) when `scaled`; dropout drawn from seed 1."""
    torch.manual_seed(0)
    model = Trainee(build_student(), KDConfig("none")).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled)
    torch.manual_seed(1)
    means = train.train_one_epoch(
        model, NO_TEACHER, batches, optimizer, scheduler, scaler, CPU, "e"
    )
    return model, scheduler, means


@pytest.mark.parametrize("scaled", [False, True], ids=["cpu", "grad-scaler"])
def test_train_one_epoch_does_plain_sgd_steps_in_train_mode(scaled, fake_voc, tmp_path, capsys):
    """Against steps made by hand: gradients cleared each step, train mode (BatchNorm batch
    statistics, dropout) even for a model coming back from validation in eval mode, and the
    mean loss of the steps returned and shown on the bar. With the GradScaler enabled, as on
    CUDA, the steps are the same (the loss scale is a power of 2, undone exactly)."""
    batches = fixed_batches(fake_voc, tmp_path)
    model, scheduler, means = one_epoch(batches, scaled)
    torch.manual_seed(0)
    reference = Trainee(build_student(), KDConfig("none")).train()
    torch.manual_seed(1)
    params = list(reference.parameters())
    losses = []
    for images, masks in batches:
        loss, _ = reference(images, masks.long())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        losses.append(loss.item())
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p.add_(g, alpha=-0.05)  # rounded as torch.optim.SGD rounds it
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert scheduler.last_epoch == len(batches)  # one scheduler step per iteration
    assert means["train_loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert means["train_ce"] == pytest.approx(np.mean(losses), rel=1e-5)  # --kd none: L = CE
    bar = capsys.readouterr().err.rsplit("\r", 1)[-1]  # the bar as the epoch ends
    assert f"loss={np.mean(losses):.4f}, lr=5.00e-02" in bar


def test_under_torchrun_the_logged_losses_are_the_mean_over_the_processes(
    fake_voc, tmp_path, monkeypatch
):
    batches = fixed_batches(fake_voc, tmp_path)
    alone = one_epoch(batches)[2]
    monkeypatch.setattr(distributed, "dist", OneOtherProcess(loss=3.0))
    together = one_epoch(batches)[2]
    assert together.keys() == alone.keys() == {"train_loss", "train_ce"}
    for key, value in alone.items():
        assert together[key] == pytest.approx((value + 3.0) / 2, rel=1e-6), key


def test_a_nan_loss_on_another_process_stops_this_one_and_says_where(
    fake_voc, tmp_path, monkeypatch
):
    """Every process stops at the same step (the others would wait for it forever), this one
    saying that its own loss is finite."""
    monkeypatch.setattr(distributed, "dist", OneOtherProcess(bad=1.0))
    with pytest.raises(UserError, match="^the loss, at step 1 of e, became NaN or infinite in an"):
        one_epoch(fixed_batches(fake_voc, tmp_path))


def test_a_cpu_run_asks_for_no_pinned_memory(fake_voc, tmp_path):
    """Pinned memory speeds copies to a GPU only; asked for without one, torch warns in every
    epoch of every run."""
    loader = train.build_loaders(tiny_args(fake_voc, tmp_path), 0, 1, CPU)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        next(iter(loader))


def test_validation_reads_the_val_split(fake_voc, tmp_path):
    _, val_loader = train.build_loaders(tiny_args(fake_voc, tmp_path), 0, 1, CPU)
    stems = {image_path(val_loader.dataset, i).stem for i in range(len(val_loader.dataset))}
    assert stems and stems <= set(read_split(fake_voc, "val"))


def test_the_model_kept_is_the_last_epochs_not_the_best_on_val(tmp_path, fake_voc):
    """Choosing the epoch by val mIoU would choose it on the split it is then scored on."""
    args = tiny_args(fake_voc, tmp_path)
    model = Trainee(build_student(), KDConfig("none"))
    optimizer = train.build_optimizer(model.parameters(), train.optim_config(args))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    history = []
    for epoch, miou in enumerate([0.3, 0.5, 0.4], 1):
        history.append({**HISTORY_ROW, "epoch": epoch, "val_miou": miou})
        with torch.no_grad():
            next(model.parameters()).fill_(epoch)  # which epoch's weights were saved
        ckpt = training_state(model, optimizer, scaler, vars(args), history, True)
        lab.save_run(ckpt, args.out, args.out_dir, "title")
    kept, last = load_file(args.out, "c"), load_file(train.last_path(args.out), "c")
    assert kept["miou"] == 0.4 and kept["epoch"] == 3 == last["epoch"]
    assert (next(iter(kept["model"].values())) == 3).all()


@pytest.fixture(scope="module")
def random_teacher():
    torch.manual_seed(0)
    return build_teacher("none")


@pytest.mark.parametrize(
    "kd, flag, value",
    [
        ("response", "--tau", "4"),
        ("response", "--alpha", "0.3"),
        ("response", "--beta", "3"),
        ("feature", "--alpha", "0.3"),
        ("feature", "--feat-weight", "2"),
        ("none", "--alpha", "0.3"),
    ],
)
def test_every_loss_flag_changes_the_loss_train_py_computes(
    kd, flag, value, fake_voc, tmp_path, random_teacher, monkeypatch
):
    images, masks, *_ = fixed_batches(fake_voc, tmp_path, 1)[0]
    monkeypatch.setattr(train, "build_teacher", lambda weights: random_teacher)  # built once
    out = teacher_outputs(random_teacher, images)
    losses = []
    for flags in ([], [flag, value]):
        torch.manual_seed(0)
        model, _ = train.build_models(tiny_args(fake_voc, tmp_path, "--kd", kd, *flags), CPU)
        torch.manual_seed(0)
        losses.append(model.train()(images, masks.long(), out)[0].item())
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)


def test_a_nan_loss_stops_the_run_with_a_message(fake_voc, tmp_path):
    batches = fixed_batches(fake_voc, tmp_path, 1)
    model = Trainee(build_student(), KDConfig("none"))
    with torch.no_grad():
        model.student.classifier[1].bias.fill_(float("nan"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(UserError, match="the loss, at step 1 of epoch 1/1, became nan"):
        train.train_one_epoch(
            model, NO_TEACHER, batches, optimizer, scheduler, scaler, CPU, "epoch 1/1"
        )


@pytest.mark.slow
def test_short_runs_learn_what_eval_mode_shows(tmp_path):
    """60 steps of train.py's own loop on 4 SYNTHETIC images, then their mIoU in eval mode, as
    train.py validates: well above predicting background everywhere (5.6 %; with seeds 0 to 3
    the run reached 19.7, 37.9, 48.5 and 48.3 %). With torchvision's BatchNorm momentum of
    0.01 the running statistics lag, and eval mode gives exactly the background's score.
    Val is the train images here: the test is about learning at all."""
    make_fake_voc(tmp_path, num_images=8)
    splits = tmp_path / VOC.subdir / "ImageSets/Segmentation"
    (splits / "val.txt").write_text(
        (splits / "train.txt").read_text(encoding="utf-8"), encoding="utf-8"
    )
    args = tiny_args(
        tmp_path,
        tmp_path,
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
        "--warmup-epochs",
        "0",
        "--epochs",
        "60",
        "--batch-size",
        "4",
        "--limit-val",
        "4",
    )
    torch.manual_seed(0)
    train_loader, val_loader = train.build_loaders(args, 0, 1, CPU)
    model, _ = train.build_models(args, CPU)
    optimizer = train.build_optimizer(model.parameters(), train.optim_config(args))
    scheduler = lab.build_scheduler(
        optimizer, args.epochs, len(train_loader), args.warmup_epochs, 0
    )
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for epoch in range(1, args.epochs + 1):
        batches = loaders.epoch_batches(train_loader, args.seed, epoch, 0, 1)
        train.train_one_epoch(model, NO_TEACHER, batches, optimizer, scheduler, scaler, CPU, "e")
    learned = evaluate(model.student, val_loader, CPU, progress=False)["miou"]
    background = evaluate(AllBackground(), val_loader, CPU, progress=False)["miou"]
    assert learned > background + 0.1


class AllBackground(torch.nn.Module):
    def forward(self, x):
        logits = torch.zeros(x.shape[0], 21, *x.shape[-2:])
        logits[:, 0] = 1
        return logits


# ----------------------------------------------------------------------------- scale, Ctrl+C


def test_train_aug_trains_on_voc_and_sbd(tmp_path):
    make_fake_voc(tmp_path / "data", num_images=8, with_sbd=True)
    out = tmp_path / "student_none.pth"
    proc = train_tiny(tmp_path / "data", out, "--train-set", "train_aug", "--epochs", 1)
    assert proc.returncode == 0, proc.stderr
    assert load_file(out, "checkpoint")["args"]["train_set"] == "train_aug"


def torchrun_tiny(fake_voc, out, *flags):
    """train.py under torchrun, two gloo processes, one tiny epoch, beside `out`."""
    return run_python(
        *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *(ROOT / "train.py", "--data-root", fake_voc, "--out", out, "--out-dir", out.parent),
        *TINY_TRAIN,
        *("--epochs", 1, *flags),
        timeout=180,
    )


def test_torchrun_with_two_gloo_processes_writes_one_loadable_checkpoint(fake_voc, tmp_path):
    out = tmp_path / "student_response.pth"
    proc = torchrun_tiny(fake_voc, out, "--kd", "response")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1: train CE") == 1  # only rank 0 reports
    assert proc.stdout.count("training time") == 1  # the summary too, before the group ends
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [out.name, "student_response_last.pth"]
    ckpt = load_file(out, "checkpoint")
    assert not any(key.startswith("module.") for key in ckpt["model"])
    student, _ = load_student(out)  # what test.py does with it
    # The val numbers logged are the saved model's: the two processes trained one model and
    # scored it with rank 0's BatchNorm statistics, each on its half of val.
    val = evaluate(student, eval_loader(fake_voc, "val", limit=2), CPU, progress=False)
    assert ckpt["history"][-1]["val_ce"] == pytest.approx(val["loss"], rel=1e-5)
    assert ckpt["history"][-1]["val_miou"] == pytest.approx(val["miou"], abs=1e-12)


def test_a_nan_validation_loss_stops_the_run_before_anything_is_saved(
    fake_voc, tmp_path, monkeypatch
):
    result = {"loss": float("nan"), "miou": 0.5, "pixels": 10}
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: result)
    with pytest.raises(UserError, match="the val CE, after epoch 1, became nan"):
        train.main(tiny_args(fake_voc, tmp_path, "--epochs", "1"))
    assert not list(tmp_path.glob("*.pth"))


def test_val_without_a_labelled_pixel_is_named_not_blamed_on_the_lr(tmp_path):
    make_fake_voc(tmp_path, num_images=4)
    for name in read_split(tmp_path, "val"):
        Image.fromarray(np.full((48, 48), 255, np.uint8)).save(
            tmp_path / VOC.subdir / "SegmentationClass" / f"{name}.png"
        )  # all void
        Image.new("RGB", (48, 48)).save(tmp_path / VOC.subdir / "JPEGImages" / f"{name}.jpg")
    with pytest.raises(UserError, match="no val image has a labelled pixel"):
        train.main(tiny_args(tmp_path, tmp_path, "--epochs", "1"))


def test_non_finite_batchnorm_statistics_are_never_saved(fake_voc, tmp_path):
    args = tiny_args(fake_voc, tmp_path)
    model = Trainee(build_student(), KDConfig("none"))
    model.student.aspp.project[1].running_var[0] = float("inf")  # what a diverged run leaves
    optimizer = train.build_optimizer(model.parameters(), train.optim_config(args))
    history = [
        {
            "epoch": 1,
            "lr": 0.01,
            "train_loss": 1.0,
            "val_ce": 1.0,
            "val_miou": 0.1,
            "epoch_time_s": 1.0,
        }
    ]
    ckpt = training_state(model, optimizer, torch.amp.GradScaler("cpu"), vars(args), history, True)
    with pytest.raises(UserError, match="aspp.project.1.running_var became NaN or infinite"):
        lab.save_run(ckpt, args.out, args.out_dir, "title")
    assert not list(tmp_path.glob("*.pth"))


def test_a_second_run_on_the_same_outputs_is_refused_while_the_first_lives(fake_voc, tmp_path):
    """Each output is locked, the log in --out-dir too (two runs whose --out differ only in
    folder share it); once the first run ends, its locks are let go."""
    args = tiny_args(fake_voc, tmp_path, "--epochs", "1")
    for output in lab.run_outputs(args.out, args.out_dir):
        with exclusive([output]):  # another run, writing this one output
            with pytest.raises(UserError, match=f"another run is writing {output}"):
                train.main(args)
    assert not (tmp_path / "s.pth").exists()
    train.main(args)
    assert (tmp_path / "s.pth").exists()


def fresh_run(args, seed: int) -> tuple:
    """(trainee, optimizer, GradScaler enabled as on CUDA) as run_training builds them, the
    student and adapters drawn from `seed`, the loss scale 2 ** seed."""
    torch.manual_seed(seed)
    trainee = Trainee(build_student(), train.kd_config(args))
    optimizer = train.build_optimizer(trainee.parameters(), train.optim_config(args))
    return trainee, optimizer, torch.amp.GradScaler("cpu", init_scale=2.0**seed)


def saved_run(fake_voc, tmp_path, *flags) -> tuple:
    """(args with --resume, the run whose _last.pth files.training_state made after 1 epoch)."""
    args = tiny_args(fake_voc, tmp_path, *flags, "--resume")
    saved = fresh_run(args, seed=7)
    for param in saved[0].parameters():  # one step: momentum buffers to restore
        param.grad = torch.ones_like(param)
    saved[1].step()
    history = [{**HISTORY_ROW, "val_miou": 0.25}]
    state = training_state(*saved, vars(args), history, True)
    save_file(state, train.last_path(args.out))
    save_file(state, args.out)  # the best one, which a resume needs too
    return args, saved


def test_resume_restores_the_student_adapters_optimizer_and_loss_scale(fake_voc, tmp_path):
    """A --kd feature run resumed into a freshly drawn model: the student's and the adapters'
    weights, the optimizer's state and the GradScaler's loss scale (which CUDA runs use) are
    the saved run's, and its history is returned."""
    args, (trainee, optimizer, scaler) = saved_run(fake_voc, tmp_path, "--kd", "feature")
    into = fresh_run(args, seed=1)
    assert train.resumed_history(args, *into) == [{**HISTORY_ROW, "val_miou": 0.25}]
    for part in ("student", "adapters"):
        state = getattr(into[0], part).state_dict()
        for key, value in getattr(trainee, part).state_dict().items():
            assert torch.equal(state[key], value), (part, key)
    got, expected = into[1].state_dict(), optimizer.state_dict()
    assert got["param_groups"] == expected["param_groups"] and len(got["state"]) > 0
    for key, state in expected["state"].items():
        assert all(torch.equal(got["state"][key][k], v) for k, v in state.items()), key
    assert into[2].get_scale() == scaler.get_scale() == 2.0**7


@pytest.mark.parametrize(
    "entry, value, message",
    [
        ("history", None, "entry 'history' missing"),
        ("optimizer", "damaged", "entry 'optimizer': a str, not an object"),
        ("scaler", "damaged", "entry 'scaler': a str, of the wrong type"),
    ],
)
def test_a_last_checkpoint_without_what_resuming_needs_is_refused(
    entry, value, message, fake_voc, tmp_path
):
    """An entry missing (None here) or not a state dict: one UserError, before anything loads
    (a disabled GradScaler, as on the CPU, would accept any state without a word)."""
    args, saved = saved_run(fake_voc, tmp_path, "--kd", "none")
    ckpt = load_file(train.last_path(args.out), "c")
    if value is None:
        del ckpt[entry]
    else:
        ckpt[entry] = value
    torch.save(ckpt, train.last_path(args.out))
    with pytest.raises(UserError, match=f"is not a checkpoint of train.py, .*\\({message}\\)$"):
        train.resumed_history(args, *saved)


def test_an_optimizer_state_that_does_not_fit_is_one_error(trained, fake_voc, tmp_path):
    out = resumable(trained, tmp_path)
    ckpt = load_file(train.last_path(trained["out"]), "c")
    ckpt["optimizer"]["param_groups"][0]["params"] = [0, 1]  # another model's size
    torch.save(ckpt, train.last_path(out))
    proc = train_tiny(fake_voc, out, "--kd", "none", "--epochs", 3, "--resume")
    assert proc.returncode == 1 and "optimizer state does not fit" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_log_of_the_same_name_from_another_out_folder_is_not_replaced(
    fake_voc, tmp_path, monkeypatch
):
    """Two runs whose --out differ only in folder share --out-dir's <stem>_log.csv."""
    no_work(monkeypatch)
    theirs = tmp_path / "student_none_log.csv"
    theirs.write_text("the other run's log\n", encoding="utf-8")
    args = tiny_args(fake_voc, tmp_path, "--out", tmp_path / "mine" / "student_none.pth")
    with pytest.raises(UserError, match=f"{theirs} already exist"):
        train.main(args)
    assert theirs.read_text(encoding="utf-8") == "the other run's log\n"


def test_a_checkpoint_is_written_under_a_pth_name_only(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--out", "weights/student.onnx"])
    assert "must end in .pth" in capsys.readouterr().err


def test_training_masks_that_are_all_void_are_refused_after_the_first_epoch(tmp_path):
    make_fake_voc(tmp_path, num_images=4)
    train_ids = read_split(tmp_path, "train")
    for name in train_ids:
        mask = tmp_path / VOC.subdir / "SegmentationClass" / f"{name}.png"
        size = Image.open(mask).size
        Image.fromarray(np.full(size[::-1], 255, np.uint8)).save(mask)
    with pytest.raises(UserError, match="every training crop of epoch 1/2 is all void"):
        train.main(tiny_args(tmp_path, tmp_path, "--epochs", "2"))
    assert not list(tmp_path.glob("*.pth"))


def test_a_run_on_real_data_does_not_continue_a_synthetic_one(trained, fake_voc, tmp_path):
    real = tmp_path / "data"
    shutil.copytree(fake_voc, real)
    (real / VOC.subdir / SYNTHETIC_MARKER).unlink()  # now it looks like a real VOC tree
    out = resumable(trained, tmp_path)
    proc = train_tiny(real, out, "--epochs", 3, "--resume")
    assert proc.returncode == 1 and "trained on SYNTHETIC data and --data-root holds real" in (
        proc.stderr
    )


# ----------------------------------------------------------------------------- other platforms


@pytest.mark.slow
def test_a_closed_terminal_is_one_line_with_workers(fake_voc, tmp_path):
    """SIGHUP reaches the script and its DataLoader workers alike: the script says one line
    and exits 130, the workers say nothing, the last epoch is kept. (A SIGTERM to the group:
    the script answers it so too, tests/test_files.py; a worker ends quietly, test_cli.py.)"""
    sig = signal.SIGHUP
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "--data-root",
        str(fake_voc),
        *map(str, TINY_TRAIN),
        "--num-workers",
        "1",
        "--epochs",
        "100",
        "--out",
        str(tmp_path / "s.pth"),
        "--out-dir",
        str(tmp_path),
    ]
    paths = os.pathsep.join([str(GUARD), str(ROOT)])
    env = dict(os.environ, PYTHONPATH=paths, PYTHONUNBUFFERED="1")  # each line as printed
    with subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        for line in proc.stdout:  # the run is in its second epoch
            if line.startswith("epoch 1:"):
                break
        os.killpg(proc.pid, sig)
        stderr = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    lines = [line for line in stderr.splitlines() if line.strip() and "%|" not in line]
    last, model = load_file(tmp_path / "s_last.pth", "c"), load_file(tmp_path / "s.pth", "c")
    done = last["epoch"]  # the epoch under way when the signal came is dropped, not half-saved
    assert lines[-1] == (
        f"interrupted: {tmp_path / 's_last.pth'} holds epoch {done}; continue with --resume"
    )
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert "DataLoader worker" not in stderr and done == model["epoch"] == len(last["history"])
    assert all(torch.equal(v, last["model"][k]) for k, v in model["model"].items())


def test_a_log_held_open_by_another_program_is_skipped_and_training_goes_on(
    fake_voc, tmp_path, monkeypatch
):
    """Windows cannot replace a file that a spreadsheet holds open: the checkpoints, written
    first, are saved each epoch, and the run goes on, saying so."""
    real = os.replace

    def held_open(src, dst):
        if str(dst).endswith("_log.csv"):
            raise PermissionError(13, "The process cannot access the file")
        real(src, dst)

    monkeypatch.setattr(os, "replace", held_open)
    monkeypatch.setattr(files, "REPLACE_WAITS_S", (0.001,))
    proc = train_tiny(fake_voc, tmp_path / "s.pth", "--kd", "none", "--epochs", 2)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(f"warning: cannot replace {tmp_path / 's_log.csv'}") == 2
    assert load_file(tmp_path / "s_last.pth", "c")["epoch"] == 2
    assert (tmp_path / "s_curves.png").exists() and not (tmp_path / "s_log.csv").exists()


@pytest.mark.parametrize("saved_scaled, resumed_scaled", [(False, True), (True, False)])
def test_a_run_moves_between_the_cpu_and_cuda_on_resume(
    fake_voc, tmp_path, saved_scaled, resumed_scaled
):
    """--device is resumable: a CPU run (its loss scaler off, its state empty) continues on
    CUDA (the scaler on), and the reverse; the scaler starts afresh where there is no state."""
    args, (trainee, optimizer, scaler) = saved_run(fake_voc, tmp_path, "--kd", "none")
    scaler = torch.amp.GradScaler("cpu", enabled=saved_scaled, init_scale=2.0**7)
    history = [{**HISTORY_ROW, "val_miou": 0.25}]
    state = training_state(trainee, optimizer, scaler, vars(args), history, True)
    save_file(state, train.last_path(args.out))
    into = fresh_run(args, seed=1)
    into = (*into[:2], torch.amp.GradScaler("cpu", enabled=resumed_scaled, init_scale=8.0))
    assert train.resumed_history(args, *into) == history
    assert into[2].get_scale() == (8.0 if resumed_scaled else 1.0)


@pytest.mark.slow
def test_under_torchrun_a_process_that_cannot_start_stops_them_all_with_one_line(
    fake_voc, tmp_path
):
    """The first process finds its output taken; the second, that had nothing to refuse,
    stops with it, silently: one error line, no collective left waiting, no traceback of
    ours (torchrun reports the failed run after it)."""
    out = tmp_path / "s.pth"
    out.write_bytes(b"another run's checkpoint")
    proc = torchrun_tiny(fake_voc, out)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and ours == [
        f"error: {out} already exist(s); use --resume to continue that run or --overwrite to "
        "start over (or another --out or --out-dir)"
    ]
    assert "Connection closed" not in proc.stderr and "[rank" not in proc.stderr
    assert out.read_bytes() == b"another run's checkpoint"


class Gathered:
    """torch.distributed for `distributed.agree` and `together`, as rank `rank` of processes
    whose objects are `others` (this process's own goes in at its rank)."""

    def __init__(self, rank: int, others: list):
        self.rank, self.others = rank, others

    def is_initialized(self) -> bool:
        return True

    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return len(self.others) + 1

    def all_gather_object(self, out: list, value) -> None:
        out[:] = self.others[: self.rank] + [value] + self.others[self.rank :]


def test_processes_that_see_different_data_are_refused_before_the_first_step(monkeypatch):
    """Different numbers of steps would leave one process waiting for the other forever."""
    monkeypatch.setattr(distributed, "dist", Gathered(0, [[4, 2]]))
    distributed.agree("numbers of images", [4, 2])
    monkeypatch.setattr(distributed, "dist", Gathered(0, [[6, 2]]))
    with pytest.raises(UserError, match=r"see different numbers of images \(\[4, 2\], \[6, 2\]\)"):
        distributed.agree("numbers of images", [4, 2])


def test_one_process_s_error_stops_every_process_the_first_saying_it(monkeypatch):
    monkeypatch.setattr(distributed, "dist", Gathered(0, ["no data on this node"]))
    with pytest.raises(UserError, match=r"^no data on this node \(process 1\)$"):
        with distributed.together():
            pass
    monkeypatch.setattr(distributed, "dist", Gathered(1, [None]))
    with pytest.raises(cli.Stopped):
        with distributed.together():
            raise UserError("this process's own error, said by the first")
