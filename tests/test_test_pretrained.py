"""test_pretrained.py (Step 1) end to end, offline, on the SYNTHETIC tree."""

import json

from conftest import RESULT_KEYS, run_script


def test_step1_runs_on_synthetic_data_with_a_random_teacher(fake_voc, tmp_path):
    proc = run_script(
        "test_pretrained.py",
        "--weights",
        "none",
        "--data-root",
        fake_voc,
        "--limit",
        "3",
        "--device",
        "cpu",
        "--out-dir",
        tmp_path,
        "--size",
        "64",
        "--runs",
        "1",
        "--num-overlays",
        "1",
        "--num-workers",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    for text in ("mIoU", "parameters", "32,957,013", "ms/image", "SYNTHETIC"):
        assert text in proc.stdout
    result = json.loads((tmp_path / "step1_fcn_resnet50.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert result["num_images"] == 3 and result["split"] == "val" and result["synthetic"] is True
    assert len(list((tmp_path / "overlays").glob("fcn_resnet50_*.png"))) == 2


def test_a_missing_data_root_is_a_clear_error_without_traceback(tmp_path):
    proc = run_script(
        "test_pretrained.py",
        "--weights",
        "none",
        "--data-root",
        tmp_path / "nowhere",
        "--device",
        "cpu",
    )
    assert proc.returncode != 0
    assert "--download" in proc.stderr and "VOCdevkit/VOC2012" in proc.stderr
    assert "Traceback" not in proc.stderr
