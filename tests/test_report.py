"""report.py: a draft with every section the lab asks for, each number taken from the file a
command wrote; what is missing or unusable listed, never a traceback; the student's sections
kept when it is made again."""

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from checkpoints import load_file
from conftest import damaged_json, examples, load_script, run_script
from visualize import save_png

report = load_script("report")


def result(miou: float, kd: str | None = None, **changes) -> dict:
    """A result as test.py (a student, kd given) or test_pretrained.py writes it."""
    found = {
        "miou": miou,
        "iou": [miou] * 20 + [None],
        "pixel_acc": 0.9,
        "params": 1035733 if kd else 32957013,
        "ms_per_image": 12.5,
        "ms_quartiles": [12.0, 13.0],
        "input_size": 520,
        "device_name": "a CPU",
        "num_images": 4,
        "split": "val",
        "date": "2026-12-07",
        "synthetic": False,
        **({"kd": kd, "checkpoint": f"weights/student_{kd}.pth"} if kd else {"weights": "default"}),
    }
    return found | changes


BENCHMARK = {
    "models": [
        {
            "model": "student",
            "runtime": "eager",
            "params": 1035733,
            "gflops": 1.63,
            "ms_per_image": 42.9,
            "ms_quartiles": [41.0, 44.0],
            "times_student": 1.0,
            "mb": 4.3,
        }
    ],
    "train_steps": [{"kd": "none", "ms_per_step": 193.0, "overhead_vs_none": 0.0}],
    "device_name": "a CPU",
    "torch": "2.14",
    "date": "2026-12-07",
    "size": 520,
    "batch_size": 4,
    "crop_size": 256,
    "load": 0.5,
}


@pytest.fixture
def lab_tree(trained, tmp_path):
    """outputs/ and weights/ as the lab's commands leave them: Step 1, the --kd none and
    response students (the trained model, under both names), their test results, an ONNX
    row, the benchmark, curves and panels."""
    outputs, weights = tmp_path / "outputs", tmp_path / "weights"
    (outputs / "overlays").mkdir(parents=True)
    weights.mkdir()
    model = load_file(trained["out"], "c")
    for kd, miou in (("none", 0.25), ("response", 0.3125)):
        history = [{**row, "train_kl": 0.1} for row in model["history"]]  # response's term
        args = {**model["args"], "kd": kd, "teacher_weights": "default"}
        ckpt = dict(model, args=args, history=history)
        torch.save(ckpt, weights / f"student_{kd}.pth")
        shutil.copy(
            trained["logs"] / "student_none_curves.png", outputs / f"student_{kd}_curves.png"
        )
        (outputs / f"test_student_{kd}.json").write_text(
            json.dumps(result(miou, kd)), encoding="utf-8"
        )
        for panel in ("best1_fake_000004", "worst1_fake_000005"):
            save_png(
                Image.new("RGB", (8, 8)),
                outputs / "overlays" / f"student_{kd}_{panel}.png",
                f"{kd} {panel}",
            )
    (outputs / "step1_fcn_resnet50.json").write_text(json.dumps(result(0.6875)), encoding="utf-8")
    onnx = result(0.3, "response", runtime="onnxruntime", checkpoint="w/student_response.onnx")
    (outputs / "test_student_response_onnx.json").write_text(json.dumps(onnx), encoding="utf-8")
    (outputs / "benchmark.json").write_text(json.dumps(BENCHMARK), encoding="utf-8")
    return outputs, weights, model


