"""Drawing, kept apart from the data and the metric: VOC colours, overlay panels with titles
and a legend, own-photo overlays, and the training curves.

    from visualize import colorize, overlay_panel, save_overlays, plot_history
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # the object API: no GUI backend, no pyplot state
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from cli import atomic_path
from dataset import VOC_CLASSES, image_path
from metrics import model_logits

OVERLAY_ALPHA = 0.6  # weight of the label colours over a photo: readable, photo still visible
MIN_PANEL_HEIGHT = 240  # small images are enlarged to this, so that labels stay readable
FONT = ImageFont.load_default(size=14)
SYNTHETIC_NOTE = "SYNTHETIC data, not a VOC result"


def save_png(image: Image.Image, path: str | Path, title: str) -> None:
    """`image` as a PNG, atomically, with `title` in its metadata ("Title", as matplotlib
    writes it): what the picture shows, SYNTHETIC included, for a reader that cannot see it."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    with atomic_path(path) as tmp:
        image.save(tmp, pnginfo=info)


def voc_palette() -> list:
    """The VOC colour map as a flat [r0, g0, b0, r1, ...] list of 256 colours.

    For k = 0..7, bit (7 - k) of (r, g, b) is bit (3k, 3k + 1, 3k + 2) of the class id:
    1 -> (128, 0, 0), 15 (person) -> (192, 128, 128), 255 (void) -> (224, 224, 192).
    """
    palette = []
    for c in range(256):
        r = g = b = 0
        for k in range(8):
            r |= (c >> (3 * k) & 1) << (7 - k)
            g |= (c >> (3 * k + 1) & 1) << (7 - k)
            b |= (c >> (3 * k + 2) & 1) << (7 - k)
        palette += [r, g, b]
    return palette


