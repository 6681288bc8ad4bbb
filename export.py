"""Deploy the student: export a checkpoint to ONNX, check it against PyTorch with ONNX Runtime,
and optionally quantise it to int8 and write the mobile runtime's format.

    python export.py --checkpoint weights/student_response.pth --out weights/student_response.onnx
    python export.py --checkpoint weights/student_response.pth \\
        --out weights/student_response.onnx --int8 --calib 64   # + student_response_int8.onnx
    python export.py --checkpoint weights/student_response.pth --int8 --mobile   # + .ort files
    python test.py --checkpoint weights/student_response.onnx    # evaluate it like a .pth

The .onnx file is self-contained (weights inside), takes 1 x 3 x H x W for any H and W (the
image normalised as for training, dataset.normalize) and returns 1 x 21 x H x W logits. The
run's metadata (kd, parameters, training args, SYNTHETIC or not) is stored in the model's
metadata_props. After writing, ONNX Runtime runs it against PyTorch at a few sizes: the
export fails unless the logits agree to float tolerance.

--int8 writes a statically quantised model (QDQ: int8 weights, uint8 activations), calibrated
on the first --calib training images, and reports its argmax agreement with the fp32 model on
as many val images, both file sizes, and the operations ONNX Runtime runs for each file here.
Before quantising, the graph's hardsigmoids (inside every hardswish and squeeze-excitation
gate) and spatial means are rewritten, with the same function, into operations ONNX Runtime
runs in int8 (int8_ready), so the network stays in int8 from its second convolution to its
last instead of converting to float and back around each gate (docs/deployment.md).

--mobile also writes each file in ONNX Runtime's mobile format (.ort, converted by
onnxruntime.tools.convert_onnx_models_to_ort with the optimisations fixed for ARM), loads it
back and checks it as the .onnx is checked.

Each file records what it was made from (made_from): the checkpoint's bytes, the torch and
ONNX Runtime versions, for int8 the calibration images. With --overwrite, files that record
the same are kept as they are (rebuilt they would be the same), so test.txt reruns quickly and
still re-exports after a retrain.
"""

from cli import UserError, add_data_root, file_path, number, parser, path_arg, run

import argparse
import collections
import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dataset import EvalTransform, voc_dataset
from files import atomic_path, check_output, exclusive
from model import TEACHER_RESIZE, Student, count_params, load_student, with_decoder_bn_folded
from onnx_model import INPUT, METADATA_KEY, OUTPUT, OnnxModel, require
from voc import is_synthetic

# A square at the teacher's input size, VOC's usual landscape, odd sizes.
PARITY_SIZES = ((TEACHER_RESIZE, TEACHER_RESIZE), (333, 500), (97, 65))
# max |ONNX Runtime - PyTorch| of the logits, relative to their largest magnitude (at least
# 1): float32 rounding grows with the values rounded, and a trained model's logits are large.
TOLERANCE = 1e-4
# What ONNX Runtime's CPU kernels run in int8 (QLinearConv, QLinearAdd, QLinearMul,
# QLinearConcat, QLinearGlobalAveragePool); a Relu or Clip after one of them folds into its
# output's range. Any other operation in between costs a conversion to float and back.
INT8_OPS = ("Conv", "Add", "Mul", "Concat", "GlobalAveragePool", "Relu", "Clip")
# The int8 recipe of quantize_int8, as benchmark.py's JSON and the int8 file's metadata name it
# (docs/deployment.md#int8 says why each step).
INT8_VARIANT = "qdq-u8s8-int8-ops-gates-rewritten-first-conv-float"


