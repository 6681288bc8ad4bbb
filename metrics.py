"""Segmentation metrics, the evaluation loop and speed measurement, shared by every script.

    from metrics import ConfusionMatrix, evaluate, ms_per_image

mIoU is computed from one confusion matrix accumulated over the whole split (the VOC
protocol), not as a mean of per-image scores.
"""

from cli import UserError, synchronize

import dataclasses
import datetime
import math
import os
import platform
import statistics
import time
import zlib
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import distributed
from voc import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES

PAUSE_S = 0.02  # before each function's turn, untimed (see median_ms)


class ConfusionMatrix:
    """Counts of (true class, predicted class) pixel pairs; rows are ground truth.

    With tp_c = mat[c, c], gt_c = sum of row c and pred_c = sum of column c:
        IoU_c      = tp_c / (gt_c + pred_c - tp_c)   (NaN when the class is in neither)
        mIoU       = mean of IoU_c over the classes that are not NaN
        pixel_acc  = sum_c tp_c / sum_c gt_c
        mean_acc   = mean over classes with gt_c > 0 of tp_c / gt_c
    Pixels whose target is `ignore_index` are skipped entirely.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add integer tensors of the same (any) shape: predicted and true class per pixel."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        keep = target != self.ignore_index
        n = self.num_classes
        pairs = target[keep].long() * n + pred[keep].long()
        self.mat += torch.bincount(pairs, minlength=n * n).reshape(n, n).cpu()

    def sum_across_processes(self, device: torch.device) -> None:
        """Add up the counts of every process under torchrun, in place (none without it)."""
        self.mat = distributed.total(self.mat.to(device)).cpu()

    def compute(self) -> dict:
        h = self.mat.double()
        tp, gt, pred = h.diag(), h.sum(1), h.sum(0)
        union = gt + pred - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.nan)
        return {
            "miou": _nanmean(iou),
            "iou": iou.tolist(),
            "pixel_acc": (tp.sum() / h.sum()).item() if h.sum() > 0 else math.nan,
            "mean_acc": _nanmean(acc),
        }


def _nanmean(x: torch.Tensor) -> float:
    return x.nanmean().item() if not x.isnan().all() else math.nan


def format_iou_table(iou: list, class_names: tuple = VOC_CLASSES) -> str:
    """Render per-class IoU (fractions, NaN for absent classes) as an aligned text table."""
    width = max(len(name) for name in class_names)
    lines = [f"{'class':<{width}}  IoU (%)"]
    for name, value in zip(class_names, iou):
        lines.append(f"{name:<{width}}  {'-' if math.isnan(value) else f'{100 * value:6.2f}'}")
    return "\n".join(lines)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    desc: str = "eval",
    progress: bool = True,
    keep_predictions: bool = False,
) -> dict:
    """Run `model` over an evaluation loader (loaders.collate_eval) and score it.

    Each batch is (images N x 3 x H x W zero-padded at the bottom/right, masks as a list of
    h_i x w_i label maps, image sizes before padding). The logits of image i are cropped to its
    unpadded size and upsampled bilinearly to its label's size, so every image is scored at its
    original label resolution and padded pixels never reach the metric.

    Returns ConfusionMatrix.compute() plus `loss` (pixel cross-entropy, 255 ignored, mean over
    images), `per_image_miou` (in loader order, to pick the best and worst panels) and
    `pixels`, the number of pixels scored; with keep_predictions, also `predictions`, each
    image's predicted classes as scored, compressed (Prediction): the panels then show exactly
    what was scored, without running the model again.
    Under torchrun (distributed.py), each process scores its own share of the images and the
    confusion matrices and losses are summed across processes, so mIoU and loss are those of
    the whole split; per_image_miou stays this process's own.
    """
    model.eval()
    cm = ConfusionMatrix()
    losses, per_image, predictions = [], [], []
    non_finite = torch.zeros((), dtype=torch.int64, device=device)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress)
    for images, masks, sizes in bar:
        logits = model_logits(model, images.to(device, non_blocking=True))
        non_finite += (~torch.isfinite(logits)).any().to(device)  # on the device: no sync
        for i, (mask, (h, w)) in enumerate(zip(masks, sizes)):
            target = mask.to(device).long()[None]
            out = F.interpolate(
                logits[i : i + 1, :, :h, :w],
                size=target.shape[-2:],
                mode="bilinear",
                align_corners=False,
            ).float()
            if (target != IGNORE_INDEX).any():
                losses.append(F.cross_entropy(out, target, ignore_index=IGNORE_INDEX).item())
            pred = out.argmax(1)
            cm.update(pred, target)
            single = ConfusionMatrix()
            single.update(pred, target)
            per_image.append(single.compute()["miou"])
            if keep_predictions:
                predictions.append(Prediction(pred[0]))
    loss_sum = torch.tensor([sum(losses), len(losses)], dtype=torch.float32, device=device)
    totals = torch.cat([loss_sum, non_finite.float()[None]])
    # Under torchrun: the whole split's counts, and every process learns of a bad output
    cm.sum_across_processes(device)
    distributed.total(totals)
    if totals[2] > 0:
        raise UserError(
            "the model's outputs hold NaN or infinite values: weights that are finite but not "
            "those of a working network (a negative BatchNorm variance, huge values), or a "
            "diverged run"
        )
    if cm.mat.sum() == 0:
        raise UserError(f"no {desc} image has a labelled pixel (all are 255): nothing to score")
    loss_sum = totals[:2]
    result = cm.compute()
    result["loss"] = (loss_sum[0] / loss_sum[1]).item() if loss_sum[1] > 0 else math.nan
    result["per_image_miou"] = per_image
    if keep_predictions:
        result["predictions"] = predictions
    result["pixels"] = int(cm.mat.sum())  # scored, 255 excluded
    return result


def best_and_worst(per_image_miou: list, count: int) -> tuple:
    """(best, worst): indices of the `count` highest and `count` lowest per-image mIoUs,
    best first and worst first, disjoint, NaN (no scored pixel) left out. With fewer than
    2 * count scored images the best take the upper half (rounded up), the worst the rest:
    two images give one best and one worst."""
    ranked = sorted(
        (i for i, m in enumerate(per_image_miou) if not math.isnan(m)),
        key=lambda i: per_image_miou[i],
        reverse=True,
    )
    best = ranked[: min(count, (len(ranked) + 1) // 2)]
    return best, ranked[len(best) :][::-1][:count]


class Prediction:
    """An h x w map of class ids, kept zlib-compressed (a VOC image's map: a few KB instead of
    about 190 KB), so that a whole split's predictions fit in memory."""

    def __init__(self, classes: torch.Tensor):
        self.shape = tuple(classes.shape)
        self.data = zlib.compress(classes.to(torch.uint8).cpu().numpy().tobytes())

    def array(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.data), np.uint8).reshape(self.shape)


