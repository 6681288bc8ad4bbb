"""What the lab's scripts share, written once: where each output goes, the optimizer, and the
best/worst prediction panels. The layer right below the six scripts (train.py, test.py,
test_pretrained.py, benchmark.py, report.py, make_submission.py), which import nothing of
each other.

    from lab import OptimConfig, build_optimizer, student_path, last_path, save_overlays
"""

from cli import WEIGHTS_DIR, UserError

import dataclasses
import glob
import re
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from checkpoints import TRAINING_STATE, read_checkpoint, save_epoch
from dataset import image_path
from files import (
    AMOUNT,
    COUNT,
    FRACTION,
    FileInUse,
    ListOf,
    Maybe,
    Number,
    check_run_outputs,
    write_csv,
)
from metrics import best_and_worst
from visualize import drawn_here, overlay_panel, plot_history, save_png
from voc import NUM_CLASSES, SYNTHETIC_NOTE

STEP1_RESULT = "step1_fcn_resnet50.json"  # test_pretrained.py writes it, test.py reads it
COMPARISON = "kd_comparison"  # test.py --compare writes <out-dir>/kd_comparison.{md,json}
BENCHMARK_RESULT = "benchmark.json"
REPORT = "report.md"
OVERLAYS, PHOTOS = "overlays", "photos"  # folders under <out-dir>
TEACHER_PREFIX = "fcn_resnet50"  # Step 1's overlay names

# What test_pretrained.py and test.py write for a model and the report reads back.
RESULT = {
    "miou": FRACTION,
    "iou": ListOf(Maybe(FRACTION), NUM_CLASSES),
    "params": COUNT,
    "ms_per_image": AMOUNT,
    "ms_quartiles": ListOf(AMOUNT, 2),
    "input_size": COUNT,
    "device_name": str,
    "num_images": COUNT,
    "split": str,
    "date": str,
}
# What benchmark.py writes and the report reads back.
BENCHMARK = {
    "models": ListOf({"model": str, "runtime": str, "params": COUNT, "gflops": AMOUNT,
                      "ms_per_image": AMOUNT, "ms_quartiles": ListOf(AMOUNT, 2),
                      "times_student": AMOUNT, "mb": AMOUNT}, min_length=1),
    "train_steps": ListOf({"kd": str, "ms_per_step": AMOUNT, "overhead_vs_none": Number(-1)}),
    "device_name": str,
    "torch": str,
    "date": str,
    "size": COUNT,
    "batch_size": COUNT,
    "crop_size": COUNT,
}  # fmt: skip


def student_path(kd: str, weights_dir: str | Path = WEIGHTS_DIR) -> Path:
    """The model train.py --kd <kd> keeps (its last epoch): weights/student_<kd>.pth."""
    return Path(weights_dir) / f"student_{kd}.pth"


def last_path(out: str | Path) -> Path:
    """The last epoch's checkpoint beside the best one: <stem>_last.pth, what --resume reads."""
    out = Path(out)
    return out.with_name(f"{out.stem}_last{out.suffix}")


