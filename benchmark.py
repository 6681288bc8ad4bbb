"""Size and speed, side by side in one process: the student, FCN-ResNet50 (the teacher) and
torchvision's LR-ASPP MobileNetV3-Large (the reference compact model), each as deployed
(eager PyTorch, eager channels_last, ONNX Runtime fp32 and, with --int8, int8; with --mobile
also ONNX Runtime's mobile format, .ort, of each ONNX row), plus the
cost of one training step in each --kd mode, and with the cached teacher (--teacher-cache):
one step, and the one-time cost per image of building the cache.

    python benchmark.py --device cpu              # writes outputs/benchmark.json (minutes on a CPU)
    python benchmark.py --device cpu --int8       # + int8 ONNX rows (export.INT8_VARIANT)
    python benchmark.py --device cpu --int8 --mobile   # + the .ort file of each ONNX row
    python benchmark.py --device cuda

Random weights (speed does not depend on their values): no dataset and no download needed.
ms/image: batch 1, median of --runs after warm-up, CUDA synchronised; every row takes its turn
in each round (interleaved), so machine noise hits all alike, and is timed warm, right after an
untimed call of its own (metrics.median_ms). "vs student" is a row's time over the eager
student's. ONNX rows run on ONNX Runtime's CPU provider (the teacher has none:
at 1 to 2 s a pass on our CPUs it would only lengthen the run). GFLOPs: counted by
torch.utils.flop_counter.FlopCounterMode (2 per multiply-add of convolutions and matrix
products). MB: the state dict as torch.save writes it, or the .onnx / .ort file. The .ort
rows run the graph as converted for ARM phones (export.write_mobile), so on an x86 CPU they
lack the x86-only layouts ONNX Runtime gives an .onnx at load: they show the file runs, not a
phone's speed.
"""

from cli import (
    OUTPUTS_DIR,
    UserError,
    add_device,
    add_overwrite,
    add_timing_args,
    number,
    parser,
    path_arg,
    resolve_device,
    run,
)

import argparse
import copy
import datetime
import io
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from distill import KD_MODES, KDConfig, Trainee, teacher_outputs
from export import INT8_VARIANT, export_onnx, quantize_int8, write_mobile
from files import check_output, exclusive, write_json
from lab import BENCHMARK_RESULT, OptimConfig, build_optimizer
from metrics import device_name, machine_load, median_ms, model_logits
from model import TEACHER_RESIZE, build_student, build_teacher, count_params
from onnx_model import OnnxModel
from teacher_cache import TeacherCache, teacher_stride8_logits
from voc import NUM_CLASSES

STUDENT, TEACHER, LRASPP = "student", "FCN-ResNet50 (teacher)", "LR-ASPP MobileNetV3-Large"
CALIBRATION_IMAGES = 8  # random inputs: enough for timing an int8 model, not for its accuracy
CACHED = "response (cached teacher)"  # the training-step row of train.py --teacher-cache
# A typical VOC image (500 x 375) resized to a 520 shorter side: the teacher's stride-8 map.
VOC_IMAGE, CACHED_MAP = (375, 500), (NUM_CLASSES, 65, 87)


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    add_device(p)
    add_timing_args(p, TEACHER_RESIZE, runs=10)
    p.add_argument(
        "--batch-size",
        type=number(int, 1, 256),
        default=4,
        help="batch of the timed training steps",
    )
    p.add_argument(
        "--crop-size",
        type=number(int, 32, 4096),
        default=256,
        help="crop of the timed training steps",
    )
    p.add_argument("--int8", action="store_true", help="add statically quantised ONNX rows")
    p.add_argument("--mobile", action="store_true", help="add a .ort row for each ONNX row")
    p.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ONNX Runtime rows (--no-onnx: eager rows only, no export, a quicker run)",
    )
    p.add_argument(
        "--out-dir", type=path_arg, default=OUTPUTS_DIR, help=f"folder for {BENCHMARK_RESULT}"
    )
    add_overwrite(p, f"an existing {BENCHMARK_RESULT}")
    return p.parse_args(argv)