def colorize(mask: np.ndarray) -> Image.Image:
    """An h x w class-id array as an RGB image in VOC colours."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    return image.convert("RGB")


def side_by_side(parts: list) -> Image.Image:
    """Images pasted left to right on a white canvas as tall as the tallest."""
    panel = Image.new("RGB", (sum(p.width for p in parts), max(p.height for p in parts)), "white")
    x = 0
    for part in parts:
        panel.paste(part, (x, 0))
        x += part.width
    return panel


def with_title(image: Image.Image, title: str, height: int = 22) -> Image.Image:
    """`image` under a white band holding `title`."""
    out = Image.new("RGB", (image.width, image.height + height), "white")
    out.paste(image, (0, height))
    ImageDraw.Draw(out).text((4, 3), title, fill="black", font=FONT)
    return out


def legend(classes: list) -> Image.Image:
    """A column of VOC colour swatches with the names of `classes` (class ids)."""
    palette, row = voc_palette(), 20
    image = Image.new("RGB", (150, row * len(classes) + 4), "white")
    draw = ImageDraw.Draw(image)
    for i, c in enumerate(classes):
        y = 2 + i * row
        draw.rectangle([4, y, 4 + 14, y + 14], fill=tuple(palette[3 * c : 3 * c + 3]))
        draw.text(
            (24, y), VOC_CLASSES[c] if c < len(VOC_CLASSES) else "void", fill="black", font=FONT
        )
    return image


def enlarged(image: Image.Image, masks: list) -> tuple:
    """Image (bilinear) and masks (nearest: labels are never blended) scaled up so the height
    is at least MIN_PANEL_HEIGHT."""
    scale = max(1.0, MIN_PANEL_HEIGHT / image.height)
    if scale == 1.0:
        return image, masks
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.BILINEAR), [
        np.asarray(Image.fromarray(m.astype(np.uint8)).resize(size, Image.NEAREST)) for m in masks
    ]


def overlay_panel(
    image: Image.Image, target: np.ndarray, pred: np.ndarray, title: str, synthetic: bool = False
) -> Image.Image:
    """image | ground truth blended on it | prediction blended on it, each panel titled, a
    legend of the classes present, `title` (and the SYNTHETIC mark) above."""
    image, (target, pred) = enlarged(image.convert("RGB"), [target, pred])
    panels = [
        with_title(image, "image"),
        with_title(Image.blend(image, colorize(target), OVERLAY_ALPHA), "ground truth"),
        with_title(Image.blend(image, colorize(pred), OVERLAY_ALPHA), "prediction"),
    ]
    present = sorted(set(np.unique(target).tolist()) | set(np.unique(pred).tolist()))
    body = side_by_side(panels + [with_title(legend(present), "classes")])
    return with_title(body, f"{title}{'   -- ' + SYNTHETIC_NOTE if synthetic else ''}")


def photo_overlay(image: Image.Image, pred: np.ndarray, synthetic: bool = False) -> Image.Image:
    """An own photo with its predicted classes blended on it and their legend beside it."""
    blended = Image.blend(image.convert("RGB"), colorize(pred), OVERLAY_ALPHA)
    panel = side_by_side([blended, legend(sorted(set(pred.flat)))])
    return with_title(panel, "model trained on " + SYNTHETIC_NOTE) if synthetic else panel


def save_overlays(
    model: torch.nn.Module,
    dataset,
    per_image_miou: list,
    count: int,
    out_dir: str | Path,
    prefix: str,
    device: torch.device,
    synthetic: bool = False,
) -> list:
    """Overlay panels of the `count` best and `count` worst images by per-image mIoU, as
    <out_dir>/<prefix>_{best,worst}<rank>_<image id>.png. Returns the paths written."""
    scored = [i for i, m in enumerate(per_image_miou) if not math.isnan(m)]
    ranked = sorted(scored, key=lambda i: per_image_miou[i], reverse=True)
    best = ranked[:count]
    worst = [i for i in reversed(ranked) if i not in best][:count]  # disjoint on small splits
    model.eval()
    paths = []
    for kind, picks in (("best", best), ("worst", worst)):
        for rank, index in enumerate(picks, 1):
            image, mask = dataset[index]
            with torch.inference_mode():
                logits = model_logits(model, image[None].to(device))
                logits = F.interpolate(
                    logits, size=mask.shape[-2:], mode="bilinear", align_corners=False
                )
            source = image_path(dataset, index)
            pred = logits.argmax(1)[0].cpu().numpy()
            title = (
                f"{prefix}: {source.stem}, {kind} {rank}, mIoU {100 * per_image_miou[index]:.1f}%"
            )
            paths.append(Path(out_dir) / f"{prefix}_{kind}{rank}_{source.stem}.png")
            panel = overlay_panel(Image.open(source), mask.numpy(), pred, title, synthetic)
            save_png(panel, paths[-1], title + (f" ({SYNTHETIC_NOTE})" if synthetic else ""))
    return paths


def plot_history(history: list, path: Path, title: str) -> None:
    """Three panels against the epoch: the total losses (train and val), the train loss's
    terms, and the val mIoU; integer epoch ticks, legends outside the data."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(15, 4.2))
    ax_total, ax_terms, ax_miou = fig.subplots(1, 3)

    def draw(ax, key, **style):
        ax.plot(epochs, [row.get(key, math.nan) for row in history], marker=".", label=key, **style)

    draw(ax_total, "train_loss")
    draw(ax_total, "val_loss", linestyle="--")
    terms = [k for k in history[-1] if k.startswith("train_") and k != "train_loss"]
    for key in terms:  # the per-pair feature distances (train_feat_<pair>) dashed, thinner
        draw(ax_terms, key, **({"linestyle": ":", "linewidth": 1} if key.count("_") > 1 else {}))
    ax_miou.plot(epochs, [100 * row["val_miou"] for row in history], marker=".", color="C3")
    ax_total.set(xlabel="epoch", ylabel="loss", title="total loss")
    ax_terms.set(xlabel="epoch", ylabel="loss term", title="train loss, term by term")
    ax_miou.set(xlabel="epoch", ylabel="mIoU (%)", title="validation mIoU")
    for ax in (ax_total, ax_terms):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in (ax_total, ax_terms, ax_miou):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Title": title})
