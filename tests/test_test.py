"""test.py: evaluating checkpoints (.pth, .onnx and .ort), the KD comparison table, own photos, bad
input."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import RESULT_KEYS, checkpoint_of, load_script, run_script, visible
from model import build_student
from voc import voc_palette

FAST = ("--device", "cpu", "--size", "64", "--runs", "1", "--num-workers", "0")
PERSON = 15


def test_a_checkpoint_is_scored_timed_and_illustrated(trained, fake_voc, tmp_path):
    proc = run_script(
        "test.py",
        "--checkpoint",
        trained["out"],
        "--data-root",
        fake_voc,
        "--num-overlays",
        "1",
        "--out-dir",
        tmp_path,
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    for text in ("mIoU", "parameters", "ms/image", "SYNTHETIC", "wrote"):
        assert text in proc.stdout
    result = json.loads((tmp_path / "test_student_none.json").read_text(encoding="utf-8"))
    assert RESULT_KEYS <= set(result)
    assert result["synthetic"] is True and result["num_images"] == 4 and len(result["iou"]) == 21
    overlays = [p.name for p in visible(tmp_path / "overlays")]
    assert len(overlays) == 2 and overlays[0].startswith("student_none_best1_")
    assert all(str(tmp_path / "overlays" / name) in proc.stdout for name in overlays)


def test_best_and_worst_overlays_are_the_best_and_worst_images(trained, fake_voc, tmp_path):
    proc = run_script(
        "test.py",
        "--checkpoint",
        trained["out"],
        "--data-root",
        fake_voc,
        "--num-overlays",
        "2",
        "--out-dir",
        tmp_path,
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "test_student_none.json").read_text(encoding="utf-8"))
    val = (
        (fake_voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt")
        .read_text(encoding="utf-8")
        .split()
    )
    score = {name: s for name, s in zip(val, result["per_image_miou"]) if s is not None}
    assert max(score.values()) > min(score.values())  # else any order would pass

    def picked(kind):
        [name] = [p.stem for p in (tmp_path / "overlays").glob(f"student_none_{kind}1_*.png")]
        return score[name.split("1_", 1)[1]]

    assert picked("best") == max(score.values()) and picked("worst") == min(score.values())


def test_compare_times_together_and_lists_unreadable_inputs(trained, fake_voc, tmp_path):
    copy = tmp_path / "student_copy.pth"
    copy.write_bytes(trained["out"].read_bytes())
    (tmp_path / "broken.pth").write_text("not a checkpoint", encoding="utf-8")
    (tmp_path / "step1_fcn_resnet50.json").write_text(
        json.dumps(
            {
                "miou": 0.5,
                "params": 32957013,
                "ms_per_image": 100.0,
                "ms_quartiles": [95.0, 105.0],
                "input_size": 520,
                "num_images": 2,
                "device_name": "some CPU",
                "synthetic": True,
                "iou": [0.5] * 21,
                "split": "val",
                "date": "2026-12-07",
            }
        ),
        encoding="utf-8",
    )
    proc = run_script(
        "test.py",
        "--compare",
        trained["out"],
        tmp_path / "broken.pth",
        copy,
        "--data-root",
        fake_voc,
        "--limit",
        "2",
        "--num-overlays",
        "1",
        "--out-dir",
        tmp_path,
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "kd_comparison.md").read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 3  # header, two students, the teacher
    assert "SYNTHETIC" in table and "FCN-ResNet50 teacher" in rows[-1] and "50.00" in rows[-1]
    assert "interleaved" in table and "broken.pth" in table.split("could not be read")[1]
    data = json.loads((tmp_path / "kd_comparison.json").read_text(encoding="utf-8"))
    assert [s["checkpoint"] for s in data["students"]] == [str(trained["out"]), str(copy)]
    assert data["students"][0]["miou"] == data["students"][1]["miou"]  # same weights, same score
    # one network, one time: the same architecture is timed once for every student
    first, second = data["students"]
    assert (first["ms_per_image"], first["ms_quartiles"]) == (
        second["ms_per_image"],
        second["ms_quartiles"],
    )


@pytest.mark.parametrize(
    "content, message, run",
    [
        (b"not a checkpoint", "corrupt or not a PyTorch file (UnpicklingError)", run_script),
        (
            {**checkpoint_of(build_student()), "model": {"x": torch.zeros(1)}},
            "different architecture (Missing key(s)",
            run_script,
        ),
    ],
    ids=["damaged", "foreign"],
)
def test_a_bad_checkpoint_is_one_error_line_before_the_data_is_read(
    tmp_path, content, message, run
):
    path = tmp_path / "bad.pth"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    proc = run(
        "test.py",
        "--checkpoint",
        path,
        "--data-root",
        tmp_path / "no_data",
        *FAST,
        "--out-dir",
        tmp_path,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0] and "not found" not in lines[0]


def test_a_nan_checkpoint_is_refused(trained, tmp_path):
    ckpt = torch.load(trained["out"], weights_only=True)
    ckpt["model"]["classifier.1.weight"][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pth")
    proc = run_script("test.py", "--checkpoint", tmp_path / "nan.pth", *FAST, "--out-dir", tmp_path)
    assert (
        proc.returncode == 1 and "NaN or infinite" in proc.stderr and "Traceback" not in proc.stderr
    )


@pytest.fixture
def person_checkpoint(trained, tmp_path):
    """The trained student with its classifier biased hard toward `person`."""
    ckpt = torch.load(trained["out"], weights_only=True)
    ckpt["model"]["classifier.1.bias"][PERSON] = 1000.0
    torch.save(ckpt, tmp_path / "person.pth")
    return tmp_path / "person.pth"


def exif_rotated_jpeg(path, width: int = 40, height: int = 24) -> None:
    """A width x height JPEG whose EXIF says: rotate 90 degrees to display (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (width, height), (90, 60, 30)).save(path, exif=exif)


