"""Train the student on VOC 2012 train (Steps 2-3), with or without distillation (Step 4).

    python train.py --kd none        # plain cross-entropy         -> weights/student_none.pth
    python train.py --kd response    # + soft targets (tau)        -> weights/student_response.pth
    python train.py --kd feature     # + cosine feature distance   -> weights/student_feature.pth
    python train.py --kd both        # response + feature          -> weights/student_both.pth
    python train.py --kd none --resume   # continue from weights/student_none_last.pth
    python train.py --kd response --train-set train_aug   # on the 10,582-image set (needs SBD)
    torchrun --nproc_per_node=4 train.py --kd response    # 4 GPUs, --batch-size per GPU

Offline smoke run on SYNTHETIC data (no download, numbers mean nothing):
    python dataset.py --fake-voc data_fake --num-images 8
    python train.py --data-root data_fake --kd response --teacher-weights none \\
        --no-pretrained-backbone --epochs 2 --batch-size 2 --crop-size 64 --device cpu

Each epoch evaluates on val, then writes the last checkpoint (<out stem>_last.pth), the best
one by val mIoU (--out), the log <out-dir>/<out stem>_log.csv and the plot
<out-dir>/<out stem>_curves.png. Ctrl+C leaves the last completed epoch's checkpoint, from
which --resume continues exactly as if nothing had stopped.
"""

from cli import (
    OUTPUTS_DIR,
    UserError,
    add_data_root,
    add_device,
    add_num_workers,
    check_output,
    exclusive,
    non_negative_float,
    number,
    parser,
    path_arg,
    positive_int,
    resolve_device,
    run,
    seed_int,
    write_text,
)

import argparse
import contextlib
import csv
import io
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dataset import (
    eval_loader,
    image_path,
    train_aug_dataset,
    train_transforms,
    training_loader,
    voc_dataset,
)
from distill import KD_MODES, KDConfig, Trainee, teacher_outputs
from lab import (
    OPTIMIZERS,
    OptimConfig,
    build_optimizer,
    curves_path,
    last_path,
    log_path,
    student_path,
)
from metrics import evaluate
from model import (
    STUDENT_TAPS,
    StudentConfig,
    build_student,
    build_teacher,
    check_checkpoint,
    load_file,
    load_state,
    non_finite,
    save_file,
)
from teacher_cache import TeacherCache
from visualize import plot_history
from voc import SYNTHETIC_NOTE, is_synthetic

POLY_POWER = 0.9  # lr = base * (1 - step / total)^0.9, DeepLab's "poly" schedule
# Flags a --resume may change: they do not change what the saved state means.
RESUMABLE = {
    "epochs",
    "resume",
    "overwrite",
    "num_workers",
    "device",
    "out",
    "out_dir",
    "data_root",
}
# Below this crop, the ASPP's widest rate reaches past the stride-16 map: those branches see
# mostly padding, and their BatchNorm statistics do not match full-size images.
MIN_CROP = STUDENT_TAPS["high"][1] * (max(StudentConfig().rates) + 1)
DEFAULT_OPTIM = OptimConfig()


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    add_run_flags(p)
    add_loss_flags(p.add_argument_group("loss (alpha applies in every mode, the others with --kd)"))
    args = p.parse_args(argv)
    args.out = args.out or str(student_path(args.kd))
    if args.warmup_epochs > args.epochs:
        p.error(f"argument --warmup-epochs: must be at most --epochs ({args.epochs})")
    config = kd_config(args)
    mode = config.mode
    if config.alpha + config.beta * mode.soft + config.feat_weight * mode.features == 0:
        p.error(f"every term of the --kd {args.kd} loss has weight 0: nothing would train")
    if args.teacher_cache is not None and not mode.soft:
        p.error(f"argument --teacher-cache: --kd {args.kd} has no response term to cache")
    if args.crop_size < MIN_CROP:
        print(
            f"warning: --crop-size {args.crop_size} is below {MIN_CROP}: the ASPP's rate-"
            f"{max(StudentConfig().rates)} branch then sees mostly padding and its BatchNorm "
            "statistics will not match full-size images (fine for smoke tests)",
            file=sys.stderr,
        )
    return args


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kd", default="none", choices=KD_MODES, help="distillation method")
    add_data_root(p)
    p.add_argument(
        "--train-set",
        default="train",
        choices=("train", "train_aug"),
        help="train: VOC 2012 train, 1,464 images, the lab's; train_aug: + SBD, 10,582 images",
    )
    p.add_argument(
        "--epochs", type=number(int, 1, 100_000), default=100, help="passes over --train-set"
    )
    p.add_argument(
        "--batch-size",
        type=number(int, 1, 4096),
        default=16,
        help="images per step, per process under torchrun",
    )
    p.add_argument("--crop-size", type=number(int, 32, 4096), default=480, help="square train crop")
    p.add_argument(
        "--optimizer",
        default=DEFAULT_OPTIM.name,
        choices=OPTIMIZERS,
        help=f"sgd (momentum {DEFAULT_OPTIM.momentum}) or adamw",
    )
    p.add_argument(
        "--lr",
        type=number(float, 0, 10, strict=True),
        default=DEFAULT_OPTIM.lr,
        help="peak learning rate",
    )
    p.add_argument(
        "--weight-decay",
        type=number(float, 0, 1),
        default=DEFAULT_OPTIM.weight_decay,
        help="L2 penalty of the optimizer",
    )
    p.add_argument(
        "--warmup-epochs",
        type=non_negative_float,
        default=1.0,
        help="linear warm-up before the poly decay, at most --epochs",
    )
    add_device(p)
    add_num_workers(p)
    p.add_argument("--seed", type=seed_int, default=0, help="random seed")
    p.add_argument(
        "--pretrained-backbone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the encoder from ImageNet weights",
    )
    p.add_argument(
        "--limit-train",
        type=positive_int,
        metavar="N",
        help="train on the first N images only, for quick runs",
    )
    p.add_argument(
        "--limit-val", type=positive_int, metavar="N", help="validate on the first N images only"
    )
    p.add_argument(
        "--out", type=path_arg, help="best checkpoint's path; none given: weights/student_<kd>.pth"
    )
    p.add_argument(
        "--out-dir", type=path_arg, default=OUTPUTS_DIR, help="folder of the CSV log and the plot"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint beside --out"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing checkpoint at --out"
    )


