"""The int8 variants tried for export.quantize_int8, side by side: for each, the speed against
the fp32 file (one process, interleaved, metrics.median_ms, 520 x 520, batch 1), the file's
size, the argmax agreement with fp32, and how many conversions into int8 (QuantizeLinear,
DynamicQuantizeLinear) ONNX Runtime still runs after its graph optimisations on this CPU. The table
of docs/deployment.md#int8 comes from this command:

    python dev/int8_variants.py --runs 15

Random weights and random inputs (speed does not depend on them; the agreement is a check
that a variant keeps the function, not an accuracy: export.py --int8 prints the agreement on
val images). The last row is export.quantize_int8 itself (export.INT8_VARIANT).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime.quantization as q
import torch
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from export import (  # noqa: E402
    INT8_OPS,
    INT8_VARIANT,
    calibration_reader,
    export_onnx,
    int8_ready,
    quantize_int8,
    runtime_ops,
)
from metrics import device_name, median_ms  # noqa: E402
from model import TEACHER_RESIZE, build_student  # noqa: E402
from onnx_model import OnnxModel  # noqa: E402

CONV_ONLY = {"op_types_to_quantize": ["Conv"]}
# name: (gates rewritten by export.int8_ready first, quantize_static's options)
VARIANTS = {
    "all ops (the recipe before 2026-12-07)": (False, {}),
    "all ops, per-channel weights": (False, {"per_channel": True}),
    "Conv only": (False, CONV_ONLY),
    "Conv only, QOperator format": (False, {**CONV_ONLY, "quant_format": q.QuantFormat.QOperator}),
    "all ops, s8 symmetric activations": (
        False,
        {"activation_type": q.QuantType.QInt8, "extra_options": {"ActivationSymmetric": True}},
    ),
    "gates rewritten, all ops": (True, {}),
    "gates rewritten, INT8_OPS only": (True, {"op_types_to_quantize": list(INT8_OPS)}),
}


def quantize_variant(pre: Path, out: Path, rewrite: bool, options: dict, calibration) -> None:
    model = onnx.load(str(pre))
    if rewrite:
        int8_ready(model)
    settings = {
        "quant_format": q.QuantFormat.QDQ,
        "activation_type": q.QuantType.QUInt8,
        "weight_type": q.QuantType.QInt8,
        **options,
    }
    q.quantize_static(model, str(out), calibration_reader(calibration), **settings)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((1, 3, 256, 256)).astype(np.float32) for _ in range(4)]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        fp32, pre = work / "fp32.onnx", work / "pre.onnx"
        export_onnx(build_student(pretrained_backbone=False), fp32, {"kd": "none", "params": 0})
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        files = {"fp32": fp32}
        for i, (name, (rewrite, options)) in enumerate(VARIANTS.items()):
            files[name] = work / f"v{i}.onnx"
            quantize_variant(pre, files[name], rewrite, options, calibration)
            print(f"quantised: {name}", flush=True)
        files[f"export.quantize_int8 ({INT8_VARIANT})"] = work / "recipe.onnx"
        quantize_int8(fp32, work / "recipe.onnx", calibration)
        models = {name: OnnxModel(path) for name, path in files.items()}
        x = torch.randn(1, 3, TEACHER_RESIZE, TEACHER_RESIZE)
        reference = models["fp32"](x).argmax(1)
        agree = {n: (m(x).argmax(1) == reference).float().mean().item() for n, m in models.items()}
        converts = {
            name: sum(n for op, n in runtime_ops(path).items() if op.endswith("QuantizeLinear"))
            for name, path in files.items()
        }
        times = median_ms(
            {n: lambda m=m: m(x) for n, m in models.items()}, torch.device("cpu"), args.runs
        )
        sizes = {name: path.stat().st_size / 1e6 for name, path in files.items()}
    print(
        f"\nstudent, 520x520, batch 1, {args.threads} threads, median of {args.runs} interleaved "
        f"runs, {device_name(torch.device('cpu'))}"
    )
    print("| variant | speed vs fp32 | ms/image | MB | argmax agreement | QuantizeLinear run |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in files:
        print(
            f"| {name} | {times['fp32'] / times[name]:.2f}x | {times[name]:.1f} | "
            f"{sizes[name]:.2f} | {100 * agree[name]:.2f}% | {converts[name]} |"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=15, help="timed rounds")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of ONNX Runtime")
    main(p.parse_args())