class Logits(torch.nn.Module):
    """torchvision's segmentation models return {"out": logits}; the exporter wants a tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return model_logits(self.model, x)


def gflops(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Floating-point operations of one forward pass on 1 x 3 x size x size, in billions."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(torch.zeros(1, 3, size, size, device=device))
    return counter.get_total_flops() / 1e9


def state_dict_mb(model: torch.nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def deployed_variants(models: dict, args, device: torch.device, work: Path) -> dict:
    """{(model, runtime): (callable on a 1 x 3 x H x W tensor, MB)}, one per row."""
    variants = {}
    for name, model in models.items():
        mb = state_dict_mb(model)
        variants[name, "eager"] = (model.eval(), mb)
        fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
        variants[name, "eager channels_last"] = (fast.eval(), mb)
        if not args.onnx or name == TEACHER:
            continue
        fp32 = work / f"{name.split()[0]}.onnx"
        export_onnx(model.eval(), fp32, {"model": name})  # the student with its BN folded
        files = {"fp32": fp32}
        if args.int8:
            calibration = [
                np.random.randn(1, 3, args.size, args.size).astype(np.float32)
                for _ in range(CALIBRATION_IMAGES)
            ]
            files["int8"] = work / f"{name.split()[0]}_int8.onnx"
            quantize_int8(fp32, files["int8"], calibration)
        if args.mobile:
            for kind, path in list(files.items()):
                files[f"{kind} .ort"] = path.with_suffix(".ort")
                write_mobile(path, files[f"{kind} .ort"])
        for kind, path in files.items():
            variants[name, f"onnxruntime {kind}"] = (OnnxModel(path), path.stat().st_size / 1e6)
    return variants


@torch.inference_mode()
def inference_rows(models: dict, args, device: torch.device) -> list:
    """One row per (model, runtime): parameters, GFLOPs, ms/image, time vs the eager
    student, MB; all timed together, interleaved."""
    with tempfile.TemporaryDirectory() as work:
        variants = deployed_variants(models, args, device, Path(work))
        x = torch.randn(1, 3, args.size, args.size, device=device)
        fns = {key: partial(model_logits, fn, x) for key, (fn, _) in variants.items()}
        times = median_ms(fns, device, args.runs, desc=f"{len(fns)} rows at {args.size}px")
    flops = {name: gflops(model, args.size, device) for name, model in models.items()}
    return [
        {
            "model": name,
            "runtime": runtime,
            "params": count_params(models[name]),
            "gflops": flops[name],
            "ms_per_image": times[name, runtime].median,
            "ms_quartiles": [times[name, runtime].low, times[name, runtime].high],
            "times_student": times[name, runtime].median / times[STUDENT, "eager"].median,
            "mb": mb,
        }
        for (name, runtime), (_, mb) in variants.items()
    ]


def training_step_rows(student: torch.nn.Module, teacher, args, device: torch.device) -> list:
    """ms of one forward + backward + optimizer step in each --kd mode and with the cached
    teacher, on a fixed batch, all interleaved; the optimizer is train.py's (its defaults)."""
    images = torch.randn(args.batch_size, 3, args.crop_size, args.crop_size, device=device)
    masks = torch.randint(0, NUM_CLASSES, images[:, 0].shape, device=device)
    cache = in_memory_cache(args.batch_size)
    where = torch.tensor([[10.0, 20.0, 330.0, 340.0, 1.0]] * args.batch_size)
    indices = torch.arange(args.batch_size)
    size = (args.crop_size, args.crop_size)
    targets = {kd: partial(teacher_outputs, teacher if kd != "none" else None) for kd in KD_MODES}
    targets[CACHED] = lambda _: (cache.crop_logits(where, indices, size, device), None)
    steps = {}
    for kd, target in targets.items():
        trainee = Trainee(student, KDConfig(kd if kd != CACHED else "response"))
        optimizer = build_optimizer(trainee.to(device).train().parameters(), OptimConfig())
        steps[kd] = partial(training_step, trainee, target, optimizer, images, masks, device)
    ms = median_ms(steps, device, args.runs, warmup=1, desc="training steps")
    return [
        {
            "kd": kd,
            "ms_per_step": t.median,
            "ms_quartiles": [t.low, t.high],
            "overhead_vs_none": t.median / ms["none"].median - 1,
        }
        for kd, t in ms.items()
    ]