def model_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """N x C x H x W logits; torchvision's segmentation models return them as {"out": ...}."""
    out = model(images)
    return out["out"] if isinstance(out, dict) else out


def device_name(device: torch.device) -> str:
    """The GPU's or the CPU's model name, for saying where a time was measured."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple GPU (mps, {platform.machine()})"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({torch.get_num_threads()} threads)"
    except (OSError, IndexError):
        return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall times of repeated calls, in ms: the median, and the quartiles as the spread (half
    the calls fall between them; a noisy moment moves them, not the median)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, times: list) -> "Timing":
        low, _, high = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
        return cls(statistics.median(times), low, high)

    def __str__(self) -> str:
        return f"{self.median:.1f} ({self.low:.1f}-{self.high:.1f})"


def median_ms(
    fns: dict, device: torch.device, runs: int = 20, warmup: int = 3, desc: str | None = None
) -> dict:
    """{name: Timing of fn()} for zero-argument functions.

    The functions take turns, round after round, so a slow spell of the machine hits them all
    alike; warm-up rounds come first (cuDNN autotuning, allocator). Within a round each timed
    call comes right after an untimed call of the same function, itself after an untimed
    pause: each model is timed warm, as when it runs over many images, not in whatever state
    the previous function left the caches and thread pools in (ONNX Runtime's threads keep
    spinning for a moment after a run). On a GPU (CUDA, the Apple GPU) each timed call is
    bracketed by a synchronize, because kernel launches are asynchronous. With `desc`, a
    progress bar counts the rounds.
    """
    times = {name: [] for name in fns}
    for i in tqdm(range(warmup + runs), desc=desc, disable=desc is None, dynamic_ncols=True):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)
            fn()
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if i >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: Timing.of(t) for name, t in times.items()}


@torch.inference_mode()
def ms_per_image(models: dict, device: torch.device, size: int, runs: int) -> dict:
    """{name: Timing of one forward pass on a 1 x 3 x size x size input} (batch 1)."""
    x = torch.randn(1, 3, size, size, device=device)
    return median_ms(
        {name: partial(model_logits, m.eval(), x) for name, m in models.items()}, device, runs
    )


def measure(
    model: nn.Module,
    loader,
    device: torch.device,
    size: int,
    runs: int,
    params: int,
    timing: Timing | None = None,
    keep_predictions: bool = False,
) -> dict:
    """evaluate() plus everything the report needs next to the mIoU: the caller's parameter
    count, ms/image on a 1 x 3 x size x size input with its quartiles (timed here over `runs`,
    unless `timing` was measured elsewhere, interleaved with other models), the device, the
    machine's load (a busy machine is slower), torch's version, the date."""
    result = evaluate(model, loader, device, keep_predictions=keep_predictions)
    timing = timing or ms_per_image({0: model}, device, size, runs)[0]
    result.update(
        params=params,
        ms_per_image=timing.median,
        ms_quartiles=[timing.low, timing.high],
        input_size=size,
        runs=runs,
        device=str(device),
        device_name=device_name(device),
        load=machine_load(),
        torch=torch.__version__,
        num_images=len(loader.dataset),
        date=datetime.date.today().isoformat(),
    )
    return result


def machine_load() -> float | None:
    """The 1-minute load average (processes running or waiting), where the OS gives one: with
    more than the cores, every time measured is longer. None on Windows."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def format_report(result: dict, title: str) -> str:
    """Per-class IoU table and the summary lines printed by test.py and test_pretrained.py."""
    synthetic = " -- SYNTHETIC data, not a VOC result" if result.get("synthetic") else ""
    return "\n".join(
        [
            f"== {title}{synthetic}",
            format_iou_table(result["iou"]),
            f"mIoU            {100 * result['miou']:.2f} %  ({result['num_images']} images, "
            f"split {result.get('split', '?')}){' SYNTHETIC' if synthetic else ''}",
            f"pixel accuracy  {100 * result['pixel_acc']:.2f} %",
            f"parameters      {result['params']:,d}",
            f"ms/image        {result['ms_per_image']:.1f}  (quartiles "
            f"{result['ms_quartiles'][0]:.1f}-{result['ms_quartiles'][1]:.1f}; batch 1, "
            f"{result['input_size']}x{result['input_size']}, {result['device_name']})",
        ]
    )
