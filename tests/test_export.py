"""export.py: ONNX parity with PyTorch, metadata, int8, and clear errors."""

from cli import UserError

import json
import re

import onnx
import pytest
import torch

from conftest import run_script
from export import OnnxModel, argmax_agreement, images, parity, require
from model import load_student


def test_the_export_matches_pytorch_at_several_sizes_and_carries_the_metadata(trained, export_run):
    student, _ = load_student(trained["out"])
    model = OnnxModel(export_run["onnx"])
    rows = parity(student, model, sizes=((64, 64), (45, 77)))
    assert all(diff < 1e-4 and agree == 1.0 for _, _, diff, agree in rows)
    assert model.metadata["kd"] == "none" and model.metadata["synthetic"] is True
    assert model.metadata["params"] == sum(p.numel() for p in student.parameters())
    printed = re.findall(
        r"(\d+)x(\d+): max \|ONNX Runtime - PyTorch\| = ([\d.e+-]+)", export_run["proc"].stdout
    )
    assert len(printed) == 3 and all(float(diff) < 1e-4 for *_, diff in printed)


def test_int8_is_written_and_reports_its_agreement(export_run, fake_voc):
    stdout = export_run["proc"].stdout
    agreement = float(
        re.search(
            r"int8 argmax agreement with fp32 on 2 val images "
            r"\(SYNTHETIC data\): ([\d.]+)%",
            stdout,
        ).group(1)
    )
    fp32, int8 = OnnxModel(export_run["onnx"]), OnnxModel(export_run["int8"])
    expected = argmax_agreement(fp32, int8, images(fake_voc, "val", 2))
    assert agreement == pytest.approx(100 * expected, abs=0.005)  # as printed, 2 decimals
    assert "calibrating int8 on 2 train images (SYNTHETIC data)" in stdout
    int8 = OnnxModel(export_run["int8"])
    assert int8.metadata["kd"] == "none"  # carried over from the fp32 file
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
    # ONNX Runtime fuses each stored DequantizeLinear -> Conv -> QuantizeLinear into one op.
    assert ops["int8"]["QLinearConv"] == stored.count("Conv") > 0
    assert "QuantizeLinear" not in ops["fp32"] and ops["fp32"]["Conv"] > 0


def test_a_corrupt_onnx_file_is_one_clear_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match="cannot load .*bad.onnx as an ONNX model"):
        OnnxModel(tmp_path / "bad.onnx")
    proc = run_script(
        "test.py", "--checkpoint", tmp_path / "bad.onnx", "--device", "cpu", "--out-dir", tmp_path
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot load")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_missing_package_names_the_install_command():
    with pytest.raises(UserError, match="pip install -r requirements.txt"):
        require("no_such_package_for_the_deployment")


def test_export_refuses_to_replace_an_onnx_file_without_asking(trained, tmp_path):
    (tmp_path / "s.onnx").write_text("mine")
    proc = run_script("export.py", "--checkpoint", trained["out"], "--out", tmp_path / "s.onnx")
    assert proc.returncode == 1 and "--overwrite" in proc.stderr
    assert (tmp_path / "s.onnx").read_text() == "mine"


def test_the_metadata_is_json_of_the_run(export_run):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(export_run["onnx"])).metadata_props}
    assert json.loads(props["student"])["args"]["kd"] == "none"


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
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_an_onnx_model_of_another_kind_is_refused(tmp_path):
    onnx = require("onnx")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save_model(onnx.helper.make_model(graph), str(path))
    with pytest.raises(UserError, match="is not a segmentation model of export.py"):
        OnnxModel(path)
