"""Train the student on VOC 2012 train (Steps 2-3), with or without distillation (Step 4).

    python train.py --kd none        # plain cross-entropy         -> weights/student_none.pth
    python train.py --kd response    # + soft targets (tau)        -> weights/student_response.pth
    python train.py --kd feature     # + cosine feature distance   -> weights/student_feature.pth
    python train.py --kd both        # response + feature          -> weights/student_both.pth
    python train.py --kd none --resume   # continue from weights/student_none_last.pth
    python train.py --kd response --train-set train_aug   # on the 10,582-image set (needs SBD)
    torchrun --nproc_per_node=4 train.py --kd response    # 4 GPUs, --batch-size per GPU

Each epoch evaluates on val, then writes the training state (<out stem>_last.pth, for
--resume), the model (--out: the last epoch's weights and run record, not the best epoch's by
val mIoU, which would be chosen on the split it is scored on), the log
<out-dir>/<out stem>_log.csv and the plot <out-dir>/<out stem>_curves.png. Ctrl+C leaves the
last completed epoch's files, from which --resume continues as if nothing had stopped.
"""

from cli import (
    OUTPUTS_DIR,
    UserError,
    add_data_root,
    add_device,
    add_num_workers,
    file_path,
    mixed_precision,
    non_negative_float,
    number,
    parser,
    path_arg,
    positive_int,
    resolve_device,
    run,
    seed_int,
)

import argparse
import contextlib
import sys
import time
from functools import partial

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import distributed
from checkpoints import resume, training_state
from dataset import train_aug_dataset, train_transforms, voc_dataset
from distill import KD_MODES, KDConfig, Trainee, teacher_outputs
from files import exclusive
from lab import (
    OPTIMIZERS,
    OptimConfig,
    build_optimizer,
    build_scheduler,
    check_run,
    history_paths,
    last_path,
    run_outputs,
    save_run,
    student_path,
)
from loaders import epoch_batches, eval_loader, training_loader
from metrics import device_name, evaluate
from model import STUDENT_TAPS, StudentConfig, build_student, build_teacher
from teacher_cache import TeacherCache, image_files, with_crop_boxes
from voc import IGNORE_INDEX, RANDOM_TEACHER, SYNTHETIC_NOTE, is_synthetic, random_teacher

# Flags a --resume may change: they do not change what the saved state means.
RESUMABLE = set("epochs resume overwrite num_workers device out out_dir data_root".split())
# Below this crop, the ASPP's widest rate reaches past the stride-16 map: those branches see
# mostly padding, and their BatchNorm statistics do not match full-size images.
MIN_CROP = STUDENT_TAPS["high"][1] * (max(StudentConfig().rates) + 1)
DEFAULT_OPTIM = OptimConfig()


def main(args: argparse.Namespace) -> None:
    rank, world, device = distributed.setup(resolve_device(args.device))
    with distributed.one_line_errors(), contextlib.ExitStack() as held:
        with distributed.together():  # a process that cannot start stops every process
            if distributed.is_main():  # one run at a time per output, every output checked
                held.enter_context(exclusive(run_outputs(args.out, args.out_dir)))
                check_run(args.out, args.out_dir, args.teacher_cache, args.resume, args.overwrite)
            loaders = build_loaders(args, rank, world, device)
        # Processes that would take different numbers of steps would wait for each other forever.
        distributed.agree("numbers of images", [len(loader.dataset) for loader in loaders])
        if distributed.is_main():
            announce(args, device, len(loaders[0].dataset))
        history, synthetic, with_teacher = train(args, loaders, rank, world, device)
        if distributed.is_main():
            print_summary(args, history, with_teacher, synthetic)
    distributed.cleanup()