def add_loss_flags(kd: argparse._ArgumentGroup) -> None:
    kd.add_argument(
        "--alpha",
        type=non_negative_float,
        default=1.0,
        help="weight of the hard cross-entropy term",
    )
    kd.add_argument(
        "--beta",
        type=non_negative_float,
        default=1.0,
        help="weight of the soft term (response, both), already multiplied by tau^2",
    )
    kd.add_argument(
        "--tau",
        type=number(float, 0.1, 100),
        default=2.0,
        help="temperature (response, both); below 0.1 the soft targets are one-hot in float32",
    )
    kd.add_argument(
        "--feat-weight",
        type=non_negative_float,
        default=1.0,
        help="weight of the summed cosine feature distances (feature, both)",
    )
    kd.add_argument(
        "--teacher-weights",
        default="default",
        help="default (torchvision COCO_WITH_VOC_LABELS_V1), a state dict path, or "
        "none (random, smoke tests only)",
    )
    kd.add_argument(
        "--teacher-cache",
        type=path_arg,
        metavar="DIR",
        help="response, both: the teacher's logits computed once per training image, stored in "
        "DIR (built on first use) and resampled over each crop, instead of running the teacher "
        "every step; the teacher then sees whole images, not crops. Feature KD always runs the "
        "live teacher: its maps are too large to store. None given: the live teacher",
    )


def kd_config(args: argparse.Namespace) -> KDConfig:
    return KDConfig(args.kd, args.alpha, args.beta, args.tau, args.feat_weight)


def warmup_poly(total_steps: int, warmup_steps: int):
    """Learning-rate factor of a step: linear from 0 to 1 over warmup_steps, then
    (1 - step / total_steps)^0.9 down to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1 - step / total_steps) ** POLY_POWER

    return factor


def init_distributed(device: torch.device) -> tuple:
    """(rank, world size, device) of this process. torchrun sets RANK, WORLD_SIZE and
    LOCAL_RANK; then each process joins the group (NCCL on CUDA, gloo on CPU) and takes GPU
    LOCAL_RANK. Plain python sets none of them: (0, 1, device), no process group."""
    if "RANK" not in os.environ:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


@contextlib.contextmanager
def main_process_first(is_main: bool):
    """Run the block on the first process, then on the others, so that a download into the
    torch hub cache happens once, not once per process at the same time."""
    distributed = dist.is_initialized()
    if distributed and not is_main:
        dist.barrier()
    yield
    if distributed and is_main:
        dist.barrier()


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: refuse to replace a checkpoint without --overwrite, and fail now on an
    output path that cannot be written, not after the first epoch."""
    out, last = Path(args.out), last_path(args.out)
    if not args.resume and not args.overwrite and (out.exists() or last.exists()):
        raise UserError(
            f"{out} or {last} already exists; use --resume to continue it or "
            "--overwrite to start over"
        )
    for path in (out, last):
        check_output(path)
    check_output(args.out_dir, folder=True)
    if args.teacher_cache is not None and not Path(args.teacher_cache).exists():
        check_output(Path(args.teacher_cache).parent, folder=True)  # where it will be built


