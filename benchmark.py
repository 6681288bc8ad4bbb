"""Size and speed, side by side in one process: the student, FCN-ResNet50 (the teacher) and
torchvision's LR-ASPP MobileNetV3-Large (the reference compact model), plus the cost of one
training step in each --kd mode.

    python benchmark.py --device cpu      # writes outputs/benchmark.json
    python benchmark.py --device cuda

Random weights (speed does not depend on their values): no dataset and no download needed.
ms/image: batch 1, median of --runs after warm-up, CUDA synchronised; the models (and the
KD modes' training steps) take turns, round after round, so machine noise hits all alike.
GFLOPs: counted by torch.utils.flop_counter.FlopCounterMode (2 per multiply-add of
convolutions and matrix products; normalisation, activations and resizing are not counted).
"""

import argparse
import datetime
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from distill import KD_MODES, build_adapters, training_loss
from metrics import (
    NUM_CLASSES,
    add_device_arg,
    count_params,
    device_name,
    median_ms,
    ms_per_image,
    positive_int,
    write_json,
)
from model import build_student, build_teacher, resolve_device


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_device_arg(p)
    p.add_argument(
        "--size",
        type=positive_int,
        default=520,
        help="side of the square inference input (default: 520)",
    )
    p.add_argument(
        "--runs",
        type=positive_int,
        default=20,
        help="timed runs per measurement, the median is kept (default: 20)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="batch of the timed training steps (default: 8)",
    )
    p.add_argument(
        "--crop-size",
        type=positive_int,
        default=320,
        help="crop of the timed training steps (default: 320)",
    )
    p.add_argument("--out", default="outputs", help="folder for benchmark.json (default: outputs)")
    return p.parse_args(argv)


def gflops(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Floating-point operations of one forward pass on 1 x 3 x size x size, in billions."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(torch.zeros(1, 3, size, size, device=device))
    return counter.get_total_flops() / 1e9


def training_step(loss_fn, student: torch.nn.Module, optimizer, batch: tuple, device):
    """A function doing one forward + backward + optimizer step on a fixed batch."""

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            loss, _ = loss_fn(student.train(), *batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def format_table(result: dict) -> str:
    lines = [
        f"inference: batch 1, {result['size']}x{result['size']}, {result['device_name']}",
        f"{'model':28s} {'params':>12s} {'GFLOPs':>8s} {'ms/image':>9s} {'vs student':>10s}",
    ]
    for row in result["models"]:
        lines.append(
            f"{row['model']:28s} {row['params']:>12,d} {row['gflops']:>8.2f} "
            f"{row['ms_per_image']:>9.1f} {row['times_student']:>9.1f}x"
        )
    lines.append(f"training step: batch {result['batch_size']}, crop {result['crop_size']}")
    for row in result["train_steps"]:
        lines.append(
            f"  --kd {row['kd']:9s} {row['ms_per_step']:>9.1f} ms  "
            f"(+{row['overhead_vs_none']:.0%} over none)"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    student = build_student().to(device)
    teacher = build_teacher("none").to(device)
    models = {
        "student": student,
        "FCN-ResNet50 (teacher)": teacher,
        "LR-ASPP MobileNetV3-Large": lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES
        ).to(device),
    }
    print(f"timing inference at {args.size}x{args.size} ...", flush=True)
    times = ms_per_image(models, device, args.size, args.runs)
    rows = [
        {"model": name, "params": count_params(model), "gflops": gflops(model, args.size, device),
         "ms_per_image": times[name], "times_student": times[name] / times["student"]}
        for name, model in models.items()
    ]  # fmt: skip

    print(f"timing training steps, batch {args.batch_size}, crop {args.crop_size} ...", flush=True)
    images = torch.randn(args.batch_size, 3, args.crop_size, args.crop_size, device=device)
    masks = torch.randint(0, NUM_CLASSES, images[:, 0].shape, device=device)
    step_fns = {}
    for kd in KD_MODES:
        adapters = build_adapters().to(device) if kd in ("feature", "both") else None
        params = [*student.parameters(), *(adapters.parameters() if adapters else [])]
        optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
        loss_fn = partial(training_loss, kd=kd, teacher=teacher, adapters=adapters)
        step_fns[kd] = training_step(loss_fn, student, optimizer, (images, masks), device)
    step_ms = median_ms(step_fns, device, args.runs, warmup=1)
    steps = [
        {"kd": kd, "ms_per_step": ms, "overhead_vs_none": ms / step_ms["none"] - 1}
        for kd, ms in step_ms.items()
    ]

    result = {
        "size": args.size,
        "runs": args.runs,
        "batch_size": args.batch_size,
        "crop_size": args.crop_size,
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "models": rows,
        "train_steps": steps,
    }
    print(format_table(result))
    write_json(result, Path(args.out) / "benchmark.json")
    print(f"wrote {Path(args.out) / 'benchmark.json'}")


if __name__ == "__main__":
    main(parse_args())
