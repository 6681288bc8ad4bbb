"""test.py: evaluating checkpoints, the KD comparison table, bad checkpoints."""

import json

from conftest import RESULT_KEYS, run_script

FAST = ("--device", "cpu", "--size", "64", "--runs", "1", "--num-workers", "0")


def test_a_checkpoint_is_scored_timed_and_illustrated(trained, fake_voc, tmp_path):
    proc = run_script(
        "test.py",
        "--checkpoint",
        trained["out"],
        "--data-root",
        fake_voc,
        "--num-overlays",
        "1",
        "--out",
        tmp_path,
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    for text in ("mIoU", "parameters", "ms/image", "SYNTHETIC"):
        assert text in proc.stdout
    result = json.loads((tmp_path / "test_student_none.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert result["synthetic"] is True and result["num_images"] == 4 and len(result["iou"]) == 21
    overlays = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert len(overlays) == 2 and overlays[0].startswith("student_none_best1_")


def test_compare_writes_one_row_per_checkpoint_plus_the_teacher(trained, fake_voc, tmp_path):
    copy = tmp_path / "student_copy.pth"
    copy.write_bytes(trained["out"].read_bytes())
    (tmp_path / "step1_fcn_resnet50.json").write_text(
        json.dumps(
            {
                "miou": 0.5,
                "params": 32957013,
                "ms_per_image": 100.0,
                "input_size": 520,
                "device_name": "some CPU",
                "synthetic": True,
            }
        )
    )
    proc = run_script(
        "test.py",
        "--compare",
        trained["out"],
        copy,
        "--data-root",
        fake_voc,
        "--limit",
        "2",
        "--num-overlays",
        "1",
        "--out",
        tmp_path,
        *FAST,
    )
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
    proc = run_script(
        "test.py", "--checkpoint", tmp_path / "bad.pth", "--data-root", fake_voc, *FAST
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot read checkpoint {tmp_path / 'bad.pth'}: corrupt or not a PyTorch file "
        "(UnpicklingError)"
    ]


def test_own_photos_are_segmented_and_unreadable_files_skipped(trained, fake_voc, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    jpgs = sorted((fake_voc / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))[:2]
    for jpg in jpgs:
        (photos / jpg.name).write_bytes(jpg.read_bytes())
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photos / "notes.txt").write_text("not an image, not even tried")
    out = tmp_path / "out"
    proc = run_script("test.py", "--checkpoint", trained["out"], "--images", photos,
                      tmp_path / "missing.png", "--out", out, "--device", "cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and "broken.jpg" in proc.stderr and "missing.png" in proc.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{j.stem}_{kind}.png" for j in jpgs for kind in ("mask", "overlay"))
    from PIL import Image

    mask = Image.open(out / f"{jpgs[0].stem}_mask.png")
    assert mask.size == Image.open(jpgs[0]).size
    overlay = Image.open(out / f"{jpgs[0].stem}_overlay.png")
    assert overlay.width > mask.width  # the legend sits beside the blended image


def test_images_alone_are_refused_without_a_checkpoint(tmp_path):
    proc = run_script("test.py", "--compare", "a.pth", "--images", tmp_path)
    assert proc.returncode != 0 and "--images goes with --checkpoint" in proc.stderr
