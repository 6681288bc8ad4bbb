"""The student under ExecuTorch (XNNPACK, fp32 and int8) against ONNX Runtime (export.py's fp32
and int8 files), timed together in one process, interleaved (metrics.median_ms), at 520 x 520,
batch 1, on this CPU: the measurement behind docs/deployment.md's answer to "why not
ExecuTorch". Random weights (speed does not depend on them); the argmax agreement of each file
with eager PyTorch is on random inputs, a check that the lowering kept the function, not an
accuracy.

ExecuTorch is not a dependency of the lab. Run this in a virtual environment that adds it:

    python -m venv --system-site-packages /tmp/et && /tmp/et/bin/pip install executorch==1.5.1
    /tmp/et/bin/python dev/executorch_vs_ort.py --runs 30

The .pte files are exported at a fixed 520 x 520 (the ONNX files take any size): the size
timed. int8 under ExecuTorch is PT2E with XNNPACK's symmetric quantizer, per channel, calibrated
on --calib random inputs; under ONNX Runtime it is export.quantize_int8 (export.INT8_VARIANT).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from export import export_onnx, quantize_int8  # noqa: E402
from metrics import device_name, median_ms  # noqa: E402
from model import TEACHER_RESIZE, build_student  # noqa: E402
from onnx_model import OnnxModel  # noqa: E402

CPU = torch.device("cpu")


def lower_to_pte(student, example: tuple, path: Path, calibration: list | None) -> None:
    """torch.export -> (int8: PT2E with XNNPACK's quantizer, calibrated) -> XNNPACK -> .pte."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = student
    if calibration is not None:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True)
        )
        prepared = prepare_pt2e(torch.export.export(student, example).module(), quantizer)
        for x in calibration:
            prepared(x)
        module = convert_pt2e(prepared)
    program = to_edge_transform_and_lower(
        torch.export.export(module, example), partitioner=[XnnpackPartitioner()]
    ).to_executorch()
    path.write_bytes(program.buffer)


class PteModel:
    """A .pte file run by ExecuTorch's Python runtime: model(x) -> logits tensor."""

    def __init__(self, path: Path):
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(str(path)).load_method("forward")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x])[0]


def agreement(reference: torch.Tensor, logits: torch.Tensor) -> float:
    return (reference.argmax(1) == logits.argmax(1)).float().mean().item()


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student = build_student(pretrained_backbone=False).eval()
    size = (1, 3, TEACHER_RESIZE, TEACHER_RESIZE)
    x = torch.randn(size)
    calibration = [torch.randn(size) for _ in range(args.calib)]
    with tempfile.TemporaryDirectory() as work, torch.no_grad():
        work = Path(work)
        export_onnx(student, work / "s.onnx", {"kd": "none", "params": 0})
        quantize_int8(work / "s.onnx", work / "s_int8.onnx", [c.numpy() for c in calibration])
        lower_to_pte(student, (x,), work / "s.pte", None)
        lower_to_pte(student, (x,), work / "s_int8.pte", calibration)
        models = {
            "onnxruntime fp32": OnnxModel(work / "s.onnx"),
            "onnxruntime int8": OnnxModel(work / "s_int8.onnx"),
            "executorch xnnpack fp32": PteModel(work / "s.pte"),
            "executorch xnnpack int8": PteModel(work / "s_int8.pte"),
        }
        files = ["s.onnx", "s_int8.onnx", "s.pte", "s_int8.pte"]
        sizes = {name: (work / f).stat().st_size / 1e6 for name, f in zip(models, files)}
        reference = student(x)
        agree = {name: agreement(reference, model(x)) for name, model in models.items()}
        times = median_ms({n: lambda m=m: m(x) for n, m in models.items()}, CPU, args.runs)
    base = times["onnxruntime fp32"]
    print(
        f"student, 520x520, batch 1, {args.threads} threads, median of {args.runs} interleaved "
        f"runs, {device_name(CPU)}, torch {torch.__version__}"
    )
    print("| runtime | ms/image | speed vs ORT fp32 | MB | argmax agreement with eager |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        print(
            f"| {name} | {times[name]:.1f} | {base / times[name]:.2f}x | {sizes[name]:.2f} | "
            f"{100 * agree[name]:.2f}% |"
        )
    best = min(times, key=times.get)
    print(f"fastest: {best}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=30, help="timed rounds")
    p.add_argument("--calib", type=int, default=8, help="random calibration inputs for int8")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch and ORT)")
    main(p.parse_args())
