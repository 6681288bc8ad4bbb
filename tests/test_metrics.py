from cli import UserError

import io
import math
import platform

import pytest
import torch
from torch import nn

import metrics
from loaders import collate_eval, eval_loader
from metrics import ConfusionMatrix, evaluate, format_iou_table, median_ms
from model import build_student
from voc import VOC_CLASSES

# target 255 pixel is ignored whatever its prediction; class 3 is absent from both.
TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [2, 2, 0]])


def test_hand_computed_case_with_ignored_pixel_and_absent_class():
    cm = ConfusionMatrix(num_classes=4)
    cm.update(PRED, TARGET)
    expected = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.mat, expected)
    r = cm.compute()
    # IoU_c = tp / (gt + pred - tp): 1/(2+1-1), 1/(2+2-1), 1/(1+2-1), absent
    assert r["iou"][:3] == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert math.isnan(r["iou"][3])
    assert r["miou"] == pytest.approx(4 / 9)
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    assert r["mean_acc"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)


def test_class_only_in_prediction_counts_as_zero_iou():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    r = cm.compute()
    assert r["iou"][0] == pytest.approx(1 / 2) and r["iou"][2] == 0.0
    assert math.isnan(r["iou"][1])
    assert r["miou"] == pytest.approx(1 / 4)


def test_perfect_prediction_scores_one():
    target = torch.randint(0, 21, (2, 5, 7))
    target[0, 0, :3] = 255
    cm = ConfusionMatrix()
    cm.update(target.clone(), target)
    r = cm.compute()
    assert r["miou"] == 1.0 and r["pixel_acc"] == 1.0 and r["mean_acc"] == 1.0


def test_all_wrong_prediction_scores_zero():
    target = torch.tensor([[0, 1], [1, 0]])
    cm = ConfusionMatrix(num_classes=2)
    cm.update(1 - target, target)
    r = cm.compute()
    assert r["iou"] == [0.0, 0.0] and r["miou"] == 0.0 and r["pixel_acc"] == 0.0


def test_accumulated_updates_equal_one_update_over_everything():
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 21, (3, 8, 9), generator=g) for _ in range(4)]
    targets = [torch.randint(0, 22, (3, 8, 9), generator=g) for _ in range(4)]
    targets = [torch.where(t == 21, 255, t) for t in targets]
    parts, whole = ConfusionMatrix(), ConfusionMatrix()
    for p, t in zip(preds, targets):
        parts.update(p, t)
    whole.update(torch.cat(preds), torch.cat(targets))
    assert torch.equal(parts.mat, whole.mat)
    assert parts.mat.sum() == sum((t != 255).sum() for t in targets)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        ConfusionMatrix().update(torch.zeros(2, 3), torch.zeros(3, 2))


def test_iou_table_names_every_class_and_marks_absent_ones():
    iou = [0.5] * 20 + [math.nan]
    table = format_iou_table(iou)
    assert all(name in table for name in VOC_CLASSES)
    assert "50.00" in table and table.splitlines()[-1].split() == ["tvmonitor", "-"]