def in_memory_cache(count: int) -> TeacherCache:
    """A teacher cache of `count` random maps of a typical VOC image's size, held in memory:
    the per-step work of --teacher-cache (reading the maps, resampling them over the crops)
    without the disk."""
    n = int(np.prod(CACHED_MAP))
    entries = [
        {"size": list(VOC_IMAGE), "shape": list(CACHED_MAP), "offset": i * n} for i in range(count)
    ]
    logits = np.random.randn(count * n).astype(np.float16)
    return TeacherCache(Path("(in memory)"), {"images": entries}, logits)


def training_step(trainee, targets, optimizer, images, masks, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        loss, _ = trainee(images, masks, targets(images))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.inference_mode()
def cache_build_ms(teacher, args, device: torch.device) -> float:
    """ms per image of building the teacher cache: the teacher's stride-8 logits of a VOC-shaped
    (4:3) image whose shorter side is --size (the cache uses 520, the default), once warm; the
    disk write is negligible beside it."""
    h, w = args.size, round(args.size * VOC_IMAGE[1] / VOC_IMAGE[0])
    fn = partial(teacher_stride8_logits, teacher, torch.randn(1, 3, h, w, device=device))
    return median_ms({"build": fn}, device, runs=1, warmup=0)["build"].median


def quartiles(row: dict) -> str:
    return "{:.1f}-{:.1f}".format(*row["ms_quartiles"])


def format_table(result: dict) -> str:
    lines = [
        f"inference: batch 1, {result['size']}x{result['size']}, {result['device_name']}, "
        f"load {result['load']}",
        f"{'model':26s} {'runtime':22s} {'params':>10s} {'GFLOPs':>7s} {'ms/image':>9s} "
        f"{'quartiles':>13s} {'vs student':>10s} {'MB':>6s}",
    ]
    for r in result["models"]:
        lines.append(
            f"{r['model']:26s} {r['runtime']:22s} {r['params']:>10,d} {r['gflops']:>7.2f} "
            f"{r['ms_per_image']:>9.1f} {quartiles(r):>13s} {r['times_student']:>9.2f}x "
            f"{r['mb']:>6.2f}"
        )
    ms = {(r["model"], r["runtime"]): r["ms_per_image"] for r in result["models"]}
    for model, runtime in ms:
        if runtime == "onnxruntime int8":
            speed = ms[model, "onnxruntime fp32"] / ms[model, runtime]
            lines.append(f"  {model}: int8 at {speed:.2f}x fp32's speed ({result['int8_variant']})")
    lines.append(f"training step: batch {result['batch_size']}, crop {result['crop_size']}")
    for r in result["train_steps"]:
        lines.append(
            f"  --kd {r['kd']:26s} {r['ms_per_step']:>9.1f} ms  "
            f"({r['ms_per_step'] / (1 + r['overhead_vs_none']):.1f} x "
            f"{1 + r['overhead_vs_none']:.2f}: {r['overhead_vs_none']:+.0%} over none)"
        )
    lines.append(
        f"teacher cache, built once: {result['cache_build_ms_per_image']:.1f} ms per image "
        f"(a {VOC_IMAGE[1]}x{VOC_IMAGE[0]} image resized to a {result['size']} shorter side; "
        f"--teacher-cache resizes to {TEACHER_RESIZE})"
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    out = check_output(args.out_dir, folder=True) / BENCHMARK_RESULT
    with exclusive([out]):
        if out.exists() and not args.overwrite:
            raise UserError(f"{out} already exists; pass --overwrite to replace it")
        benchmark(args, out)


def benchmark(args: argparse.Namespace, out: Path) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    student = build_student().to(device)
    teacher = build_teacher("none").to(device)
    lraspp = lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    ).to(device)
    models = {STUDENT: student, TEACHER: teacher, LRASPP: Logits(lraspp)}
    result = {
        "size": args.size,
        "runs": args.runs,
        "batch_size": args.batch_size,
        "crop_size": args.crop_size,
        "device": str(device),
        "device_name": device_name(device),
        "load": machine_load(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "models": inference_rows(models, args, device),
        "int8_variant": INT8_VARIANT if args.int8 else None,
    }
    result["train_steps"] = training_step_rows(student, teacher, args, device)
    result["cache_build_ms_per_image"] = cache_build_ms(teacher, args, device)
    print(format_table(result))
    write_json(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main, parse_args)