def train(args: argparse.Namespace, loaders: tuple, rank: int, world: int, device) -> tuple:
    """The run: models, optimizer (resumed with --resume), then the epochs; returns (the
    history, whether the data was SYNTHETIC, whether a teacher taught)."""
    torch.manual_seed(args.seed)
    synthetic = is_synthetic(args.data_root)
    loader, val_loader = loaders
    with distributed.main_process_first():  # a download into the torch hub cache, once
        model_without_ddp, teacher = build_models(args, device)
    teacher_forward = open_teacher(args, teacher, loader.dataset.dataset, device)
    model = DistributedDataParallel(model_without_ddp) if world > 1 else model_without_ddp
    optimizer = build_optimizer(model_without_ddp.parameters(), optim_config(args))
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision(device))
    with distributed.together():
        history = resumed_history(args, model_without_ddp, optimizer, scaler) if args.resume else []
    scheduler = build_scheduler(
        optimizer, args.epochs, len(loader), args.warmup_epochs, len(history)
    )
    tag, hardware = SYNTHETIC_NOTE if synthetic else "VOC 2012", device_name(device)
    title, marks = curves_title(args, tag), ["SYNTHETIC"] * synthetic + teacher_marks(args)
    try:
        for epoch in range(len(history) + 1, args.epochs + 1):
            start, desc = time.perf_counter(), f"epoch {epoch}/{args.epochs}"
            batches = epoch_batches(loader, args.seed, epoch, rank, world)
            # lr: the first step's, as the bar shows each step's (the schedule is per step)
            row = {
                "epoch": epoch,
                "data": tag,
                "device": hardware,
                "lr": scheduler.get_last_lr()[0],
            }
            row |= train_one_epoch(
                model, teacher_forward, batches, optimizer, scheduler, scaler, device, desc
            )
            row |= validate(model_without_ddp.student, val_loader, device, epoch)
            row["epoch_time_s"] = time.perf_counter() - start
            history.append(row)
            if distributed.is_main():  # saved before printed: a closed stdout loses nothing
                state = training_state(
                    model_without_ddp, optimizer, scaler, vars(args), history, synthetic
                )
                save_run(state, args.out, args.out_dir, title)
                print_epoch(row, marks)
    except KeyboardInterrupt:
        # The last completed epoch is on disk already; the interrupted one is dropped, so that
        # --resume redoes it from exactly the state an uninterrupted run started it from.
        done = f"{last_path(args.out)} holds epoch {len(history)}" if history else "no epoch done"
        raise KeyboardInterrupt(f"{done}; continue with --resume") from None
    return history, synthetic, teacher is not None


def train_one_epoch(model, teacher_forward, batches, optimizer, scheduler, scaler, device, desc):
    """One pass over the epoch's batches (loaders.epoch_batches), a step of the optimizer and
    the scheduler per batch; returns the mean of each loss term as {"train_<term>": x},
    averaged over processes under torchrun. The bar shows the running loss and the lr of the
    step just taken. A batch is (images, masks) and, under --teacher-cache, each crop's box and
    image index, which teacher_forward reads."""
    model.train()
    sums, steps, labelled = {}, 0, 0
    bar = tqdm(batches, desc=desc, dynamic_ncols=True, disable=not distributed.is_main())
    for images, masks, *crops in bar:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True).long()
        with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision(device)):
            teacher_out = teacher_forward(images, *crops)  # None for --kd none
            loss, terms = model(images, masks, teacher_out)  # the student's forward and loss
        distributed.stop_if_not_finite(loss.detach(), f"the loss, at step {steps + 1} of {desc},")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        lr = optimizer.param_groups[0]["lr"]
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        steps += 1
        labelled += (masks != IGNORE_INDEX).sum()  # on the device: no sync per step
        for name, value in {"loss": loss.detach(), **terms}.items():
            sums[name] = sums.get(name, 0.0) + value  # on the device: no sync per term
        bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}", lr=f"{lr:.2e}")
    if distributed.total(torch.as_tensor(labelled, dtype=torch.float, device=device)).item() == 0:
        raise UserError(f"every training crop of {desc} is all void (255): no class to learn")
    means = distributed.mean(torch.stack(list(sums.values())) / steps)
    return {f"train_{name}": value for name, value in zip(sums, means.tolist())}


def validate(student, loader, device: torch.device, epoch: int) -> dict:
    """The val columns of the epoch's row: val_ce (the same pixel cross-entropy as train_ce,
    on val), val_miou (a fraction, as in every file; the console shows %). Under torchrun
    every process first takes rank 0's BatchNorm statistics, so that the val numbers are
    those of the model rank 0 saves."""
    distributed.share_buffers(student)
    val = evaluate(student, loader, device, "val", distributed.is_main())
    distributed.stop_if_not_finite(
        torch.tensor(val["loss"], device=device), f"the val CE, after epoch {epoch},"
    )
    return {"val_ce": val["loss"], "val_miou": val["miou"]}


# ----------------------------------------------------------------------------- the run's parts


