import json

import pytest
import torch
from torch import nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from conftest import load_script
from model import Decoder, build_student, build_teacher

benchmark = load_script("benchmark")


def conv_flops(model: nn.Module, size: int) -> int:
    """An independent count: 2 x multiply-adds of every Conv2d, read off forward hooks.
    Convolutions are the only products in these three networks; the student's Decoder applies
    its 1x1 with F.conv2d to each of its inputs, so its hook counts that part."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += 2 * k * output.numel()

    def decoder_hook(module, inputs, output):
        nonlocal total
        total += 2 * output.shape[1] * sum(x.numel() for x in inputs)  # its 1x1 keeps cout

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [
        m.register_forward_hook(decoder_hook) for m in model.modules() if isinstance(m, Decoder)
    ]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total


def test_gflops_match_a_hand_count_on_a_single_convolution():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert benchmark.gflops(conv, 10, torch.device("cpu")) * 1e9 == 2 * 3 * 8 * 9 * 10 * 10


def test_benchmark_reports_parameters_flops_and_ratios_against_the_eager_student(lab_demo):
    """The demo's benchmark.py run (--no-onnx, 64 px, one run, batches of 2 crops of 64)."""
    proc = lab_demo["proc"]["benchmark.py"]
    assert proc.returncode == 0, proc.stderr
    result = json.loads(
        (lab_demo["demo"] / "outputs" / "benchmark.json").read_text(encoding="utf-8")
    )
    models = {
        "student": build_student(),
        "FCN-ResNet50 (teacher)": build_teacher("none"),
        "LR-ASPP MobileNetV3-Large": lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=21
        ),
    }
    rows = result["models"]
    assert [(r["model"], r["runtime"]) for r in rows] == [
        (name, runtime) for name in models for runtime in ("eager", "eager channels_last")
    ]
    student_ms = rows[0]["ms_per_image"]
    for row in rows:
        model = models[row["model"]]
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert round(row["gflops"] * 1e9) == conv_flops(model, 64)
        assert row["times_student"] == pytest.approx(row["ms_per_image"] / student_ms)
        assert row["mb"] > 4 * row["params"] / 1e6  # float32 weights, plus buffers
    steps = result["train_steps"]
    assert [r["kd"] for r in steps] == ["none", "response", "feature", "both", benchmark.CACHED]
    for r in steps:
        assert r["overhead_vs_none"] == pytest.approx(
            r["ms_per_step"] / steps[0]["ms_per_step"] - 1
        )
    assert result["cache_build_ms_per_image"] > 0
    assert "GFLOPs" in proc.stdout and "training step" in proc.stdout
    assert "teacher cache, built once" in proc.stdout