def export_onnx(student: torch.nn.Module, path: Path, metadata: dict) -> None:
    """Write `student` as one self-contained ONNX file with dynamic height and width (torch
    exporter, dynamo=True, which needs onnxscript) and `metadata` as string properties; a
    Student is written with its decoder's BatchNorm folded (model.with_decoder_bn_folded)."""
    require("onnxscript")
    onnx = require("onnx")
    if isinstance(student, Student):
        student = with_decoder_bn_folded(student)
    height, width = torch.export.Dim("height", min=32), torch.export.Dim("width", min=32)
    program = torch.onnx.export(
        student.eval(),
        (torch.zeros(1, 3, 96, 128),),
        dynamo=True,
        verbose=False,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes={"x": {2: height, 3: width}},
        external_data=False,
    )
    model = program.model_proto
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def parity(student: torch.nn.Module, model: OnnxModel, sizes=PARITY_SIZES) -> list:
    """[(h, w, max |logit difference|, its tolerance, fraction of pixels with the same
    argmax, whether the argmax agrees wherever it is decided)] on random inputs of each size.
    The tolerance is TOLERANCE times the largest |logit| (at least 1); the argmax is decided
    at a pixel whose two highest logits are more than twice the tolerance apart, where no
    rounding within the tolerance can swap them."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, generator=generator)
        with torch.inference_mode():
            ref = student.eval()(x)
        got = model(x)
        tolerance = TOLERANCE * max(1.0, ref.abs().max().item())
        top2 = ref.topk(2, dim=1).values
        decided = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
        same = ref.argmax(1) == got.argmax(1)
        rows.append(
            (
                h,
                w,
                (ref - got).abs().max().item(),
                tolerance,
                same.float().mean().item(),
                bool(same[decided].all()),
            )
        )
    return rows


def images(data_root: str, split: str, count: int) -> list:
    """The first `count` images of a VOC split as normalised 1 x 3 x H x W arrays."""
    data = voc_dataset(data_root, split, EvalTransform(), limit=count)
    return [data[i][0][None].numpy() for i in range(len(data))]


def int8_ready(model) -> None:
    """Rewrite in place, keeping the function, the operations ONNX Runtime has no int8 kernel
    for into ones it has:

        HardSigmoid(x; alpha, beta) = Clip(x * alpha + beta, 0, 1)  -> Mul, Add, Clip
        ReduceMean(x, axes = H, W, keepdims)                        -> GlobalAveragePool(x)

    (hardswish(x) = x * HardSigmoid(x) once the quantiser's pre-processing has inlined it;
    the squeeze-excitation gates end in a HardSigmoid and start with the mean)."""
    onnx, numpy_helper = require("onnx"), require("onnx.numpy_helper")
    graph = model.graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def constant(value: float) -> str:
        name = f"int8_ready_{value!r}"
        if name not in values:
            values[name] = value
            graph.initializer.append(numpy_helper.from_array(np.float32(value), name))
        return name

    nodes = []
    for i, node in enumerate(graph.node):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = values.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "HardSigmoid":
            x, y = node.input[0], node.output[0]
            scaled, shifted = f"int8_ready_{i}_scaled", f"int8_ready_{i}_shifted"
            nodes += [
                onnx.helper.make_node("Mul", [x, constant(attrs.get("alpha", 0.2))], [scaled]),
                onnx.helper.make_node("Add", [scaled, constant(attrs.get("beta", 0.5))], [shifted]),
                onnx.helper.make_node("Clip", [shifted, constant(0.0), constant(1.0)], [y]),
            ]
        elif (
            node.op_type == "ReduceMean"
            and attrs.get("keepdims", 1)
            and axes is not None
            and (sorted(np.asarray(axes).tolist()) in ([2, 3], [-2, -1]))
        ):
            nodes.append(onnx.helper.make_node("GlobalAveragePool", node.input[:1], node.output))
        else:
            nodes.append(node)
    for n, node in enumerate(nodes):
        node.name = node.name or f"int8_ready_{n}"  # the quantiser wants unique names
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]  # the means' axes are not
    del graph.initializer[:]
    graph.initializer.extend(kept)


def calibration_reader(calibration: list):
    """The arrays as ONNX Runtime's quantiser reads them: get_next() -> {INPUT: x}, then None."""

    class Reader(require("onnxruntime.quantization").CalibrationDataReader):
        batches = iter(calibration)

        def get_next(self):
            return None if (x := next(self.batches, None)) is None else {INPUT: x}

    return Reader()


def quantize_int8(fp32: Path, out: Path, calibration: list, metadata: dict | None = None) -> None:
    """Static int8 quantisation of an .onnx file, calibrated on `calibration` arrays, by the
    recipe INT8_VARIANT names: QDQ, uint8 activations and int8 weights per tensor (the fast
    pair on x86 and ARM), only INT8_OPS, the graph made int8_ready first, the first
    convolution left in float (quantising it would convert the whole image, and the image's
    shape, read for the output size, from int8 too). ONNX Runtime's quantiser keeps the fp32
    file's metadata; the recipe's name and `metadata` are added to it."""
    q, onnx = require("onnxruntime.quantization"), require("onnx")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as work, atomic_path(out) as tmp:
        pre = Path(work) / "prepared.onnx"
        # Symbolic shape inference cannot follow the dynamic H and W; ONNX's own inference can.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        int8_ready(model)
        first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
        q.quantize_static(
            model,
            str(tmp),
            calibration_reader(calibration),
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            op_types_to_quantize=list(INT8_OPS),
            nodes_to_exclude=[first_conv],
        )
        quantized = onnx.load(str(tmp))
        props = {p.key: p.value for p in quantized.metadata_props}
        found = json.loads(props.get(METADATA_KEY, "{}"))
        found |= {"int8": INT8_VARIANT, **(metadata or {})}
        onnx.helper.set_model_props(quantized, {**props, METADATA_KEY: json.dumps(found)})
        onnx.save_model(quantized, str(tmp))


