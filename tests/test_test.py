"""test.py: evaluating checkpoints, the KD comparison table, bad checkpoints."""

import json

from conftest import run_script

FAST = ("--device", "cpu", "--size", "64", "--runs", "1", "--num-workers", "0")


def test_a_checkpoint_is_scored_timed_and_illustrated(trained, fake_voc, tmp_path):
    proc = run_script("test.py", "--checkpoint", trained["out"], "--data-root", fake_voc,
                      "--num-overlays", "1", "--out", tmp_path, *FAST)
    assert proc.returncode == 0, proc.stderr
    for text in ("mIoU", "parameters", "ms/image", "SYNTHETIC"):
        assert text in proc.stdout
    result = json.loads((tmp_path / "test_student_none.json").read_text())
    assert {"miou", "iou", "pixel_acc", "params", "ms_per_image", "device", "split",
            "num_images", "synthetic"} <= set(result)
    assert result["synthetic"] is True and result["num_images"] == 4 and len(result["iou"]) == 21
    overlays = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert len(overlays) == 2 and overlays[0].startswith("student_none_best1_")


def test_compare_writes_one_row_per_checkpoint_plus_the_teacher(trained, fake_voc, tmp_path):
    copy = tmp_path / "student_copy.pth"
    copy.write_bytes(trained["out"].read_bytes())
    (tmp_path / "step1_fcn_resnet50.json").write_text(json.dumps({
        "miou": 0.5, "params": 32957013, "ms_per_image": 100.0, "input_size": 520,
        "device_name": "some CPU", "synthetic": True}))
    proc = run_script("test.py", "--compare", trained["out"], copy, "--data-root", fake_voc,
                      "--limit", "2", "--num-overlays", "1", "--out", tmp_path, *FAST)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "kd_comparison.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 3  # header, two students, the teacher
    assert "SYNTHETIC" in table and "FCN-ResNet50 teacher" in rows[-1] and "50.00" in rows[-1]
    data = json.loads((tmp_path / "kd_comparison.json").read_text())
    assert [s["checkpoint"] for s in data["students"]] == [str(trained["out"]), str(copy)]
    assert data["students"][0]["miou"] == data["students"][1]["miou"]  # same weights, same score


def test_a_corrupt_checkpoint_is_a_one_line_error(fake_voc, tmp_path):
    (tmp_path / "bad.pth").write_text("definitely not a checkpoint")
    proc = run_script("test.py", "--checkpoint", tmp_path / "bad.pth", "--data-root", fake_voc,
                      *FAST)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot read checkpoint {tmp_path / 'bad.pth'}: corrupt or not a PyTorch file "
        "(UnpicklingError)"]