def build_loaders(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> tuple:
    """(train loader, val loader); under torchrun each process gets its share of both."""
    if args.train_set == "train_aug":
        make_set = partial(train_aug_dataset, args.data_root, limit=args.limit_train)
    else:
        make_set = partial(voc_dataset, args.data_root, "train", limit=args.limit_train)
    crops = train_transforms(args.crop_size)
    # The stored teacher maps are read by each sample's image and resampled over its crop.
    train_set = with_crop_boxes(make_set, crops) if args.teacher_cache else make_set(crops)
    cuda = device.type == "cuda"
    train = training_loader(
        train_set, args.batch_size, args.num_workers, args.seed, (rank, world), cuda
    )
    val_args = dict(num_workers=args.num_workers, limit=args.limit_val, shard=(rank, world))
    return train, eval_loader(args.data_root, "val", **val_args, pin_memory=cuda)


def build_models(args: argparse.Namespace, device: torch.device) -> tuple:
    """(Trainee: the student and its adapters, the frozen teacher or None for --kd none)."""
    student = build_student(pretrained_backbone=args.pretrained_backbone)
    trainee = Trainee(student, kd_config(args)).to(device)
    teacher = build_teacher(args.teacher_weights).to(device) if args.kd != "none" else None
    return trainee, teacher


def open_teacher(args: argparse.Namespace, teacher, train_set, device: torch.device):
    """teacher_forward(images, *crops) -> what the loss takes from the teacher for a batch:
    None (--kd none), the live teacher's (logits, features), or with --teacher-cache the
    stored logits resampled over each crop (and, for --kd both, the live features)."""
    if teacher is None:
        return lambda images: None
    if args.teacher_cache is None:
        return partial(teacher_outputs, teacher)
    with distributed.main_process_first():  # rank 0 builds it, the others wait, then read it
        cache = TeacherCache.open_or_build(
            args.teacher_cache, teacher, image_files(train_set), device
        )
    return cache.teacher_forward(teacher if KD_MODES[args.kd].features else None, device)


def resumed_history(args: argparse.Namespace, trainee: Trainee, optimizer, scaler) -> list:
    """The history of the run --resume continues, its state loaded (files.resume); a flag
    outside RESUMABLE must be the checkpoint's."""
    fixed = {k: v for k, v in vars(parse_args([])).items() if k not in RESUMABLE}
    checks = (vars(args), fixed, is_synthetic(args.data_root))
    history = resume(last_path(args.out), *checks, trainee, optimizer, scaler)
    if distributed.is_main():
        print(f"resuming {last_path(args.out)} after epoch {len(history)}")
    return history


# Training images (epochs x images) from which a CPU run is warned about: about an hour on the
# development machine's CPU at the default crop, going by benchmark.py's step; the lab's 146,400.
LONG_ON_A_CPU = 20_000


def announce(args: argparse.Namespace, device: torch.device, images: int) -> None:
    """Where the run trains, said before it starts (a laptop whose GPU PyTorch cannot use
    trains on its CPU), with a warning when that is the CPU and the run is long."""
    teacher = f", with a {RANDOM_TEACHER}" if random_teacher(vars(args)) else ""
    print(f"training on {device_name(device)} ({device}){teacher}")
    if device.type == "cpu" and args.epochs * images >= LONG_ON_A_CPU:
        print(
            f"warning: {args.epochs} epochs of {images:,d} images on a CPU take many hours, with a "
            "live teacher days (docs/measurements.md); use a GPU where there is one (--device "
            "cuda, or mps on a Mac), and --teacher-cache for response KD",
            file=sys.stderr,
        )


def print_epoch(row: dict, marks: list) -> None:
    note = f" ({', '.join(marks)})" if marks else ""
    print(
        f"epoch {row['epoch']}: train CE {row['train_ce']:.4f}, val CE {row['val_ce']:.4f}, "
        f"val mIoU {100 * row['val_miou']:.2f}%, {row['epoch_time_s']:.1f} s{note}",
        flush=True,  # a line an epoch, also into a file or a pipe
    )


def teacher_marks(args: argparse.Namespace) -> list:
    return [RANDOM_TEACHER] if random_teacher(vars(args)) else []


def curves_title(args: argparse.Namespace, data: str) -> str:
    """The curves' title: the run, its data, and its teacher when that had random weights."""
    return f"student, --kd {args.kd} ({', '.join([data, *teacher_marks(args)])})"


def print_summary(args: argparse.Namespace, history: list, with_teacher: bool, synthetic: bool):
    times = [row["epoch_time_s"] for row in history]
    print(
        f"val mIoU after the last epoch {100 * history[-1]['val_miou']:.2f}%"
        f"{' on ' + SYNTHETIC_NOTE if synthetic else ''} -> {args.out}; "
        f"to resume -> {last_path(args.out)}"
    )
    print(
        f"training time {sum(times) / 60:.1f} min, {sum(times) / len(times):.1f} s per epoch "
        f"(including validation{' and the teacher' if with_teacher else ''}); log -> "
        f"{' and '.join(map(str, history_paths(args.out, args.out_dir)))}"
    )


# ----------------------------------------------------------------------------- flags


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


def kd_config(args: argparse.Namespace) -> KDConfig:
    return KDConfig(args.kd, args.alpha, args.beta, args.tau, args.feat_weight)


def optim_config(args: argparse.Namespace) -> OptimConfig:
    return OptimConfig(args.optimizer, args.lr, args.weight_decay)


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
        "--out",
        type=file_path(".pth"),
        help="the trained model's path (its last epoch); none given: weights/student_<kd>.pth",
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
        "--alpha", type=non_negative_float, default=1.0, help="weight of the cross-entropy term"
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


if __name__ == "__main__":
    run(main, parse_args)