def write_mobile(model: Path, out: Path) -> None:
    """Convert an .onnx file to ONNX Runtime's mobile format (.ort) with ONNX Runtime's own
    converter: its optimisations are fixed at conversion for ARM (as phones are: without the
    x86-only NCHWc layouts), so a phone's runtime loads the graph as is."""
    tools = require("onnxruntime.tools.convert_onnx_models_to_ort")
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # its INFO lines
    with tempfile.TemporaryDirectory() as work, atomic_path(out) as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # its progress lines, not ours
            tools.convert_onnx_models_to_ort(
                model,
                output_dir=Path(work),
                optimization_styles=[tools.OptimizationStyle.Fixed],
                target_platform="arm",
            )
        shutil.copyfile(Path(work) / model.with_suffix(".ort").name, tmp)


def runtime_ops(path: Path) -> collections.Counter:
    """{op type: count} of the graph ONNX Runtime runs for `path` on this machine's CPU, after
    its graph optimisations (fusions, NCHWc layouts): int8 pays only where the operations
    between its int8 convolutions need no conversion back to float."""
    ort, onnx = require("onnxruntime"), require("onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not its warning that the saved graph is machine-specific
    with tempfile.TemporaryDirectory() as work:
        options.optimized_model_filepath = str(Path(work) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return collections.Counter(node.op_type for node in graph.node)


def argmax_agreement(a: OnnxModel, b: OnnxModel, inputs: list) -> float:
    """Fraction of pixels, over all `inputs`, where the two models' argmax agree."""
    same = total = 0
    for x in inputs:
        x = torch.from_numpy(x)
        agree = a(x).argmax(1) == b(x).argmax(1)
        same, total = same + agree.sum().item(), total + agree.numel()
    return same / total


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument(
        "--checkpoint",
        type=path_arg,
        required=True,
        help="a student checkpoint written by train.py",
    )
    p.add_argument(
        "--out",
        type=file_path(".onnx"),
        help="the .onnx file; none given: the checkpoint's path as .onnx",
    )
    p.add_argument(
        "--int8", action="store_true", help="also write <out stem>_int8.onnx, statically quantised"
    )
    p.add_argument(
        "--mobile",
        action="store_true",
        help="also write each model as .ort, ONNX Runtime's mobile format",
    )
    p.add_argument(
        "--calib",
        type=number(int, 1, 10_000),
        default=64,
        help="training images that calibrate --int8 (and val images that check it)",
    )
    add_data_root(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files, unless all are up to date (made from this checkpoint)",
    )
    args = p.parse_args(argv)
    args.out = args.out or str(Path(args.checkpoint).with_suffix(".onnx"))
    return args


def output_paths(args: argparse.Namespace) -> dict:
    """{what: path} of every file this run writes: fp32 and int8, .onnx and .ort."""
    out = Path(args.out)
    paths = {"fp32": out}
    if args.int8:
        paths["int8"] = out.with_name(out.stem + "_int8.onnx")
    if args.mobile:
        paths.update({f"{k} mobile": v.with_suffix(".ort") for k, v in list(paths.items())})
    return paths


def main(args: argparse.Namespace) -> None:
    paths = output_paths(args)
    with exclusive(paths.values()):  # one export at a time per file
        for path in paths.values():
            if check_output(path).exists() and not args.overwrite:
                raise UserError(f"{path} already exists; pass --overwrite to replace it")
        export(args, paths)


def export(args: argparse.Namespace, paths: dict) -> None:
    """The files of output_paths, each checked against the checkpoint before it is written."""
    student, ckpt = load_student(args.checkpoint)
    # Everything --int8 needs is read before any file is written.
    calibration = images(args.data_root, "train", args.calib) if args.int8 else None
    held_out = images(args.data_root, "val", args.calib) if args.int8 else None
    source = made_from(args.checkpoint)
    int8_source = source | {"calibration_sha256": digest(calibration)} if args.int8 else None
    if up_to_date(
        {path: int8_source if "int8" in what else source for what, path in paths.items()}
    ):
        names = ", ".join(map(str, paths.values()))
        tag = " (a student trained on SYNTHETIC data)" if ckpt["synthetic"] else ""
        print(f"{names}: up to date (made from this checkpoint, with these versions); kept{tag}")
        return
    saved = ckpt["args"]  # the training flags, as train.py stored them
    metadata = {"kd": saved["kd"], "params": count_params(student), "synthetic": ckpt["synthetic"]}
    metadata |= {"epoch": ckpt["epoch"], "checkpoint": str(args.checkpoint), "args": saved}
    metadata["made_from"] = source
    print(f"exporting {args.checkpoint} to ONNX ...", flush=True)
    write_checked(paths["fp32"], student, lambda tmp: export_onnx(student, tmp, metadata))
    if args.mobile:
        write_checked(paths["fp32 mobile"], student, partial(write_mobile, paths["fp32"]))
    if args.int8:
        write_int8(args, paths, calibration, held_out, int8_source)


def made_from(checkpoint: str) -> dict:
    """What an exported file is made of, as its metadata records it: the checkpoint's SHA-256
    and the torch and ONNX Runtime versions that export and convert (an int8 file adds its
    calibration's digest). Equal records make equal files."""
    found = {"checkpoint_sha256": hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()}
    return found | {"torch": torch.__version__, "onnxruntime": require("onnxruntime").__version__}


def digest(arrays: list) -> str:
    """SHA-256 of a list of arrays, their shapes included."""
    found = hashlib.sha256()
    for x in arrays:
        found.update(repr(x.shape).encode() + x.tobytes())
    return found.hexdigest()


def up_to_date(wanted: dict) -> bool:
    """Whether every {path: made_from record} exists as a model file recording it."""
    for path, record in wanted.items():
        try:
            if OnnxModel(path).metadata.get("made_from") != record:
                return False
        except UserError:  # missing, damaged or not ours: made again
            return False
    return True


def write_checked(out: Path, student: torch.nn.Module, write) -> None:
    """write(tmp) a model file, run it against `student` (parity) and only then put it at
    `out`: a file whose logits differ from PyTorch's beyond the tolerance, or whose argmax
    differs where it is decided, is refused and the old `out`, if any, kept."""
    with atomic_path(out) as tmp:
        write(tmp)
        for h, w, diff, tolerance, agree, decided in parity(student, OnnxModel(tmp)):
            print(
                f"  {h}x{w}: max |ONNX Runtime - PyTorch| = {diff:.1e} (tolerance "
                f"{tolerance:.1e}), argmax agreement {100 * agree:.2f}%"
            )
            if diff > tolerance or not decided:
                what = f"by {diff:.1e}" if diff > tolerance else "in its argmax"
                raise UserError(
                    f"the exported model differs from PyTorch {what} at {h}x{w} (tolerance "
                    f"{tolerance:.1e}); {out} not written"
                )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


def write_int8(args, paths: dict, calibration: list, held_out: list, source: dict) -> None:
    fp32, int8 = paths["fp32"], paths["int8"]
    tag = " (SYNTHETIC data)" if is_synthetic(args.data_root) else ""
    print(f"calibrating int8 on {len(calibration)} train images{tag} ...", flush=True)
    quantize_int8(fp32, int8, calibration, {"made_from": source})
    if args.mobile:
        write_mobile(int8, paths["int8 mobile"])
    for what in [k for k in ("int8", "int8 mobile") if k in paths]:
        path = paths[what]
        agree = argmax_agreement(OnnxModel(fp32), OnnxModel(path), held_out)
        on = f"{len(held_out)} val images{tag}"
        print(f"{what} argmax agreement with fp32 on {on}: {100 * agree:.2f}%")
        size, fp32_size = path.stat().st_size / 1e6, fp32.stat().st_size / 1e6
        print(f"wrote {path} ({size:.2f} MB, fp32 {fp32_size:.2f} MB)")
    for name, path in (("fp32", fp32), ("int8", int8)):
        ops = ", ".join(f"{n} {op}" for op, n in runtime_ops(path).most_common())
        print(f"{name} as ONNX Runtime runs it on this CPU: {ops}")


if __name__ == "__main__":
    run(main, parse_args)
