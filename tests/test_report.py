import json
import shutil

import torch

from checkpoints import load_file
from conftest import load_script, run_script


def test_the_draft_holds_the_table_the_plots_and_the_overlays(trained, tmp_path):
    outputs, weights = tmp_path / "outputs", tmp_path / "weights"
    (outputs / "overlays").mkdir(parents=True)
    weights.mkdir()
    shutil.copy(trained["out"], weights / "student_none.pth")
    shutil.copy(trained["logs"] / "student_none_curves.png", outputs)
    (outputs / "overlays" / "student_none_best1_fake_000004.png").write_bytes(b"png")
    row = {
        "kd": "none",
        "miou": 0.25,
        "params": 1035733,
        "ms_per_image": 12.5,
        "input_size": 520,
        "device_name": "a CPU",
        "checkpoint": "weights/student_none.pth",
        "split": "val",
        "num_images": 4,
        "synthetic": True,
    }
    test = load_script("test")
    (outputs / "kd_comparison.md").write_text(
        test.comparison_markdown([row], None, []), encoding="utf-8"
    )

    proc = run_script("report.py", "--out-dir", outputs, "--weights-dir", weights)
    assert proc.returncode == 0, proc.stderr
    draft = (outputs / "report.md").read_text(encoding="utf-8")
    assert "| none (cross-entropy only) | 25.00 | 1,035,733 | 12.5 (520x520) |" in draft
    assert "![loss and mIoU curves, --kd none](student_none_curves.png)" in draft
    assert "](overlays/student_none_best1_fake_000004.png)" in draft
    assert "| crop_size | 64 |" in draft  # hyper-parameters come from the checkpoint's args
    assert "1,035,733 parameters" in draft and "tau^2" in draft
    assert "SYNTHETIC" in draft
    assert "Discussion (write this yourself)" in draft and "Use of LLMs" in draft
    missing = draft.split("**Missing inputs**")[1].split("Trained runs")[0]
    assert "student_response.pth" in missing and "benchmark.json" in missing
    assert "student_none.pth" not in missing

    (outputs / "report.md").write_text("my own discussion", encoding="utf-8")
    again = run_script("report.py", "--out-dir", outputs, "--weights-dir", weights)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    assert (outputs / "report.md").read_text(encoding="utf-8") == "my own discussion"
    forced = run_script("report.py", "--out-dir", outputs, "--weights-dir", weights, "--overwrite")
    assert forced.returncode == 0 and (outputs / "report.md").read_text(encoding="utf-8") == draft


def test_an_empty_outputs_folder_gives_a_draft_listing_what_is_missing(tmp_path):
    proc = run_script("report.py", "--out-dir", tmp_path / "out", "--weights-dir", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    draft = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    for item in (
        "step1_fcn_resnet50.json",
        "benchmark.json",
        "student_none.pth",
        "student_feature.pth",
    ):
        assert item in draft.split("**Missing inputs**")[1]
    assert "## 2. The student network" in draft  # computed from the code, needs no run


def test_unreadable_inputs_are_listed_with_their_reason_and_the_rest_is_drafted(tmp_path):
    outputs, weights = tmp_path / "outputs", tmp_path / "weights"
    outputs.mkdir()
    weights.mkdir()
    (outputs / "step1_fcn_resnet50.json").write_text("{broken", encoding="utf-8")
    (outputs / "benchmark.json").write_text('{"something": "else"}', encoding="utf-8")
    (outputs / "kd_comparison.md").write_bytes(b"\xff\xfe not UTF-8 text")
    torch.save({"model": {}}, weights / "student_none.pth")  # nothing else
    (weights / "student_response.pth").mkdir()  # a folder where a checkpoint goes
    proc = run_script("report.py", "--out-dir", outputs, "--weights-dir", weights)
    assert proc.returncode == 0, proc.stderr
    missing = (outputs / "report.md").read_text(encoding="utf-8").split("**Missing inputs**")[1]
    assert "step1_fcn_resnet50.json`: unreadable" in missing
    assert "benchmark.json`: not what the lab's commands write" in missing
    assert "kd_comparison.md`: unreadable" in missing
    assert "student_none.pth`: unreadable" in missing and "entry 'adapters' missing" in missing
    assert "student_response.pth`: unreadable" in missing and "is a folder" in missing
    assert f"wrote {outputs / 'report.md'}" in proc.stdout and "SYNTHETIC" not in proc.stdout


def test_training_time_counts_every_epoch_not_only_those_up_to_the_best(trained, tmp_path):
    outputs, weights = tmp_path / "outputs", tmp_path / "weights"
    weights.mkdir()
    last = torch.load(load_script("train").last_path(trained["out"]), weights_only=True)
    rows = [dict(last["history"][0], epoch=e, epoch_time_s=60.0) for e in (1, 2, 3)]
    miou = rows[0]["val_miou"]  # every epoch alike: the best is epoch 1
    best = dict(last, history=rows[:1], epoch=1, miou=miou, best_miou=miou)
    torch.save(best, weights / "student_none.pth")
    torch.save(
        dict(last, history=rows, epoch=3, miou=miou, best_miou=miou),
        weights / "student_none_last.pth",
    )
    assert run_script("report.py", "--out-dir", outputs, "--weights-dir", weights).returncode == 0
    assert "| --kd none | 3 | 3.0 min | 60.0 s |" in (outputs / "report.md").read_text(
        encoding="utf-8"
    )


def test_links_out_of_the_tree_and_damaged_inputs_are_listed_not_followed(trained, tmp_path):
    outputs, weights = tmp_path / "outputs", tmp_path / "weights"
    outputs.mkdir()
    weights.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("a private file elsewhere on the machine", encoding="utf-8")
    (outputs / "kd_comparison.md").symlink_to(secret)
    (outputs / "step1_fcn_resnet50.json").write_text(json.dumps({"miou": "high"}), encoding="utf-8")
    (outputs / "benchmark.json").write_text(
        json.dumps({"models": [{"model": 1}], "train_steps": []}), encoding="utf-8"
    )
    history = load_file(trained["out"], "c")
    history["history"] = [{"epoch": 1}]  # no epoch_time_s
    torch.save(history, weights / "student_none.pth")
    proc = run_script("report.py", "--out-dir", outputs, "--weights-dir", weights)
    assert proc.returncode == 0, proc.stderr
    draft = (outputs / "report.md").read_text(encoding="utf-8")
    assert "a private file" not in draft and "kd_comparison.md`: a link, not followed" in draft
    for name in ("step1_fcn_resnet50.json`: not what", "benchmark.json`: ", "history': item 0"):
        assert name in draft
