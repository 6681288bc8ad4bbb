"""lab.py: the output names the scripts share, the optimizer, the best/worst panels."""

import numpy as np
import torch
from PIL import Image

import lab
from dataset import EvalTransform, voc_dataset
from loaders import eval_loader
from metrics import evaluate
from voc import voc_palette

CPU = torch.device("cpu")


class Everywhere(torch.nn.Module):
    """Predicts one class at every pixel."""

    def __init__(self, label: int):
        super().__init__()
        self.label = label

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 21, *x.shape[-2:])
        logits[:, self.label] = 1
        return logits


def test_each_runs_panels_replace_the_previous_runs(fake_voc, tmp_path):
    """A rerun that ranks other images best and worst leaves only its own panels, which a
    report would otherwise show as this run's; each panel shows the kept prediction."""
    data = voc_dataset(fake_voc, "val", EvalTransform())
    loader = eval_loader(fake_voc, "val")
    result = evaluate(Everywhere(15), loader, CPU, progress=False, keep_predictions=True)
    kept = result["predictions"]
    first = lab.save_overlays(data, [0.1, 0.9, 0.5, 0.3], kept, 1, tmp_path, "p", "a model", True)
    second = lab.save_overlays(data, [0.9, 0.1, 0.5, 0.3], kept, 1, tmp_path, "p", "a model", True)
    assert set(first) != set(second)
    assert sorted(tmp_path.iterdir()) == sorted(second)

    panel = Image.open(second[0])
    assert "a model" in panel.text["Title"] and "SYNTHETIC" in panel.text["Title"]
    person = tuple(voc_palette()[45:48])
    assert person in {tuple(c) for c in np.asarray(panel).reshape(-1, 3)}
    assert all(np.array_equal(k.array(), np.full(k.shape, 15)) for k in kept)


def test_a_users_picture_named_like_a_panel_is_never_deleted(fake_voc, tmp_path):
    """Only the lab's panels (named so, and marked by save_png) of a previous run go."""
    data = voc_dataset(fake_voc, "val", EvalTransform())
    loader = eval_loader(fake_voc, "val")
    kept = evaluate(Everywhere(15), loader, CPU, progress=False, keep_predictions=True)
    kept = kept["predictions"]
    mine = tmp_path / "p_best1_holiday.png"
    Image.new("RGB", (4, 4)).save(mine)
    lab.save_overlays(data, [0.1, 0.9, 0.5, 0.3], kept, 1, tmp_path, "p", "a model", True)
    assert mine.is_file()


def test_the_scripts_share_one_optimizer_with_the_documented_defaults():
    config = lab.OptimConfig()
    optimizer = lab.build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 1e-4)
    adamw = lab.build_optimizer([torch.nn.Parameter(torch.zeros(1))], lab.OptimConfig("adamw"))
    assert isinstance(adamw, torch.optim.AdamW)


def test_output_paths():
    assert lab.student_path("both").as_posix() == "weights/student_both.pth"
    assert lab.last_path("w/s.pth").as_posix() == "w/s_last.pth"
    assert lab.curves_path("w/s.pth", "o").as_posix() == "o/s_curves.png"
    assert lab.log_path("w/s.pth", "o").as_posix() == "o/s_log.csv"