def test_the_draft_holds_every_section_with_the_numbers_of_the_files(lab_tree):
    outputs, weights, model = lab_tree
    text, synthetic = report.build_report(outputs, weights)
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## 1. Architecture",
        "## 2. Knowledge distillation, step by step",
        "## 3. Training",
        "## 4. Results",
        "## 5. Qualitative results",
        "## 6. Discussion",
        "## 7. Use of LLMs",
        "## References",
    ]
    part = {h: text.split(h)[1].split("\n## ")[0] for h in headings}
    assert "| `aspp` | 128x33x33 | 147,936 |" in part["## 1. Architecture"]
    assert "**1,035,733 parameters**" in part["## 1. Architecture"]
    assert "tau^2 * KL(p_t^tau || p_s^tau)" in part["## 2. Knowledge distillation, step by step"]
    training = part["## 3. Training"]
    assert f"| lr | {model['args']['lr']} | {model['args']['lr']} |" in training
    assert "last epoch" in training and "![Loss and val mIoU per epoch, --kd none]" in training
    epochs = len(model["history"])
    hardware = model["history"][0]["device"]
    assert f"| --kd response | {epochs} |" in training and hardware in training
    results = part["## 4. Results"]
    teacher = "| FCN-ResNet50 teacher (Step 1) | 68.75 | 4 | 32,957,013 | 12.5 (12.0-13.0) |"
    assert teacher in results and "mIoU on SYNTHETIC val" in results
    assert "| student, response-based | 31.25 | 4 | 1,035,733 | 12.5 (12.0-13.0) |" in results
    assert "| `student_response.onnx` (ONNX Runtime) | 30.00 |" in results
    assert (
        "| aeroplane | 68.75 | 25.00 | 31.25 |" in results
        and "| tvmonitor | - | - | - |" in results
    )
    assert "| student | eager | 1,035,733 | 1.63 | 42.9 (41.0-44.0) | 4.30 |" in results
    qualitative = part["## 5. Qualitative results"]
    assert "![none best1_fake_000004](overlays/student_none_best1_fake_000004.png)" in qualitative
    assert "*response worst1_fake_000005*" in qualitative
    assert "Hinton" in part["## References"]
    assert synthetic and "> **SYNTHETIC data**" in text  # the students were trained on it


def test_your_sections_survive_a_rerun_and_the_draft_is_not_replaced_unasked(lab_tree):
    outputs, weights, _ = lab_tree
    args = ["--out-dir", outputs, "--weights-dir", weights]
    assert run_script("report.py", *args).returncode == 0
    path = outputs / "report.md"
    draft = path.read_text(encoding="utf-8")
    mine = "The feature term helped the thin classes.\n\nA second paragraph."
    path.write_text(draft.replace("*To write.*", mine, 1), encoding="utf-8")
    again = run_script("report.py", *args)
    assert again.returncode == 1 and "pass --overwrite" in again.stderr
    assert run_script("report.py", *args, "--overwrite").returncode == 0
    remade = path.read_text(encoding="utf-8")
    assert mine in remade.split("## 6. Discussion")[1].split("## 7.")[0]


def test_an_empty_outputs_folder_gives_a_draft_listing_what_is_missing(tmp_path):
    proc = run_script("report.py", "--out-dir", tmp_path / "out", "--weights-dir", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    draft = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    missing = draft.split("**Missing inputs**")[1].split("## 1.")[0]
    for item in ("step1_fcn_resnet50.json", "benchmark.json", "student_none.pth", "student_both"):
        assert item in missing
    assert "## 1. Architecture" in draft  # made from the code: needs no run


def test_unusable_inputs_are_listed_with_their_reason_and_links_are_not_followed(tmp_path):
    outputs, weights = tmp_path / "outputs", tmp_path / "weights"
    outputs.mkdir()
    weights.mkdir()
    (outputs / "step1_fcn_resnet50.json").write_text("{broken", encoding="utf-8")
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(BENCHMARK | {"device_name": "a private file"}), encoding="utf-8")
    (outputs / "benchmark.json").symlink_to(secret)
    torch.save({"model": {}}, weights / "student_none.pth")  # nothing else
    (weights / "student_response.pth").mkdir()  # a folder where a checkpoint goes
    text, _ = report.build_report(outputs, weights)
    missing = text.split("**Missing inputs**")[1]
    assert "step1_fcn_resnet50.json`: unreadable" in missing
    assert "benchmark.json`: a link, not followed" in missing and "a private" not in text
    assert "student_none.pth`: unusable" in missing and "entry 'args' missing" in missing
    assert "student_response.pth`: unusable" in missing and "is a folder" in missing


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=examples(10))
@given(st.data())
def test_a_damaged_result_is_listed_as_unusable_or_drafted_never_an_exception(lab_tree, data):
    """Any entry of Step 1's, a student's or the benchmark's JSON, at any depth, dropped, made
    odd or moved: the draft is made, and a number it shows is the file's."""
    outputs, weights, _ = lab_tree
    name, original = data.draw(
        st.sampled_from(
            [
                ("step1_fcn_resnet50.json", result(0.6875)),
                ("test_student_none.json", result(0.25, "none")),
                ("benchmark.json", BENCHMARK),
            ]
        )
    )
    damaged, what = data.draw(damaged_json(original))
    (outputs / name).write_text(json.dumps(damaged), encoding="utf-8")
    try:
        text, _ = report.build_report(outputs, weights)
    finally:
        (outputs / name).write_text(json.dumps(original), encoding="utf-8")
    listed = f"{name}`" in text.split("## 1.")[0]
    assert listed or (damaged.get("miou") is None or f"{100 * damaged['miou']:.2f}" in text), what
