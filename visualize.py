"""Drawing only: it draws what it is given (images, label maps, a training history) and never
runs a model or reads a dataset. VOC colours, prediction panels with titles and a legend, and
the training curves.

    from visualize import colorize, overlay_panel, photo_panel, plot_history, save_png

Label maps are drawn as opaque VOC colours, exactly the legend's: blending them over the image
would let the photo show through a prediction, so that a model that predicts nothing would
still seem to outline the objects.
"""

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the object API: no GUI backend, no pyplot state
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from files import atomic_path
from voc import IGNORE_INDEX, SYNTHETIC_NOTE, class_name, voc_palette

MIN_PANEL_HEIGHT = 240  # small images are enlarged to this, so that labels stay readable
MAX_PANEL_SIDE = 1024  # large photos are reduced to this in a panel (their mask keeps its size)
FONT = ImageFont.load_default(size=14)
SOFTWARE = "voc-kd-lab"  # the PNG metadata entry that marks the lab's pictures
PALETTE = voc_palette()


def text(title: str) -> str:
    """`title` as text any file takes: a file name's undecodable byte as a backslash escape."""
    return title.encode("utf-8", "backslashreplace").decode("utf-8")


def save_png(image: Image.Image, path: str | Path, title: str) -> None:
    """`image` as a PNG, atomically, with `title` in its metadata ("Title", as matplotlib
    writes it): what the picture shows, SYNTHETIC included, for a reader that cannot see it;
    and SOFTWARE, which tells the lab's pictures from others of the same name."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", text(title))
    info.add_text("Software", SOFTWARE)
    with atomic_path(path) as tmp:
        image.save(tmp, pnginfo=info)


def drawn_here(path: str | Path) -> bool:
    """Whether the PNG at `path` was drawn by save_png (its Software entry says so)."""
    try:
        with Image.open(path) as image:
            return image.text.get("Software") == SOFTWARE
    except (OSError, ValueError, AttributeError, Image.DecompressionBombError):
        return False


def colorize(mask: np.ndarray) -> Image.Image:
    """An h x w class-id array as an RGB image, each pixel exactly its class's VOC colour."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(PALETTE)
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
    """`image` under a white band holding `title`, widened when the title is longer."""
    width = max(image.width, int(FONT.getlength(title)) + 8)
    out = Image.new("RGB", (width, image.height + height), "white")
    out.paste(image, (0, height))
    ImageDraw.Draw(out).text((4, 3), title, fill="black", font=FONT)
    return out


def legend(labels: list) -> Image.Image:
    """A column of swatches, each exactly the colour colorize() gives the label, named (255:
    "void", not scored)."""
    row = 20
    image = Image.new("RGB", (170, row * len(labels) + 4), "white")
    draw = ImageDraw.Draw(image)
    for i, c in enumerate(labels):
        y = 2 + i * row
        colour = tuple(PALETTE[3 * c : 3 * c + 3])
        draw.rectangle([4, y, 4 + 14, y + 14], fill=colour, outline="black")
        name = class_name(c) + (" (not scored)" if c == IGNORE_INDEX else "")
        draw.text((24, y), name, fill="black", font=FONT)
    return image


def sized(image: Image.Image, masks: list) -> tuple:
    """Image (bilinear) and masks (nearest: labels are never blended) scaled so that the height
    is at least MIN_PANEL_HEIGHT and the longer side at most MAX_PANEL_SIDE: the titles and
    the legend, drawn at a fixed size, stay readable beside a tiny image or a 12 MP photo."""
    scale = min(max(1.0, MIN_PANEL_HEIGHT / image.height), MAX_PANEL_SIDE / max(image.size))
    if scale == 1.0:
        return image, masks
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR), [
        np.asarray(Image.fromarray(m.astype(np.uint8)).resize(size, Image.NEAREST)) for m in masks
    ]


def labels_in(*masks: np.ndarray) -> list:
    return sorted(set().union(*(np.unique(m).tolist() for m in masks)))


def overlay_panel(
    image: Image.Image, target: np.ndarray, pred: np.ndarray, title: str, synthetic: bool = False
) -> Image.Image:
    """image | ground truth | prediction, the label maps in opaque class colours, a legend of
    the labels present, each panel titled, `title` (and the SYNTHETIC mark) above."""
    image, (target, pred) = sized(image.convert("RGB"), [target, pred])
    panels = [
        with_title(image, "image"),
        with_title(colorize(target), "ground truth"),
        with_title(colorize(pred), "prediction"),
        with_title(legend(labels_in(target, pred)), "classes"),
    ]
    return with_title(side_by_side(panels), f"{title}{'   -- ' + SYNTHETIC_NOTE * synthetic}")


def photo_panel(image: Image.Image, pred: np.ndarray, title: str) -> Image.Image:
    """photo | prediction in opaque class colours | legend, under `title`."""
    image, (pred,) = sized(image.convert("RGB"), [pred])
    panels = [
        with_title(image, "photo"),
        with_title(colorize(pred), "prediction"),
        with_title(legend(labels_in(pred)), "classes"),
    ]
    return with_title(side_by_side(panels), title)


# ----------------------------------------------------------------------------- training curves

# Curves of history keys, by panel. train_ce and val_ce are the same quantity, the pixel
# cross-entropy with the labels, on the training crops and on val; the distillation terms
# are 0 when the student matches the teacher (train_kl is the KL divergence, not the soft
# cross-entropy, whose floor is the teacher's entropy).
CE_KEYS = ("train_ce", "val_ce")
KD_PREFIXES = ("train_kl", "train_feat")


def plot_history(history: list, path: Path, title: str) -> None:
    """history_figure(history, title) as a PNG at `path`, atomically, titled in its metadata."""
    fig = history_figure(history, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Title": text(title), "Software": SOFTWARE})


def history_figure(history: list, title: str) -> Figure:
    """Three panels against the epoch: cross-entropy with the labels (train and val), the
    distillation terms, val mIoU in %; integer epoch ticks, legends outside the data."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(15, 4.2))
    ax_ce, ax_kd, ax_miou = fig.subplots(1, 3)

    def draw(ax, key, **style):
        ax.plot(epochs, [row.get(key, math.nan) for row in history], marker=".", label=key, **style)

    draw(ax_ce, CE_KEYS[0])
    draw(ax_ce, CE_KEYS[1], linestyle="--")
    kd_keys = [k for k in history[-1] if k.startswith(KD_PREFIXES)]
    for key in kd_keys:  # the per-pair feature distances (train_feat_<pair>) dotted, thinner
        draw(ax_kd, key, **({"linestyle": ":", "linewidth": 1} if key.count("_") > 1 else {}))
    if not kd_keys:
        ax_kd.text(0.5, 0.5, "no distillation term", ha="center", transform=ax_kd.transAxes)
    ax_miou.plot(epochs, [100 * row["val_miou"] for row in history], marker=".", color="C3")
    ax_ce.set(xlabel="epoch", ylabel="cross-entropy (nats/pixel)", title="cross-entropy")
    ax_kd.set(
        xlabel="epoch",
        ylabel="term, before its weight",
        title="distillation terms (0 = matches the teacher)",
    )
    ax_miou.set(xlabel="epoch", ylabel="mIoU (%)", title="validation mIoU")
    for ax in (ax_ce, ax_kd):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in (ax_ce, ax_kd, ax_miou):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig
