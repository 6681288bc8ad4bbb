import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import GUARD, ROOT, TINY_TRAIN, load_script, run_python, run_script, train_tiny
from dataset import train_transforms, voc_dataset
from distill import training_loss
from model import build_student, load_file, load_student

train = load_script("train")


def test_a_tiny_run_writes_checkpoints_log_and_plot(trained):
    out, logs = trained["out"], trained["logs"]
    ckpt = load_file(out, "checkpoint")
    assert set(ckpt) >= {"model", "args", "epoch", "miou", "optimizer", "scheduler"}
    assert ckpt["args"]["kd"] == "none" and ckpt["synthetic"] is True
    assert ckpt["adapters"] is None and not any(k.startswith("teacher") for k in ckpt["model"])
    last = load_file(train.last_path(out), "checkpoint")
    assert last["epoch"] == 2 and len(last["history"]) == 2
    rows = list(csv.DictReader(open(logs / "student_none_log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "train_ce", "val_loss", "val_miou", "lr", "epoch_time_s"} <= set(rows[0])
    assert (logs / "student_none_curves.png").stat().st_size > 1000
    assert "training time" in trained["proc"].stdout


def test_resume_continues_after_the_last_epoch(trained, tmp_path, fake_voc):
    out = tmp_path / "student_none.pth"
    for src, dst in (
        (trained["out"], out),
        (train.last_path(trained["out"]), train.last_path(out)),
    ):
        dst.write_bytes(src.read_bytes())
    proc = train_tiny(fake_voc, out, "--kd", "none", "--epochs", 3, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout and "epoch 3/3" in proc.stderr
    assert "epoch 1/3" not in proc.stderr
    last = load_file(train.last_path(out), "checkpoint")
    assert last["epoch"] == 3 and [r["epoch"] for r in last["history"]] == [1, 2, 3]


def test_an_existing_checkpoint_is_not_overwritten_without_asking(trained, fake_voc):
    before = trained["out"].read_bytes()
    proc = train_tiny(fake_voc, trained["out"], "--epochs", 1)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert trained["out"].read_bytes() == before


@pytest.mark.parametrize("kd", ["response", "feature", "both"])
def test_each_kd_mode_runs_end_to_end(kd, tmp_path, fake_voc):
    out = tmp_path / f"student_{kd}.pth"
    proc = train_tiny(fake_voc, out, "--kd", kd, "--epochs", 1)
    assert proc.returncode == 0, proc.stderr
    ckpt = load_file(out, "checkpoint")
    assert ckpt["args"]["kd"] == kd
    assert (ckpt["adapters"] is not None) == (kd != "response")
    header = (tmp_path / f"student_{kd}_log.csv").read_text().splitlines()[0].split(",")
    expected = {"response": {"train_soft"}, "feature": {"train_feat"},
                "both": {"train_soft", "train_feat"}}[kd]  # fmt: skip
    assert expected | {"train_ce"} <= set(header)


@pytest.mark.parametrize("flags, message", [
    (["--kd", "distill"], "invalid choice"),
    (["--epochs", "0"], "argument --epochs: must be at least 1, not 0"),
    (["--lr", "-1"], "argument --lr: must be above 0, not -1.0"),
    (["--num-workers", "many"], "argument --num-workers: invalid int value"),
    (["--device", "cuda:banana"], "unknown device"),
])  # fmt: skip
def test_bad_flag_values_exit_with_a_clear_message(flags, message, fake_voc, tmp_path):
    proc = run_script("train.py", "--data-root", fake_voc, "--out", tmp_path / "s.pth", *flags)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_dataset_exits_with_the_clear_message(tmp_path):
    proc = run_script(
        "train.py",
        "--data-root",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "s.pth",
        "--device",
        "cpu",
    )
    assert proc.returncode != 0 and "--download" in proc.stderr and "Traceback" not in proc.stderr


def test_warmup_then_poly_decay():
    factor = train.warmup_poly(total_steps=100, warmup_steps=4)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(50) == pytest.approx(0.5**0.9) and factor(100) == 0.0 and factor(120) == 0.0


def test_a_nan_loss_stops_the_run_with_a_message():
    student = build_student()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loader = [(torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.uint8))]

    def nan_loss(model, images, masks):
        return model(images).sum() * float("nan"), {}

    with pytest.raises(SystemExit, match="loss became nan"):
        train.train_one_epoch(
            student,
            None,
            loader,
            nan_loss,
            optimizer,
            scheduler,
            scaler,
            torch.device("cpu"),
            "epoch 1/1",
        )


def test_a_few_dozen_steps_drive_the_training_loss_well_down(fake_voc):
    """A learning test on 4 fixed SYNTHETIC crops: gradients reach every part that matters."""
    torch.manual_seed(0)
    data = voc_dataset(fake_voc, "train", train_transforms(64))
    images = torch.stack([data[i][0] for i in range(4)])
    masks = torch.stack([data[i][1] for i in range(4)]).long()
    student = build_student().train()
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = training_loss(student, images, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_train_aug_trains_on_voc_and_sbd(tmp_path):
    from dataset import make_fake_voc

    make_fake_voc(tmp_path / "data", num_images=8, with_sbd=True)
    out = tmp_path / "student_none.pth"
    proc = train_tiny(tmp_path / "data", out, "--train-set", "train_aug", "--epochs", 1)
    assert proc.returncode == 0, proc.stderr
    assert load_file(out, "checkpoint")["args"]["train_set"] == "train_aug"


@pytest.mark.parametrize("kd", ["none", "response"])
def test_torchrun_with_two_gloo_processes_writes_one_loadable_checkpoint(kd, fake_voc, tmp_path):
    out = tmp_path / f"student_{kd}.pth"
    proc = run_python(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", ROOT / "train.py",
        "--data-root", fake_voc, "--out", out, "--log-dir", tmp_path, *TINY_TRAIN,
        "--kd", kd, "--epochs", 1,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1: train loss") == 1  # only rank 0 reports
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [out.name, f"student_{kd}_last.pth"]
    ckpt = load_file(out, "checkpoint")
    assert not any(key.startswith("module.") for key in ckpt["model"])
    load_student(out)  # what test.py does with it


def test_ctrl_c_saves_the_last_checkpoint_and_says_how_to_resume(fake_voc, tmp_path):
    out = tmp_path / "student_none.pth"
    command = [sys.executable, ROOT / "train.py", "--data-root", fake_voc, "--out", out,
               "--log-dir", tmp_path, *TINY_TRAIN, "--epochs", "1000"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=f"{GUARD}{os.pathsep}{ROOT}")
    proc = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    for line in proc.stdout:  # wait until one epoch is done and saved
        if line.startswith("epoch 1: train loss"):
            break
    time.sleep(0.5)  # well inside epoch 2 or its validation
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "interrupted: saved" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    last = load_file(train.last_path(out), "checkpoint")
    assert last["epoch"] >= 1 and len(last["history"]) == last["epoch"]
