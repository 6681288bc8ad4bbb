"""test_pretrained.py (Step 1), offline, on the SYNTHETIC tree. Its full run with a random
teacher is the README demo's (test_commands.py)."""

import cli

import pytest
import torch

from conftest import load_script, run_script

FAST = ("--device", "cpu", "--size", "64", "--runs", "1", "--num-workers", "0")


class Recorder(torch.nn.Module):
    """Stands in for the teacher: records the input sizes, answers background."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return {"out": torch.zeros(x.shape[0], 21, *x.shape[-2:])}


def test_step1_feeds_the_teacher_images_whose_shorter_side_is_520(fake_voc, tmp_path, monkeypatch):
    step1, recorder = load_script("test_pretrained"), Recorder()
    monkeypatch.setattr(step1, "build_teacher", lambda weights: recorder)
    step1.main(
        step1.parse_args(
            ["--data-root", str(fake_voc), "--out-dir", str(tmp_path), "--num-overlays", "0", *FAST]
        )
    )
    evaluated = recorder.sizes[:4]  # then come the timed square inputs
    assert len(evaluated) == 4 and all(min(size) == 520 for size in evaluated)


def test_ctrl_c_is_one_line_exit_130_and_no_partial_json(fake_voc, tmp_path, monkeypatch, capsys):
    step1 = load_script("test_pretrained")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(step1, "measure", interrupted)
    argv = ["--weights", "none", "--data-root", str(fake_voc), "--out-dir", str(tmp_path), *FAST]
    with pytest.raises(SystemExit) as e:
        cli.run(step1.main, lambda: step1.parse_args(argv))
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.rglob("*.png"))


def test_a_missing_data_root_is_a_clear_error_without_traceback(tmp_path):
    proc = run_script(
        "test_pretrained.py",
        "--weights",
        "none",
        "--data-root",
        tmp_path / "nowhere",
        "--device",
        "cpu",
        "--out-dir",
        tmp_path / "out",
    )
    assert proc.returncode == 1
    assert "--download" in proc.stderr and "VOCdevkit/VOC2012" in proc.stderr
    assert "Traceback" not in proc.stderr