class PixelwiseModel(nn.Module):
    """A 1x1 convolution: each pixel's logits depend on that pixel only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 21, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_median_ms_times_each_function_warm_and_in_turns(monkeypatch, device):
    """A fake clock: every untimed call costs 100 s, timed ones their listed seconds. Each turn
    starts with the pause, and on a GPU, CUDA or the Apple GPU's (a device name is enough, no
    GPU is used), each call is followed by a synchronisation, so that the timed one ends when
    its kernels do."""
    clock, calls = [0.0], []
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(metrics.time, "sleep", lambda seconds: calls.append(f"pause {seconds}"))
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda device: calls.append("sync"))

    def function(name: str, timed_costs: list):
        costs = iter(c for t in [0.5] + timed_costs for c in (100, t))  # warm-up round first

        def call():
            calls.append(name)
            clock[0] += next(costs)

        return call

    fns = {"a": function("a", [0.001, 0.003, 0.002]), "b": function("b", [0.01, 0.05, 0.04])}
    times = median_ms(fns, torch.device(device), runs=3, warmup=1)
    assert {k: t.median for k, t in times.items()} == pytest.approx({"a": 2.0, "b": 40.0})
    assert (times["a"].low, times["a"].high) == pytest.approx((1.0, 3.0))  # quartiles of 1, 3, 2
    sync = ["sync"] if device != "cpu" else []
    turn = [f"pause {metrics.PAUSE_S}", "{}", *sync, "{}", *sync]
    assert calls == [c.format(name) for name in "ab" for c in turn] * 4


def test_padded_batches_score_exactly_like_batch_of_one():
    g = torch.Generator().manual_seed(1)
    samples = [
        (torch.randn(3, h, w, generator=g), torch.randint(0, 21, (h, w), generator=g))
        for h, w in ((5, 7), (9, 4), (6, 6))
    ]
    model = PixelwiseModel()
    one = evaluate(model, [collate_eval([s]) for s in samples], torch.device("cpu"))
    padded = evaluate(model, [collate_eval(samples)], torch.device("cpu"))
    assert one["miou"] == padded["miou"] and one["per_image_miou"] == padded["per_image_miou"]
    assert one["loss"] == pytest.approx(padded["loss"])


@pytest.mark.parametrize(
    "scores, count, best, worst",
    [
        ([0.2, 0.9], 3, [1], [0]),  # two images: one best, one worst
        ([0.5, 0.1, 0.9, 0.3], 2, [2, 0], [1, 3]),
        ([0.5, float("nan"), 0.1, 0.9], 1, [3], [2]),  # an image with no scored pixel is skipped
        ([0.4, 0.6, 0.2], 3, [1, 0], [2]),
        ([0.7], 2, [0], []),
    ],
)
def test_best_and_worst_are_disjoint_ranked_and_both_present_from_two_images(
    scores, count, best, worst
):
    assert metrics.best_and_worst(scores, count) == (best, worst)


def test_finite_but_absurd_weights_are_an_error_not_an_all_background_score(fake_voc):
    """A negative BatchNorm variance is finite, and gives NaN logits: argmax would read them
    as background everywhere, scored as a real (poor) mIoU."""
    model = build_student()
    model.aspp.project[1].running_var.fill_(-1.0)
    loader = eval_loader(fake_voc, "val", limit=1)  # one bad batch is enough
    with pytest.raises(UserError, match="outputs hold NaN or infinite values"):
        evaluate(model, loader, torch.device("cpu"), progress=False)


def test_a_class_of_a_single_pixel_predicted_right_has_iou_one():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 0, 2]), torch.tensor([0, 0, 2]))  # class 2: one pixel, union 1
    iou = cm.compute()["iou"]
    assert iou[0] == iou[2] == 1.0 and math.isnan(iou[1]) and cm.compute()["miou"] == 1.0


def test_a_single_scored_pixel_gives_a_pixel_accuracy():
    for pred, accuracy in ((1, 1.0), (0, 0.0)):
        cm = ConfusionMatrix(num_classes=2)
        cm.update(torch.tensor([pred, 0]), torch.tensor([1, 255]))
        assert cm.compute()["pixel_acc"] == accuracy


def test_a_single_image_has_a_loss_its_own_cross_entropy():
    """What train.py logs as val CE with --limit-val 1."""
    g = torch.Generator().manual_seed(2)
    image, mask = torch.randn(3, 5, 6, generator=g), torch.randint(0, 21, (5, 6), generator=g)
    mask[0] = 255
    model = PixelwiseModel()
    result = evaluate(model, [collate_eval([(image, mask)])], torch.device("cpu"), progress=False)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(image[None]), mask[None], ignore_index=255)
    assert result["loss"] == pytest.approx(expected.item())


class LowResolution(torch.nn.Module):
    """Fixed 1 x 3 x 2 x 2 logits for any input: evaluate() must upsample them to the label."""

    logits = torch.tensor(
        [[[[2.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [1.0, 0.0]], [[1.0, 1.0], [2.0, 2.0]]]]
    )

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_evaluate_scores_logits_upsampled_bilinearly_without_aligned_corners():
    """loss and per-image mIoU of a 5 x 7 label from 2 x 2 logits, by hand: bilinear,
    align_corners=False (as the models themselves upsample), 255 ignored."""
    target = torch.randint(0, 3, (5, 7))
    target[0, 0] = 255
    loader = [(torch.zeros(1, 3, 5, 7), [target], [(5, 7)])] * 2  # the loss: a mean of two
    result = evaluate(LowResolution(), loader, torch.device("cpu"), progress=False)
    up = torch.nn.functional.interpolate(
        LowResolution.logits, size=(5, 7), mode="bilinear", align_corners=False
    )
    loss = torch.nn.functional.cross_entropy(up, target[None].long(), ignore_index=255)
    assert result["loss"] == pytest.approx(loss.item(), rel=1e-6)
    single = ConfusionMatrix()
    single.update(up.argmax(1), target[None])
    assert result["per_image_miou"] == [pytest.approx(single.compute()["miou"])] * 2
    assert result["pixels"] == 2 * 34


def test_the_printed_report_shows_the_numbers_in_percent():
    result = {
        "iou": [0.5, 1 / 3] + [math.nan] * 19,
        "miou": 4 / 9,
        "pixel_acc": 0.6,
        "params": 1035733,
        "ms_per_image": 12.34,
        "ms_quartiles": [12.0, 12.5],
        "input_size": 520,
        "num_images": 7,
        "split": "val",
        "device_name": "a CPU",
        "synthetic": True,
    }
    text = metrics.format_report(result, "the title")
    assert "mIoU            44.44 %  (7 images, split val) SYNTHETIC" in text
    assert "pixel accuracy  60.00 %" in text and "parameters      1,035,733" in text
    assert "ms/image        12.3  (quartiles 12.0-12.5; batch 1, 520x520, a CPU)" in text
    assert "\nbackground    50.00\naeroplane     33.33\n" in text
    assert text.startswith("== the title -- SYNTHETIC data")


@pytest.mark.parametrize(
    "cpuinfo, name",
    [
        ("processor\t: 0\nmodel name\t: Some CPU: 8-Core @ 2GHz\n", "Some CPU: 8-Core @ 2GHz"),
        ("processor\t: 0\n", platform.processor() or platform.machine()),  # no model name
    ],
)
def test_the_cpu_is_named_by_cpuinfos_model_name_with_the_threads(monkeypatch, cpuinfo, name):
    monkeypatch.setattr(metrics, "open", lambda path, **kw: io.StringIO(cpuinfo), raising=False)
    threads = torch.get_num_threads()
    assert metrics.device_name(torch.device("cpu")) == f"{name} ({threads} threads)"
