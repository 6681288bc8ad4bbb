"""export.py: ONNX parity with PyTorch, metadata, int8, and clear errors."""

from cli import UserError

import collections
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import export
from conftest import damaged_json, documented_defaults, load_script, run_script, visible
from distill import KD_MODES
from export import INT8_VARIANT, argmax_agreement, export_onnx, images, parity, parse_args
from model import load_student
from onnx_model import (
    INPUT,
    METADATA_KEY,
    OUTPUT,
    UNKNOWN_KD,
    OnnxModel,
    require,
    student_metadata,
)


def test_the_export_matches_pytorch_at_several_sizes_and_carries_the_metadata(export_run):
    student, _ = load_student(export_run["checkpoint"])
    model = OnnxModel(export_run["onnx"])
    rows = parity(student, model, sizes=((64, 64), (45, 77)))
    assert all(diff < tol and agree == 1.0 and decided for _, _, diff, tol, agree, decided in rows)
    assert model.metadata["kd"] == "response" and model.metadata["synthetic"] is True
    assert model.metadata["args"]["teacher_weights"] == "none"  # the random teacher, marked
    assert model.metadata["params"] == sum(p.numel() for p in student.parameters())
    printed = re.findall(
        r"(\d+)x(\d+): max \|ONNX Runtime - PyTorch\| = ([\d.e+-]+)", export_run["proc"].stdout
    )
    assert len(printed) == 6 and all(float(diff) < 1e-4 for *_, diff in printed)  # .onnx, .ort


def test_int8_is_written_and_reports_its_agreement(export_run):
    stdout = export_run["proc"].stdout
    agreement = float(
        re.search(
            r"int8 argmax agreement with fp32 on 2 val images "
            r"\(SYNTHETIC data\): ([\d.]+)%",
            stdout,
        ).group(1)
    )
    fp32, int8 = OnnxModel(export_run["onnx"]), OnnxModel(export_run["int8"])
    expected = argmax_agreement(fp32, int8, images(export_run["data"], "val", 2))
    assert agreement == pytest.approx(100 * expected, abs=0.005)  # as printed, 2 decimals
    assert "calibrating int8 on 2 train images (SYNTHETIC data)" in stdout
    int8 = OnnxModel(export_run["int8"])
    assert int8.metadata["kd"] == "response"  # carried over from the fp32 file
    assert export_run["int8"].stat().st_size < 0.5 * export_run["onnx"].stat().st_size
    assert int8(torch.randn(1, 3, 40, 56)).shape == (1, 21, 40, 56)


def test_int8_report_counts_the_operations_onnx_runtime_runs(export_run):
    printed = dict(
        re.findall(
            r"(fp32|int8) as ONNX Runtime runs it on this CPU: (.*)", export_run["proc"].stdout
        )
    )
    ops = {
        name: {op: int(n) for n, op in re.findall(r"(\d+) (\w+)", line)}
        for name, line in printed.items()
    }
    stored = [node.op_type for node in onnx.load(export_run["int8"]).graph.node]
    # ONNX Runtime fuses each stored DequantizeLinear -> Conv -> QuantizeLinear into one op;
    # the first convolution stays float (quantize_int8).
    assert ops["int8"]["QLinearConv"] == stored.count("Conv") - 1 > 0 and ops["int8"]["Conv"] == 1
    # The gates and means run in int8: the image enters int8 once and the logits leave it
    # once per output path, not around each of the 26 gates.
    assert not {"HardSigmoid", "ReduceMean", "Mul"} & set(ops["int8"])
    assert ops["int8"]["QuantizeLinear"] + ops["int8"]["DequantizeLinear"] <= 4
    assert "QuantizeLinear" not in ops["fp32"] and ops["fp32"]["Conv"] > 0