def test_own_photos_give_masks_of_the_predicted_class_in_display_orientation(
    person_checkpoint, tmp_path
):
    photos = tmp_path / "photos"
    photos.mkdir()
    exif_rotated_jpeg(photos / "phone.jpg")
    Image.new("RGB", (30, 20), "white").save(photos / "dup.jpg")
    Image.new("RGB", (30, 20), "black").save(photos / "dup.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photos / "notes.txt").write_text("not an image, not even tried", encoding="utf-8")
    os.mkfifo(photos / "fifo.jpg")  # would block a reader forever
    Image.new("1", (10_000, 7_000)).save(photos / "huge.png")  # 70 megapixels, 1 bit each
    more = tmp_path / "more"  # a second folder whose photo has the same name
    more.mkdir()
    Image.new("RGB", (30, 20), "white").save(more / "dup.jpg")
    out = tmp_path / "out"
    proc = run_script(
        "test.py",
        "--checkpoint",
        person_checkpoint,
        "--images",
        photos,
        tmp_path / "missing.png",
        "--images",
        more,
        "--out-dir",
        out,
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    for name in (
        "broken.jpg",
        "missing.png",
        "fifo.jpg: not a regular file",
        "huge.png: 10000x7000 pixels",
        "notes.txt: not a .jpg",
    ):
        assert name in proc.stderr
    written = [p.name for p in visible(out / "photos")]
    # the checkpoint was trained on SYNTHETIC data; the second dup.jpg does not overwrite the first
    stems = ("dup_jpg", "dup_png", "phone_jpg", "dup_jpg_2")
    assert written == sorted(f"{s}_SYNTHETIC_{k}.png" for s in stems for k in ("mask", "overlay"))
    # A rerun given its own output folder too: its masks and overlays are not segmented again.
    again = run_script(
        "test.py",
        "--checkpoint",
        person_checkpoint,
        "--images",
        more,
        out / "photos",
        "--out-dir",
        out,
        "--device",
        "cpu",
    )
    assert again.returncode == 0 and "_SYNTHETIC_mask.png: written by test.py" in again.stderr
    assert [p.name for p in visible(out / "photos")] == written
    mask = Image.open(out / "photos" / "phone_jpg_SYNTHETIC_mask.png")
    title = mask.text["Title"]
    assert "SYNTHETIC" in title and "phone.jpg" in title and str(person_checkpoint) in title
    assert mask.size == (24, 40)  # turned as the EXIF orientation says
    colours = {tuple(c) for c in np.asarray(mask).reshape(-1, 3)}
    assert colours == {tuple(voc_palette()[3 * PERSON : 3 * PERSON + 3])}


def test_test_py_on_the_onnx_and_mobile_files_scores_like_the_pth(export_run, tmp_path):
    for path in (export_run["checkpoint"], export_run["onnx"], export_run["ort"]):
        proc = run_script(
            "test.py",
            "--checkpoint",
            path,
            "--data-root",
            export_run["data"],
            "--num-overlays",
            "1",
            "--out-dir",
            tmp_path,
            *FAST,
        )
        assert proc.returncode == 0, proc.stderr
    pth, onnx, ort = (
        json.loads((tmp_path / f"test_student_response{end}.json").read_text(encoding="utf-8"))
        for end in ("", "_onnx", "_ort")
    )
    assert onnx["runtime"] == ort["runtime"] == "onnxruntime" and pth["runtime"] == "pytorch"
    for exported in (onnx, ort):
        assert exported["miou"] == pytest.approx(pth["miou"], abs=1e-9)
        assert exported["params"] == pth["params"] and exported["kd"] == "response"
        assert exported["teacher_weights"] == pth["teacher_weights"] == "none"  # marked RANDOM


def test_comparison_table_names_each_kd_method():
    test = load_script("test")
    row = {
        "kd": "feature",
        "miou": 0.25,
        "params": 10,
        "ms_per_image": 1.5,
        "input_size": 64,
        "device_name": "a CPU",
        "checkpoint": "w.pth",
        "split": "val",
        "num_images": 4,
    }
    assert "| feature-based | 25.00 | 10 | 1.5 (1.5-1.5) | 64x64 | a CPU | w.pth |" in (
        test.comparison_markdown([row], None, [])
    )


def test_images_alone_are_refused_without_a_checkpoint(tmp_path):
    proc = run_script("test.py", "--compare", "a.pth", "--images", tmp_path)
    assert proc.returncode != 0 and "--images goes with --checkpoint" in proc.stderr


def test_a_16_bit_grey_photo_is_scaled_not_clipped_to_white(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray(np.full((20, 30), 32768, np.uint16)).save(path)
    photo = load_script("test").read_photo(path)
    assert photo.mode == "RGB" and set(np.asarray(photo).flat) == {127}


def test_two_checkpoints_that_would_share_their_results_are_refused(trained, tmp_path):
    """a/s.pth and b/s.pth would both write test_s.json and its panels."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "s.pth").write_bytes(trained["out"].read_bytes())
    argv = ["--compare", tmp_path / "a" / "s.pth", tmp_path / "b" / "s.pth", "--out-dir", tmp_path]
    proc = run_script("test.py", *argv, *FAST)
    assert proc.returncode == 1 and "would both write" in proc.stderr
    assert not list(tmp_path.glob("*.json"))