def log_path(out: str | Path, out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{Path(out).stem}_log.csv"


def curves_path(out: str | Path, out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{Path(out).stem}_curves.png"


def history_paths(out: str | Path, out_dir: str | Path) -> tuple:
    """(the CSV log, the curves' plot) of the run whose model is `out`."""
    return log_path(out, out_dir), curves_path(out, out_dir)


def run_outputs(out: str | Path, out_dir: str | Path) -> list:
    """Every file a training run writes: the model, the training state, the log, the curves."""
    return [Path(out), last_path(out), *history_paths(out, out_dir)]


def check_run(out, out_dir, cache: str | None, resume: bool, overwrite: bool) -> None:
    """Refuse a training run that would replace another's outputs, or could not write its own
    (files.check_run_outputs); with --resume, the run to continue must be there."""
    resumed = None
    if resume and not overwrite:
        last = last_path(out)
        if not last.exists():
            raise UserError(f"--resume: there is no run to continue ({last} does not exist)")
        resumed = read_checkpoint(last, "checkpoint to resume", TRAINING_STATE)["history"]
    check_run_outputs(run_outputs(out, out_dir), cache, overwrite, resumed)


def save_run(state: dict, out, out_dir, title: str) -> None:
    """An epoch's training state and model (checkpoints.save_epoch), then its log and curves;
    a log or plot that another program holds open (Windows) is skipped with a warning, the
    checkpoints being saved: the next epoch writes the whole history again."""
    save_epoch(state, Path(out), last_path(out))
    log, curves = history_paths(out, out_dir)
    for write in (
        partial(write_csv, state["history"], log),
        partial(plot_history, state["history"], curves, title),
    ):
        try:
            write()
        except FileInUse as e:
            print(f"warning: {e}; training goes on (the checkpoints are saved)", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer of train.py (its flags' defaults) and of benchmark.py's timed steps."""

    name: str = "sgd"  # DeepLab's VOC recipe; "adamw" is the other choice
    lr: float = 0.01  # peak lr, DeepLab's 0.007-0.01 at batch 16
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD's usual value for segmentation (DeepLab, torchvision refs)


OPTIMIZERS = ("sgd", "adamw")
POLY_POWER = 0.9  # lr = base * (1 - step / total)^0.9


def build_optimizer(params, config: OptimConfig) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def warmup_poly(total_steps: int, warmup_steps: int):
    """Learning-rate factor of a step: linear from 0 to 1 over warmup_steps, then
    (1 - step / total_steps)^0.9 down to 0 (DeepLab's "poly" schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1 - step / total_steps) ** POLY_POWER

    return factor


def build_scheduler(
    optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float, done_epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + poly (warmup_poly), stepped once per iteration, placed after `done_epochs`
    whole epochs: a resumed run gets the lr an uninterrupted one has at that point, whatever
    an interrupted epoch had stepped."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    factor = warmup_poly(epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, done_epochs * steps_per_epoch - 1)


def save_overlays(
    dataset,
    scores: list,
    predictions: list,
    count: int,
    out_dir: str | Path,
    prefix: str,
    what: str,
    synthetic: bool,
) -> list:
    """Panels (image | ground truth | prediction) of the `count` best and `count` worst
    images by per-image mIoU (`scores`, metrics.best_and_worst), their predicted classes read
    from `predictions` (kept by metrics.evaluate: exactly what was scored), written as
    <out_dir>/<prefix>_{best,worst}<rank>_<image id>.png and titled with `what` was
    evaluated; the panels a previous run left under that prefix (named so, and drawn by
    visualize.save_png) are removed first. Returns the paths written."""
    best, worst = best_and_worst(scores, count)
    out_dir = Path(out_dir)
    panel = re.compile(rf"{re.escape(prefix)}_(best|worst)[0-9]+_.+\.png")
    for old in out_dir.glob(f"{glob.escape(prefix)}_*.png"):
        if panel.fullmatch(old.name) and drawn_here(old):  # never a picture of the user's
            old.unlink()  # a previous run's panels: they would be taken for this run's
    paths = []
    for kind, picks in (("best", best), ("worst", worst)):
        for rank, index in enumerate(picks, 1):
            _, mask = dataset[index]
            source = image_path(dataset, index)
            title = f"{what}: {source.stem}, {kind} {rank}, mIoU {100 * scores[index]:.1f}%"
            paths.append(out_dir / f"{prefix}_{kind}{rank}_{source.stem}.png")
            pred = predictions[index].array()
            with Image.open(source) as photo:
                panel = overlay_panel(photo, np.asarray(mask), pred, title, synthetic)
            save_png(panel, paths[-1], title + (f" ({SYNTHETIC_NOTE})" if synthetic else ""))
    return paths