@pytest.mark.parametrize("name", ["bad.onnx", "bad.ort"])
def test_a_corrupt_model_file_is_one_clear_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match=f"cannot load .*{name} as an ONNX model"):
        OnnxModel(tmp_path / name)
    proc = run_script(
        "test.py", "--checkpoint", tmp_path / name, "--device", "cpu", "--out-dir", tmp_path
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot load")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_missing_package_names_the_install_command():
    with pytest.raises(UserError, match="pip install -r requirements.txt"):
        require("no_such_package_for_the_deployment")


def test_the_mobile_files_load_and_match_what_they_were_converted_from(export_run):
    student, _ = load_student(export_run["checkpoint"])
    ort, int8_ort = OnnxModel(export_run["ort"]), OnnxModel(export_run["int8 ort"])
    rows = parity(student, ort, sizes=((64, 64), (45, 77)))
    assert all(diff < tolerance for _, _, diff, tolerance, *_ in rows)
    int8 = OnnxModel(export_run["int8"])
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    assert (int8_ort(x).argmax(1) == int8(x).argmax(1)).float().mean() > 0.99
    assert ort.metadata == OnnxModel(export_run["onnx"]).metadata  # kd, params, SYNTHETIC
    assert int8_ort.metadata["int8"] == INT8_VARIANT
    stdout = export_run["proc"].stdout
    shown = {k: export_run[k].relative_to(export_run["work"]) for k in ("ort", "int8 ort")}
    assert all(f"wrote {path} (" in stdout for path in shown.values())
    assert "int8 mobile argmax agreement with fp32 on 2 val images (SYNTHETIC data)" in stdout


def test_a_truncated_mobile_file_is_one_clear_error(export_run, tmp_path):
    cut = tmp_path / "cut.ort"
    cut.write_bytes(export_run["ort"].read_bytes()[:5000])
    with pytest.raises(UserError, match="cannot load .*cut.ort as an ONNX model"):
        OnnxModel(cut)


def test_int8_ready_rewrites_the_gates_and_means_without_changing_the_function(exported, tmp_path):
    model = onnx.load(exported)
    export.int8_ready(model)
    ops = collections.Counter(node.op_type for node in model.graph.node)
    assert ops["HardSigmoid"] == ops["ReduceMean"] == 0 and ops["GlobalAveragePool"] == 10
    assert ops["Clip"] > 0
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save_model(model, rewritten)
    x = torch.randn(1, 3, 75, 64, generator=torch.Generator().manual_seed(1))
    before, after = OnnxModel(exported)(x), OnnxModel(rewritten)(x)
    assert (before - after).abs().max() < 1e-4


def test_export_refuses_to_replace_an_onnx_file_without_asking(trained, tmp_path):
    (tmp_path / "s.onnx").write_text("mine", encoding="utf-8")
    proc = run_script("export.py", "--checkpoint", trained["out"], "--out", tmp_path / "s.onnx")
    assert proc.returncode == 1 and "--overwrite" in proc.stderr
    assert (tmp_path / "s.onnx").read_text(encoding="utf-8") == "mine"


def test_a_rerun_keeps_only_the_files_made_from_this_checkpoint_and_these_images(
    export_run, tmp_path
):
    """What lets test.txt rerun without exporting again, and re-export after a retrain:
    another checkpoint, other calibration images, another ONNX Runtime or a missing file each
    make the files again."""
    ckpt, calibration = export_run["checkpoint"], images(export_run["data"], "train", 2)
    fp32 = export.made_from(ckpt)
    int8 = fp32 | {"calibration_sha256": export.digest(calibration)}
    wanted = {export_run["onnx"]: fp32, export_run["ort"]: fp32}
    wanted |= {export_run["int8"]: int8, export_run["int8 ort"]: int8}
    assert export.up_to_date(wanted)
    retrained = export.made_from(ckpt.with_name("student_none.pth"))
    assert not export.up_to_date({export_run["onnx"]: retrained})
    one_image = fp32 | {"calibration_sha256": export.digest(calibration[:1])}
    assert not export.up_to_date({export_run["int8"]: one_image})
    assert not export.up_to_date({export_run["ort"]: fp32 | {"onnxruntime": "0.0"}})
    assert not export.up_to_date({export_run["onnx"]: int8})
    assert not export.up_to_date({**wanted, tmp_path / "student_response.onnx": fp32})


def test_the_metadata_is_json_of_the_run(export_run):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(export_run["onnx"])).metadata_props}
    assert json.loads(props["student"])["args"]["kd"] == "response"


def test_int8_without_calibration_data_is_one_error_and_writes_nothing(trained, tmp_path):
    out = tmp_path / "s.onnx"
    proc = run_script(
        "export.py",
        "--checkpoint",
        trained["out"],
        "--out",
        out,
        "--int8",
        "--data-root",
        tmp_path / "no_data",
    )
    assert proc.returncode == 1 and "PASCAL VOC 2012 not found" in proc.stderr
    assert "Traceback" not in proc.stderr and visible(tmp_path) == []