def build_loaders(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> tuple:
    """(train loader, val loader); under torchrun each process gets its share of both."""
    transforms = train_transforms(args.crop_size)
    if args.train_set == "train_aug":
        train_set = train_aug_dataset(args.data_root, transforms, args.limit_train)
    else:
        train_set = voc_dataset(args.data_root, "train", transforms, args.limit_train)
    train = training_loader(
        train_set, args.batch_size, args.num_workers, args.seed, world, device.type == "cuda"
    )
    val = eval_loader(
        args.data_root,
        "val",
        num_workers=args.num_workers,
        limit=args.limit_val,
        shard=(rank, world),
    )
    return train, val


def build_models(args: argparse.Namespace, device: torch.device) -> tuple:
    """(Trainee: the student and its adapters, the frozen teacher or None for --kd none)."""
    student = build_student(pretrained_backbone=args.pretrained_backbone)
    trainee = Trainee(student, kd_config(args)).to(device)
    teacher = build_teacher(args.teacher_weights).to(device) if args.kd != "none" else None
    return trainee, teacher


def optim_config(args: argparse.Namespace) -> OptimConfig:
    return OptimConfig(args.optimizer, args.lr, args.weight_decay)


def build_scheduler(args, optimizer, steps_per_epoch: int, done_epochs: int):
    """Warm-up + poly, stepped once per iteration, placed after `done_epochs` whole epochs:
    a resumed run gets the lr an uninterrupted one has at that point, whatever an interrupted
    epoch had stepped."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    factor = warmup_poly(args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, done_epochs * steps_per_epoch - 1)


def resume(args: argparse.Namespace, model_without_ddp: Trainee, optimizer, scaler) -> list:
    """Load the last checkpoint's state into the model, optimizer and scaler; returns its
    history. Refuses a run whose flags differ from the checkpoint's, listing them; a flag the
    checkpoint does not record (added to train.py after it was written) counts as its default."""
    last = last_path(args.out)
    ckpt = check_checkpoint(load_file(last, "checkpoint to resume"), last)
    missing = [k for k in ("args", "history", "optimizer", "scaler") if k not in ckpt]
    if missing or not isinstance(ckpt["optimizer"], dict) or not isinstance(ckpt["scaler"], dict):
        raise UserError(f"{last} cannot be resumed: no {', '.join(missing) or 'optimizer state'}")
    saved, defaults = ckpt["args"], vars(parse_args([]))
    changed = [
        f"--{k.replace('_', '-')} {v} (checkpoint: {saved.get(k, defaults.get(k))})"
        for k, v in vars(args).items()
        if k not in RESUMABLE and saved.get(k, defaults.get(k)) != v
    ]
    if changed:
        raise UserError(
            f"{last} was trained with other flags: {', '.join(changed)}; resume with "
            "the checkpoint's flags, or start over with --overwrite"
        )
    load_state(model_without_ddp.student, ckpt["model"], f"checkpoint {last}")
    if model_without_ddp.adapters is not None:
        load_state(model_without_ddp.adapters, ckpt["adapters"], f"adapters of {last}")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{last}: its optimizer state does not fit this run ({e})") from None
    if len(ckpt["history"]) >= args.epochs:
        raise UserError(f"{last} already has {len(ckpt['history'])} epochs; raise --epochs")
    return ckpt["history"]


def teacher_targets(args, teacher, train_set, device: torch.device, is_main: bool):
    """targets(images, where, indices) -> what the loss takes from the teacher for a batch:
    None (--kd none), the live teacher's (logits, features), or with --teacher-cache the
    cached logits resampled over each crop (and, for --kd both, the live features)."""
    if teacher is None:
        return lambda images, where, indices: None
    if args.teacher_cache is None:
        return lambda images, where, indices: teacher_outputs(teacher, images)
    files = [image_path(train_set, i) for i in range(len(train_set))]
    with main_process_first(is_main):  # rank 0 builds it, the others wait, then read it
        cache = TeacherCache.open_or_build(args.teacher_cache, teacher, files, device)
    features = KD_MODES[args.kd].features

    def targets(images, where, indices):
        logits = cache.crop_logits(where, indices, tuple(images.shape[-2:]), device)
        return logits, teacher_outputs(teacher, images)[1] if features else None

    return targets


def start_epoch(loader, seed: int, epoch: int, rank: int, world: int) -> None:
    """Seed the epoch's shuffle, augmentation (the loader's workers take their seeds from this
    generator) and dropout from the seed, the epoch and the process alone, so that a resumed
    run sees exactly the batches an uninterrupted one would: process `rank` of `world` in
    epoch e draws from seed + e * world + rank, one seed per (epoch, process), none repeated."""
    torch.manual_seed(seed + epoch * world + rank)
    if world > 1:
        loader.sampler.set_epoch(epoch)  # another shuffle each epoch, the same on every process


def train_one_epoch(model, targets, loader, optimizer, scheduler, scaler, device, desc) -> dict:
    """One pass over the loader, one optimizer and scheduler step per batch; returns the mean
    of each loss term as {"train_<term>": x}, averaged over processes under torchrun. The bar
    shows the running loss and the lr of the step just taken."""
    model.train()
    sums, steps = {}, 0
    bar = tqdm(
        loader, desc=desc, dynamic_ncols=True, disable=dist.is_initialized() and dist.get_rank() > 0
    )
    for images, masks, where, indices in bar:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True).long()
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            loss, terms = model(images, masks, targets(images, where, indices))
        stop_if_not_finite(loss.detach(), f"the loss, at step {steps + 1} of {desc},")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        lr = optimizer.param_groups[0]["lr"]
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        steps += 1
        for name, value in {"loss": loss.detach(), **terms}.items():
            sums[name] = sums.get(name, 0.0) + value  # on the device: no sync per term
        bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}", lr=f"{lr:.2e}")
    means = torch.stack(list(sums.values())) / steps
    if dist.is_initialized():  # the mean over all processes, as a single process would log it
        dist.all_reduce(means)
        means /= dist.get_world_size()
    return {f"train_{name}": value for name, value in zip(sums, means.tolist())}


def stop_if_not_finite(value: torch.Tensor, what: str) -> None:
    """A UserError on every process when `value` is NaN or infinite on any of them (they stop
    together, or the others would wait forever). A sync point: it reads the value."""
    bad = (~torch.isfinite(value)).float()
    if dist.is_initialized():
        dist.all_reduce(bad)
    if bad.item():
        became = "NaN or infinite in another process" if torch.isfinite(value) else value.item()
        raise UserError(
            f"{what} became {became}; stopping without saving this epoch. Try a lower --lr."
        )


def checkpoint(args, model_without_ddp: Trainee, optimizer, scaler, history, synthetic) -> dict:
    """The saved run: the student's state dict alone under `model` (the teacher is never
    saved, the adapters apart), what --resume needs, and the history of every epoch."""
    mious = [row["val_miou"] for row in history]
    adapters = model_without_ddp.adapters
    return {
        "model": model_without_ddp.student.state_dict(),
        "adapters": adapters.state_dict() if adapters is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "args": vars(args),
        "epoch": len(history),
        "miou": mious[-1] if mious else math.nan,
        "best_miou": max(mious, default=math.nan),
        "history": history,
        "synthetic": synthetic,
    }


def save_epoch(args, ckpt: dict, title: str) -> None:
    """The log, the plot, the last checkpoint and, when this epoch has the best val mIoU so
    far, the best one; a model with non-finite weights or statistics is never saved."""
    bad = non_finite(ckpt["model"])
    if bad:
        raise UserError(
            f"the student's {bad[0]} became NaN or infinite; stopping without "
            "saving this epoch. Try a lower --lr."
        )
    write_log(ckpt["history"], log_path(args.out, args.out_dir))
    plot_history(ckpt["history"], curves_path(args.out, args.out_dir), title)
    save_file(ckpt, last_path(args.out))
    if ckpt["miou"] == ckpt["best_miou"]:
        save_file(ckpt, args.out)


def write_log(history: list, path: Path) -> None:
    fields = list(dict.fromkeys(key for row in history for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    write_text(text.getvalue(), path)


def validate(student, loader, device: torch.device, epoch: int, is_main: bool) -> dict:
    """The val columns of the epoch's row: val_ce (the same pixel cross-entropy as train_ce,
    on val), val_miou (a fraction, as in every file; the console shows %). Under torchrun
    every process first takes rank 0's BatchNorm statistics: each updated its own in its last
    training step (DDP syncs them at the start of the next forward only), and the val numbers
    are to be those of the model rank 0 saves."""
    if dist.is_initialized():
        for buffer in student.buffers():
            dist.broadcast(buffer, 0)
    val = evaluate(student, loader, device, "val", is_main)
    if val["pixels"] == 0:
        raise UserError("no val image has a labelled pixel (all are 255): nothing to score")
    stop_if_not_finite(
        torch.tensor(val["loss"], device=device), f"the val CE, after epoch {epoch},"
    )
    return {"val_ce": val["loss"], "val_miou": val["miou"]}


def main(args: argparse.Namespace) -> None:
    check_outputs(args)
    # One run at a time per output: a second one would silently replace the first's files.
    first = os.environ.get("RANK", "0") == "0"  # under torchrun, the process that saves
    with exclusive(f"{args.out}.lock") if first else contextlib.nullcontext():
        run_training(args)


def run_training(args: argparse.Namespace) -> None:
    """The run: data, models, optimizer (resumed with --resume), then the epochs."""
    rank, world, device = init_distributed(resolve_device(args.device))
    is_main = rank == 0  # only the first process prints, logs and saves
    torch.manual_seed(args.seed)
    synthetic = is_synthetic(args.data_root)
    train_loader, val_loader = build_loaders(args, rank, world, device)
    with main_process_first(is_main):
        model_without_ddp, teacher = build_models(args, device)
    targets = teacher_targets(args, teacher, train_loader.dataset.dataset, device, is_main)
    model = DistributedDataParallel(model_without_ddp) if world > 1 else model_without_ddp
    optimizer = build_optimizer(model_without_ddp.parameters(), optim_config(args))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    history = resume(args, model_without_ddp, optimizer, scaler) if args.resume else []
    if is_main and history:
        print(f"resuming {last_path(args.out)} after epoch {len(history)}")
    scheduler = build_scheduler(args, optimizer, len(train_loader), len(history))
    tag = SYNTHETIC_NOTE if synthetic else "VOC 2012"
    title = f"student, --kd {args.kd} ({tag})"
    try:
        for epoch in range(len(history) + 1, args.epochs + 1):
            start = time.perf_counter()
            start_epoch(train_loader, args.seed, epoch, rank, world)
            # lr: the first step's, as the bar shows each step's (the schedule is per step)
            row = {"epoch": epoch, "data": tag, "lr": scheduler.get_last_lr()[0]}
            row |= train_one_epoch(
                model,
                targets,
                train_loader,
                optimizer,
                scheduler,
                scaler,
                device,
                f"epoch {epoch}/{args.epochs}",
            )
            row |= validate(model_without_ddp.student, val_loader, device, epoch, is_main)
            row["epoch_time_s"] = time.perf_counter() - start
            history.append(row)
            if is_main:
                print(
                    f"epoch {epoch}: train CE {row['train_ce']:.4f}, val CE {row['val_ce']:.4f}, "
                    f"val mIoU {100 * row['val_miou']:.2f}%, {row['epoch_time_s']:.1f} s"
                    f"{' (SYNTHETIC)' if synthetic else ''}"
                )
                ckpt = checkpoint(args, model_without_ddp, optimizer, scaler, history, synthetic)
                save_epoch(args, ckpt, title)
    except KeyboardInterrupt:
        # The last completed epoch is on disk already; the interrupted one is dropped, so that
        # --resume redoes it from exactly the state an uninterrupted run started it from.
        done = f"{last_path(args.out)} holds epoch {len(history)}" if history else "no epoch done"
        raise KeyboardInterrupt(f"{done}; continue with --resume") from None
    if world > 1:
        dist.destroy_process_group()
    if is_main:
        print_summary(args, history, teacher is not None, synthetic)


def print_summary(args: argparse.Namespace, history: list, with_teacher: bool, synthetic: bool):
    times = [row["epoch_time_s"] for row in history]
    best = max(history, key=lambda row: row["val_miou"])
    print(
        f"best val mIoU {100 * best['val_miou']:.2f}% (epoch {best['epoch']})"
        f"{' on ' + SYNTHETIC_NOTE if synthetic else ''} -> {args.out}; "
        f"last -> {last_path(args.out)}"
    )
    print(
        f"training time {sum(times) / 60:.1f} min, {sum(times) / len(times):.1f} s per epoch "
        f"(including validation{' and the teacher' if with_teacher else ''})"
    )
    print(f"log -> {log_path(args.out, args.out_dir)} and {curves_path(args.out, args.out_dir)}")


if __name__ == "__main__":
    run(main, parse_args)
