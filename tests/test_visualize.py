"""visualize.py: what a student sees in the pictures."""

import numpy as np
import pytest
from PIL import Image

from visualize import colorize, history_figure, legend, overlay_panel, photo_panel
from voc import IGNORE_INDEX, voc_palette

PALETTE = np.array(voc_palette()).reshape(256, 3)


def scene(h: int = 240, w: int = 200):
    """An image painted in class colours (as the synthetic ellipses are), its labels with a
    void band, and a prediction that has nothing to do with either."""
    target = np.zeros((h, w), np.uint8)
    target[40:160, 30:120] = 2  # bicycle
    target[40:160, 29] = IGNORE_INDEX
    image = Image.fromarray(PALETTE[target].astype(np.uint8))
    pred = np.full((h, w), 15, np.uint8)  # person everywhere
    pred[:, : w // 2] = 0
    return image, target, pred


def test_the_prediction_panel_is_exactly_the_palette_colours_of_the_predicted_classes():
    """Plant: blend the image into the prediction; the bicycle painted in the photo then shows
    through a prediction that never says bicycle."""
    image, target, pred = scene()
    panel = np.asarray(overlay_panel(image, target, pred, "t"))
    h, w = pred.shape
    title = 22  # the figure's title band, then each panel's own
    drawn = panel[2 * title : 2 * title + h, 2 * w : 3 * w]
    assert np.array_equal(drawn, PALETTE[pred])
    truth = panel[2 * title : 2 * title + h, w : 2 * w]
    assert np.array_equal(truth, PALETTE[target])  # void drawn in its own colour


def test_colorize_gives_the_legend_colour_of_every_label():
    labels = [0, 2, 15, IGNORE_INDEX]
    swatches = np.asarray(legend(labels))
    for row, label in enumerate(labels):
        y = 2 + 20 * row + 7  # the middle of the swatch
        assert tuple(swatches[y, 11]) == tuple(PALETTE[label])
        assert tuple(np.asarray(colorize(np.array([[label]])))[0, 0]) == tuple(PALETTE[label])


def history(kd_terms: bool) -> list:
    rows = []
    for epoch in (1, 2, 3):
        row = {
            "epoch": epoch,
            "train_loss": 15.0 - epoch,
            "train_ce": 3.0 - 0.5 * epoch,
            "val_ce": 3.1 - 0.4 * epoch,
            "val_miou": 0.1 * epoch,
        }
        if kd_terms:
            row |= {"train_kl": 0.5 / epoch, "train_feat": 2.0 - 0.1 * epoch}
        rows.append(row)
    return rows


def curves(ax) -> dict:
    return {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}


def test_train_and_val_curves_are_the_same_quantity():
    """Plant: plot the total loss (CE + tau^2 KL + ...) against val CE."""
    rows = history(kd_terms=True)
    ce, kd, miou = history_figure(rows, "t").axes[:3]
    assert curves(ce) == {
        "train_ce": [r["train_ce"] for r in rows],
        "val_ce": [r["val_ce"] for r in rows],
    }
    assert curves(kd) == {
        "train_kl": [r["train_kl"] for r in rows],
        "train_feat": [r["train_feat"] for r in rows],
    }
    assert "0 = matches the teacher" in kd.get_title()
    assert list(miou.get_lines()[0].get_ydata()) == pytest.approx([10.0, 20.0, 30.0])
    assert miou.get_ylabel() == "mIoU (%)"


def test_without_distillation_the_middle_panel_says_so():
    _, kd, _ = history_figure(history(kd_terms=False), "t").axes[:3]
    assert not kd.get_lines() and "no distillation term" in kd.texts[0].get_text()


def test_a_large_photos_panel_is_reduced_so_its_titles_read_and_a_tiny_one_enlarged():
    """A 12 MP photo drawn at its size would put 14-pixel titles on a 6000-pixel-wide panel."""
    big = Image.new("RGB", (4032, 3024))
    panel = photo_panel(big, np.zeros((3024, 4032), np.uint8), "a photo")
    assert max(panel.size) <= 3 * 1024 and panel.height <= 1024 + 50
    tiny = photo_panel(Image.new("RGB", (40, 30)), np.zeros((30, 40), np.uint8), "tiny")
    assert tiny.height >= 240