# The IR version that goes with opset 17 (onnx's versioning table): make_model's default, onnx's
# newest, is newer than onnxruntime 1.23 (the last release for Python 3.10) can read.
OPSET_17_IR = 8


def foreign_onnx(
    path,
    shape,
    names=(INPUT, OUTPUT),
    metadata=None,
    image=(onnx.TensorProto.FLOAT, ["n", 3, "h", "w"]),
    stride=1,
) -> str:
    """An .onnx file of one 1 x 1 convolution (of `stride`) from its input (names[0], of
    `image`'s type and shape) to shape[1] channels (21 where not an int), a mean over H and W
    for a 2-dimensional `shape`, declared as `shape`, with `metadata` as export.py stores it:
    a model of any declared kind, for the loaders' checks."""
    channels = shape[1] if shape and isinstance(shape[1], int) else 21
    dtype = onnx.helper.tensor_dtype_to_np_dtype(image[0])
    inputs = image[1][1] if isinstance(image[1][1], int) else 3
    weight = onnx.numpy_helper.from_array(np.full((channels, inputs, 1, 1), 0.1, dtype), "w")
    conv = onnx.helper.make_node("Conv", [names[0], "w"], ["conv"], strides=[stride, stride])
    last = (
        onnx.helper.make_node("ReduceMean", ["conv"], [names[1]], axes=[2, 3], keepdims=0)
        if shape and len(shape) == 2
        else onnx.helper.make_node("Identity", ["conv"], [names[1]])
    )
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [conv, last],
        "g",
        [tensor(names[0], image[0], image[1])],
        [tensor(names[1], image[0], shape)],
        [weight],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=OPSET_17_IR
    )
    if metadata is not None:
        onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.save_model(model, str(path))
    return str(path)


@pytest.mark.parametrize("names", [("x", "y"), ("x", OUTPUT), (INPUT, "z")])
def test_an_onnx_model_of_another_kind_is_refused(tmp_path, names):
    path = foreign_onnx(tmp_path / "other.onnx", [1, 21, "h", "w"], names)
    with pytest.raises(UserError, match="is not a segmentation model of export.py"):
        OnnxModel(path)


@pytest.mark.parametrize(
    "shape, classes",
    [([1, 21, "h", "w"], 21), (["n", 5, "h", "w"], 5), ([1, "c", "h", "w"], 21), (None, 21)],
)
def test_the_class_count_is_read_from_the_output_shape_where_the_file_gives_it(
    tmp_path, shape, classes
):
    """Where the file is silent ("c", no shape), ONNX Runtime infers it from the weights."""
    assert OnnxModel(foreign_onnx(tmp_path / "m.onnx", shape)).classes == classes


def test_an_output_that_is_not_n_c_h_w_is_refused(tmp_path):
    with pytest.raises(UserError, match="output has 2 dimensions, not 4"):
        OnnxModel(foreign_onnx(tmp_path / "m.onnx", [5, 21]))


GOOD_METADATA = {"kd": "none", "params": 1}
FOREIGN = {
    "a float16 input": dict(image=(onnx.TensorProto.FLOAT16, ["n", 3, "h", "w"])),
    "a fixed input size": dict(image=(onnx.TensorProto.FLOAT, [1, 3, 64, 64])),
    "4 input channels": dict(image=(onnx.TensorProto.FLOAT, ["n", 4, "h", "w"])),
    "logits at 1/8 of the input size": dict(stride=8),
    "negative parameters": dict(metadata={"kd": "none", "params": -5}),
    "parameters a bool": dict(metadata={"kd": "none", "params": True}),
    "another --kd": dict(metadata={"kd": "crd", "params": 5}),
    "synthetic a string": dict(metadata={**GOOD_METADATA, "synthetic": "no"}),
}
REFUSAL = {
    "a float16 input": r"input is a tensor\(float16\), not float32",
    "a fixed input size": "with H and W free",
    "4 input channels": r"input is \['n', 4, 'h', 'w'\], not N x 3 x H x W",
    "logits at 1/8 of the input size": r"its logits are \(1, 21, \d+, \d+\), not N x C x H x W",
    "negative parameters": "no student metadata",
    "parameters a bool": "no student metadata",
    "another --kd": "names --kd 'crd', not one of the lab's",
    "synthetic a string": "'synthetic' is not true or false",
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_test_py_refuses_a_foreign_onnx_model_in_one_line(fake_voc, tmp_path, kind):
    """What test.py would otherwise score or report, or fail on inside ONNX Runtime."""
    path = foreign_onnx(
        tmp_path / "m.onnx", ["n", 21, "h", "w"], **{"metadata": GOOD_METADATA, **FOREIGN[kind]}
    )
    argv = ["--checkpoint", path, "--data-root", fake_voc, "--runs", "1", "--size", "64"]
    proc = run_script("test.py", *argv, "--device", "cpu", "--out-dir", tmp_path / "out")
    assert proc.returncode == 1 and re.search(REFUSAL[kind], proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr and not list((tmp_path / "out").glob("*.json"))


def test_test_py_refuses_an_onnx_model_with_other_than_21_classes(tmp_path):
    path = foreign_onnx(tmp_path / "five.onnx", [1, 5, "h", "w"], metadata=GOOD_METADATA)
    with pytest.raises(UserError, match=f"^{re.escape(path)} outputs 5 classes, not VOC's 21$"):
        load_script("test").load_model(path, torch.device("cpu"))


def test_argmax_agreement_is_the_fraction_of_pixels_whose_classes_agree():
    # Two "models" of fixed logits: classes [[0, 1], [1, 0]] against [[0, 1], [0, 0]].
    a = torch.tensor([[[[1.0, 0], [0, 1]], [[0, 1], [1, 0]]]])
    b = torch.tensor([[[[1.0, 0], [1, 1]], [[0, 1], [0, 0]]]])
    inputs = [torch.zeros(1, 3, 2, 2).numpy()] * 2
    assert argmax_agreement(lambda x: a, lambda x: b, inputs) == 3 / 4
    assert argmax_agreement(lambda x: a, lambda x: a, inputs) == 1.0


def test_export_without_onnxscript_is_one_error_naming_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(UserError, match="needs the package onnxscript: pip install"):
        export_onnx(torch.nn.Conv2d(3, 21, 1), tmp_path / "m.onnx", {})
    assert visible(tmp_path) == []


@pytest.mark.parametrize(
    "argv, error",
    [
        ([], "the following arguments are required: --checkpoint"),
        (["--checkpoint", "s.pth", "--calib", "0"], "--calib"),
        (["--checkpoint", "s.pth", "--calib", "10001"], "--calib"),
        (["--checkpoint", "s.pth", "--out", "s.onx"], "--out: s.onx must end in .onnx"),
    ],
)
def test_export_flags_out_of_range_are_refused(capsys, argv, error):
    with pytest.raises(SystemExit) as exit:
        parse_args(argv)
    assert exit.value.code == 1 and error in capsys.readouterr().err


def test_the_calibration_default_is_the_documented_one():
    args = vars(parse_args(["--checkpoint", "s.pth"]))
    assert args["calib"] == int(documented_defaults(args)["--calib"])


def test_export_flags_at_their_limits_are_taken():
    for calib in ("1", "10000"):
        assert parse_args(["--checkpoint", "s.pth", "--calib", calib]).calib == int(calib)
    assert parse_args(["--checkpoint", "d/s.pth"]).out == str(Path("d/s.onnx"))


def test_export_prints_the_agreement_and_the_size_it_wrote(export_run):
    stdout = export_run["proc"].stdout
    agreements = [float(a) for a in re.findall(r"argmax agreement ([\d.]+)%", stdout)]
    assert len(agreements) == 6 and all(99.0 <= a <= 100.0 for a in agreements)  # .onnx, .ort
    mb = float(re.search(r"wrote \S+student_response.onnx \(([\d.]+) MB\)", stdout).group(1))
    assert mb == pytest.approx(export_run["onnx"].stat().st_size / 1e6, abs=0.005)
    int8, fp32 = re.search(
        r"wrote \S+_int8.onnx \(([\d.]+) MB, fp32 ([\d.]+) MB\)", stdout
    ).groups()
    assert float(int8) == pytest.approx(export_run["int8"].stat().st_size / 1e6, abs=0.005)
    assert float(fp32) == mb


def stand_in_export(monkeypatch, parity_rows: list) -> None:
    """export.main's own logic only: the export writes an empty file, which is not loaded, and
    its parity check gives `parity_rows` [(h, w, max |difference|, tolerance, agreement, the
    argmax agrees where decided)]."""
    monkeypatch.setattr(export, "export_onnx", lambda student, path, metadata: path.touch())
    monkeypatch.setattr(export, "OnnxModel", lambda path: None)
    monkeypatch.setattr(export, "up_to_date", lambda wanted: False)
    monkeypatch.setattr(export, "parity", lambda student, model: parity_rows)


@pytest.mark.parametrize("old", [None, b"the good model of yesterday"])
def test_an_export_that_differs_from_pytorch_is_refused_and_the_old_file_kept(
    trained, tmp_path, monkeypatch, old
):
    stand_in_export(monkeypatch, [(64, 64, 1.0, 1e-4, 1.0, True)])  # far beyond the tolerance
    out = tmp_path / "s.onnx"
    if old:
        out.write_bytes(old)
    argv = ["--checkpoint", str(trained["out"]), "--out", str(out), "--overwrite"]
    with pytest.raises(UserError, match=f"differs from PyTorch .*; {re.escape(str(out))} not"):
        export.main(parse_args(argv))
    assert visible(tmp_path) == ([out] if old else [])  # no temporary left either
    assert not old or out.read_bytes() == old


def test_the_printed_agreements_are_percentages_of_what_was_measured(
    trained, fake_voc, tmp_path, monkeypatch, capsys
):
    """main's parity lines and write_int8's line, with the measurements replaced by a model
    that agrees on half of the pixels (a real export agrees on all, where x 100 and / 100
    print alike)."""
    stand_in_export(monkeypatch, [(64, 64, 0.0, 1e-4, 0.5, True)])
    monkeypatch.setattr(export, "quantize_int8", lambda fp32, out, calib, metadata: out.touch())
    monkeypatch.setattr(export, "argmax_agreement", lambda a, b, inputs: 0.5)
    monkeypatch.setattr(export, "runtime_ops", lambda path: collections.Counter())
    argv = ["--checkpoint", str(trained["out"]), "--out", str(tmp_path / "s.onnx"), "--int8"]
    export.main(parse_args(argv + ["--calib", "2", "--data-root", str(fake_voc)]))
    stdout = capsys.readouterr().out
    assert "64x64: max |ONNX Runtime - PyTorch| = 0.0e+00 (tolerance 1.0e-04), argmax agreement "
    "50.00%" in stdout
    assert "int8 argmax agreement with fp32 on 2 val images (SYNTHETIC data): 50.00%" in stdout


class Shifted(torch.nn.Module):
    """A stand-in runtime: the reference's logits plus `shift`, the argmax of pixel (0, 0)
    swapped when `swap`."""

    def __init__(self, reference, shift: float, swap: bool = False):
        super().__init__()
        self.reference, self.shift, self.swap = reference, shift, swap

    def forward(self, x):
        out = self.reference(x) + self.shift
        if self.swap:
            out[0, :, 0, 0] = out[0, :, 0, 0].flip(0)
        return out


def test_the_tolerance_grows_with_the_logits_and_the_argmax_must_agree_where_decided():
    """A trained student's logits are large (tens): float32 rounding there is 1e-4 of them,
    not 1e-4 absolute; an argmax that differs where its two best logits are far apart is a
    real difference, however small the values."""
    big = torch.nn.Conv2d(3, 21, 1)
    with torch.no_grad():
        big.weight.mul_(300)
    ((*_, diff, tolerance, _, decided),) = parity(big, Shifted(big, 2e-3), sizes=((8, 8),))
    assert (
        diff == pytest.approx(2e-3, rel=0.05) and 1e-3 < tolerance and diff < tolerance and decided
    )
    ((*_, diff, tolerance, agree, decided),) = parity(
        big, Shifted(big, 0.0, swap=True), sizes=((8, 8),)
    )
    assert diff > tolerance and agree < 1 and not decided


METADATA = {
    "kd": "response",
    "params": 1035733,
    "synthetic": False,
    "epoch": 3,
    "checkpoint": "weights/student_response.pth",
    "args": {"kd": "response", "epochs": 100, "teacher_weights": "default"},
}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged_json(METADATA))
def test_damaged_metadata_is_refused_or_says_what_test_py_reports(tmp_path, case):
    """What test.py reads of a .onnx file: a foreign file's claims (another --kd, a count that
    is not one, SYNTHETIC of another type) are refused, never reported as a student's."""
    metadata, what = case
    path = foreign_onnx(tmp_path / "m.onnx", [1, 21, "h", "w"], metadata=metadata)
    try:
        info = student_metadata(OnnxModel(path))
    except UserError:
        return
    assert info["kd"] in (*KD_MODES, UNKNOWN_KD) and isinstance(info.get("synthetic", False), bool)
    assert type(info["params"]) is int and info["params"] >= 0, what
