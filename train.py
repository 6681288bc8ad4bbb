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
one by val mIoU (--out), the log <log-dir>/<out stem>_log.csv and the plot
<log-dir>/<out stem>_curves.png. Ctrl+C saves the last checkpoint before leaving.
"""

import argparse
import contextlib
import csv
import math
import os
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from matplotlib.figure import Figure  # the object API: no GUI backend, no pyplot state
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from dataset import eval_loader, is_synthetic, train_aug_dataset, train_transforms, voc_dataset
from distill import KD_MODES, build_adapters, training_loss
from metrics import (
    add_device_arg,
    evaluate,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from model import build_student, build_teacher, load_file, resolve_device, save_file

SGD_MOMENTUM = 0.9  # the standard value for SGD on segmentation (DeepLab, torchvision refs)
POLY_POWER = 0.9  # lr = base * (1 - step / total)^0.9, DeepLab's "poly" schedule


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--kd",
        default="none",
        choices=KD_MODES,
        help="distillation: none, response, feature or both (default: none)",
    )
    p.add_argument("--data-root", default="data", help="folder holding VOCdevkit/ (default: data)")
    p.add_argument(
        "--train-set",
        default="train",
        choices=("train", "train_aug"),
        help="train: VOC 2012 train, 1,464 images, the lab's; train_aug: + SBD, 10,582 "
        "images (default: train)",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=100, help="training epochs (default: 100)"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="images per step, per process under torchrun (default: 16)",
    )
    p.add_argument(
        "--crop-size", type=positive_int, default=480, help="square train crop (default: 480)"
    )
    p.add_argument(
        "--optimizer",
        default="sgd",
        choices=("sgd", "adamw"),
        help="sgd (momentum 0.9) or adamw (default: sgd)",
    )
    p.add_argument(
        "--lr", type=positive_float, default=0.01, help="peak learning rate (default: 0.01)"
    )
    p.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=1e-4,
        help="weight decay of the optimizer (default: 1e-4)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=non_negative_float,
        default=1.0,
        help="linear warm-up before the poly decay (default: 1)",
    )
    add_device_arg(p)
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=4,
        help="data loading processes (default: 4)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--pretrained-backbone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the encoder from ImageNet weights (default: on)",
    )
    p.add_argument(
        "--limit-train",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on the first N images only, for quick runs (default: all)",
    )
    p.add_argument(
        "--limit-val",
        type=positive_int,
        default=None,
        metavar="N",
        help="validate on the first N images only (default: all)",
    )
    p.add_argument(
        "--out", default=None, help="best checkpoint path (default: weights/student_<kd>.pth)"
    )
    p.add_argument("--log-dir", default="outputs", help="CSV log and plots (default: outputs)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint beside --out (default: off)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing checkpoint at --out (default: refuse)",
    )
    kd = p.add_argument_group("distillation (--kd response, feature, both)")
    kd.add_argument(
        "--alpha",
        type=non_negative_float,
        default=1.0,
        help="weight of the hard cross-entropy term (default: 1.0)",
    )
    kd.add_argument(
        "--beta",
        type=non_negative_float,
        default=1.0,
        help="weight of the soft term, already multiplied by tau^2 (default: 1.0)",
    )
    kd.add_argument("--tau", type=positive_float, default=2.0, help="temperature (default: 2.0)")
    kd.add_argument(
        "--feat-weight",
        type=non_negative_float,
        default=1.0,
        help="weight of the summed cosine feature distances (default: 1.0)",
    )
    kd.add_argument(
        "--teacher-weights",
        default="default",
        help="default (torchvision COCO_WITH_VOC_LABELS_V1), a state dict path, or "
        "none (random, smoke tests only) (default: default)",
    )
    args = p.parse_args(argv)
    args.out = args.out or f"weights/student_{args.kd}.pth"
    return args


def last_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}_last{out.suffix}")


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


def average_gradients(module: nn.Module) -> None:
    """Average gradients across processes: what DDP does for the student, done by hand for the
    adapters, which feature_kd_loss calls one by one (there is no single forward to wrap)."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def build_optimizer(args: argparse.Namespace, params: list) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=args.lr, momentum=SGD_MOMENTUM, weight_decay=args.weight_decay
        )
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def train_one_epoch(
    student, adapters, loader, loss_fn, optimizer, scheduler, scaler, device, desc: str
) -> dict:
    """One pass over the loader; returns the mean of each loss term as {"train_<term>": x}."""
    distributed = dist.is_initialized()
    student.train()
    if adapters is not None:
        adapters.train()
    sums, steps = {}, 0
    bar = tqdm(loader, desc=desc, dynamic_ncols=True, disable=distributed and dist.get_rank() > 0)
    for images, masks in bar:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True).long()
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            loss, terms = loss_fn(student, images, masks)
        bad = (~torch.isfinite(loss.detach())).float()
        if distributed:  # every process stops together, or the others would wait forever
            dist.all_reduce(bad)
        if bad.item():
            raise SystemExit(
                f"error: the loss became {loss.item()} at step {steps + 1} of {desc}; "
                "stopping without saving this epoch. Try a lower --lr."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if distributed and adapters is not None:
            average_gradients(adapters)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        steps += 1
        for name, value in {"loss": loss.detach(), **terms}.items():
            sums[name] = sums.get(name, 0.0) + value.detach()  # on the device: no sync per term
        bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    means = {f"train_{name}": (total / steps).item() for name, total in sums.items()}
    if distributed:  # the mean over all processes, as a single process would have logged it
        values = torch.tensor(list(means.values()), device=device)
        dist.all_reduce(values)
        means = dict(zip(means, (values / dist.get_world_size()).tolist()))
    return means


def write_log(history: list, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in history for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def plot_history(history: list, path: Path, title: str) -> None:
    """Loss terms (train and val) and val mIoU against the epoch, as one PNG."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_miou = fig.subplots(1, 2)
    for key in history[-1]:
        if key.startswith("train_") or key == "val_loss":
            ax_loss.plot(epochs, [row.get(key, math.nan) for row in history], marker=".", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="losses")
    ax_loss.legend(fontsize=8)
    ax_miou.plot(epochs, [100 * row["val_miou"] for row in history], marker=".", color="C3")
    ax_miou.set(xlabel="epoch", ylabel="mIoU (%)", title="validation mIoU")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(args: argparse.Namespace) -> None:
    rank, world, device = init_distributed(resolve_device(args.device))
    is_main = rank == 0  # only the first process prints, logs and saves
    torch.manual_seed(args.seed)
    out, last = Path(args.out), last_path(args.out)
    if not args.resume and not args.overwrite and (out.exists() or last.exists()):
        raise SystemExit(
            f"error: {out} or {last} already exists; use --resume to continue it or "
            "--overwrite to start over"
        )
    log_dir = Path(args.log_dir)
    synthetic = is_synthetic(args.data_root)

    transforms = train_transforms(args.crop_size)
    if args.train_set == "train_aug":
        train_set = train_aug_dataset(args.data_root, transforms, args.limit_train)
    else:
        train_set = voc_dataset(args.data_root, "train", transforms, args.limit_train)
    sampler = DistributedSampler(train_set, seed=args.seed) if world > 1 else None
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.num_workers > 0,
    )
    val_loader = eval_loader(
        args.data_root,
        "val",
        num_workers=args.num_workers,
        limit=args.limit_val,
        shard=(rank, world),
    )

    with main_process_first(is_main):
        student = build_student(pretrained_backbone=args.pretrained_backbone).to(device)
        teacher = None
        if args.kd != "none":
            teacher = build_teacher(args.teacher_weights, "--teacher-weights").to(device)
    adapters = build_adapters().to(device) if args.kd in ("feature", "both") else None
    # The student trains through DDP, which averages its gradients; it is saved and evaluated
    # unwrapped, so checkpoints never carry DDP's "module." prefix. The teacher is never wrapped.
    model = DistributedDataParallel(student) if world > 1 else student
    params = list(student.parameters()) + (list(adapters.parameters()) if adapters else [])
    optimizer = build_optimizer(args, params)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_poly(args.epochs * steps, round(args.warmup_epochs * steps))
    )
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    loss_fn = partial(
        training_loss,
        kd=args.kd,
        teacher=teacher,
        adapters=adapters,
        alpha=args.alpha,
        beta=args.beta,
        tau=args.tau,
        feat_weight=args.feat_weight,
    )

    start_epoch, best_miou, history = 0, -1.0, []
    if args.resume:
        ckpt = load_file(last, "checkpoint to resume")
        if ckpt.get("args", {}).get("kd") != args.kd:
            raise SystemExit(
                f"error: {last} was trained with --kd {ckpt.get('args', {}).get('kd')}"
                f", not --kd {args.kd}"
            )
        student.load_state_dict(ckpt["model"])
        if adapters is not None:
            adapters.load_state_dict(ckpt["adapters"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_miou, history = ckpt["epoch"], ckpt["best_miou"], ckpt["history"]
        if start_epoch >= args.epochs:
            raise SystemExit(f"error: {last} already has {start_epoch} epochs; raise --epochs")
        if is_main:
            print(f"resuming {last} after epoch {start_epoch}")

    def checkpoint(epoch: int) -> dict:
        # The student's state dict only: the teacher is never saved, the adapters apart.
        return {
            "model": student.state_dict(),
            "adapters": adapters.state_dict() if adapters is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "args": vars(args),
            "epoch": epoch,
            "miou": history[-1]["val_miou"] if history else math.nan,
            "best_miou": best_miou,
            "history": history,
            "synthetic": synthetic,
        }

    title = f"student, --kd {args.kd}" + (" (SYNTHETIC data)" if synthetic else " (VOC 2012)")
    try:
        for epoch in range(start_epoch, args.epochs):
            start = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on all ranks
            row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0]}
            row |= train_one_epoch(
                model,
                adapters,
                train_loader,
                loss_fn,
                optimizer,
                scheduler,
                scaler,
                device,
                f"epoch {epoch + 1}/{args.epochs}",
            )
            val = evaluate(student, val_loader, device, desc="val", progress=is_main)
            row |= {
                "val_loss": val["loss"],
                "val_miou": val["miou"],
                "epoch_time_s": time.perf_counter() - start,
            }
            history.append(row)
            improved = not math.isnan(val["miou"]) and val["miou"] > best_miou
            best_miou = val["miou"] if improved else best_miou
            if not is_main:
                continue
            print(
                f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val loss "
                f"{row['val_loss']:.4f}, val mIoU {100 * row['val_miou']:.2f}%, "
                f"{row['epoch_time_s']:.1f} s"
            )
            write_log(history, log_dir / f"{out.stem}_log.csv")
            plot_history(history, log_dir / f"{out.stem}_curves.png", title)
            save_file(checkpoint(epoch + 1), last)
            if improved:
                save_file(checkpoint(epoch + 1), out)
    except KeyboardInterrupt:
        # Current weights, counted as the epochs logged so far: --resume redoes an epoch
        # interrupted before its validation, starting from these weights.
        if is_main:
            save_file(checkpoint(len(history)), last)
        raise SystemExit(f"\ninterrupted: saved {last}; continue with --resume") from None
    if world > 1:
        dist.destroy_process_group()
    if not is_main:
        return
    times = [row["epoch_time_s"] for row in history]
    print(f"best val mIoU {100 * best_miou:.2f}% -> {out}; last -> {last}")
    print(
        f"training time {sum(times) / 60:.1f} min, {sum(times) / len(times):.1f} s per epoch "
        f"(including validation{' and the teacher' if teacher is not None else ''})"
    )


if __name__ == "__main__":
    main(parse_args())
