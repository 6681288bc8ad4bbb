"""A SYNTHETIC dataset in the exact VOC (and SBD) layout, for offline runs and the tests.

    python dataset.py --fake-voc data_fake --num-images 8     # calls make_fake_voc

Ellipses of random classes on a grey background. Every tree carries voc.SYNTHETIC_MARKER,
which every script reads to label its outputs SYNTHETIC: no number measured on it is a VOC
result.
"""

from cli import UserError

import math
from pathlib import Path

import numpy as np
from PIL import Image

from voc import (
    COMPLETE_MARKER,
    IGNORE_INDEX,
    NUM_CLASSES,
    SBD,
    SYNTHETIC_MARKER,
    VOC,
    voc_palette,
)


def fake_sample(rng: np.random.Generator, void_edges: bool = True) -> tuple:
    """One SYNTHETIC image and its label map: 1-3 ellipses of random classes, each drawn in
    its class colour plus noise on a grey background, with a 255 band on every object edge
    as VOC's annotations have (SBD's have none: void_edges=False).
    Returns (RGB uint8 h x w x 3, uint8 h x w)."""
    h, w = rng.integers(48, 97, size=2)
    mask = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for cls in rng.integers(1, NUM_CLASSES, size=rng.integers(1, 4)):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.15, 0.35) * h, rng.uniform(0.15, 0.35) * w
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = cls
    palette = np.array(voc_palette(), np.float32).reshape(256, 3)
    colours = np.where(mask[..., None] > 0, palette[mask], 128.0)
    image = np.clip(colours + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    if not void_edges:
        return image, mask
    padded = np.pad(mask, 1, mode="edge")
    edge = np.zeros_like(mask, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + h, dx : dx + w] != mask
    mask[edge] = IGNORE_INDEX
    return image, mask


def make_fake_voc(
    data_root: str | Path, num_images: int = 8, seed: int = 0, with_sbd: bool = False
) -> Path:
    """Write a SYNTHETIC dataset in exact VOC layout under data_root/VOCdevkit/VOC2012:
    JPEGImages/*.jpg, SegmentationClass/*.png (palette PNGs), ImageSets/Segmentation/
    {train,val}.txt (first half train, rest val) and the SYNTHETIC marker; with_sbd adds
    a SYNTHETIC SBD tree beside it (make_fake_sbd). Refuses any VOC or SBD tree, even a
    partial one, that it did not make."""
    voc = Path(data_root) / VOC.subdir
    for tree in (voc, Path(data_root) / SBD.subdir):  # each tree holds its own marker
        if tree.exists() and not (tree / SYNTHETIC_MARKER).exists():
            raise UserError(
                f"{tree} holds data that --fake-voc did not make; choose another "
                "folder for --fake-voc"
            )
    try:
        return write_fake_voc(data_root, num_images, np.random.default_rng(seed), with_sbd)
    except OSError as e:
        raise UserError(f"cannot write the synthetic dataset under {data_root}: {e}") from None


def write_fake_voc(data_root, num_images: int, rng: np.random.Generator, with_sbd: bool) -> Path:
    voc = Path(data_root) / VOC.subdir
    voc.mkdir(parents=True, exist_ok=True)
    # The marker first: a tree cut short is still recognised as ours, and may be remade.
    (voc / SYNTHETIC_MARKER).write_text(
        "SYNTHETIC data made by `dataset.py --fake-voc`; no number measured on it is a VOC "
        "result.\n",
        encoding="utf-8",
    )
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"fake_{i:06d}" for i in range(num_images)]
    for name in ids:
        image, mask = fake_sample(rng)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        label = Image.fromarray(mask, mode="P")
        label.putpalette(voc_palette())
        label.save(voc / "SegmentationClass" / f"{name}.png")
    n_train = math.ceil(num_images / 2)
    for split, names in (("train", ids[:n_train]), ("val", ids[n_train:])):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
            "\n".join(names) + "\n", encoding="utf-8"
        )
    if with_sbd:
        make_fake_sbd(data_root, ids[0], ids[n_train], num_images, rng)
    (voc / COMPLETE_MARKER).write_text("written whole by dataset.py --fake-voc\n", encoding="utf-8")
    return voc


def make_fake_sbd(
    data_root: str | Path, voc_train_id: str, voc_val_id: str, num_images: int, rng
) -> Path:
    """Write a SYNTHETIC SBD tree in its real layout under data_root/benchmark_RELEASE/dataset:
    img/*.jpg, cls/*.mat (GTcls.Segmentation, labels 0-20 without 255), train.txt, val.txt.
    Like the real SBD, it shares an image with VOC train and one with VOC val (in its train
    split), so train_aug_dataset has both overlaps to resolve."""
    from scipy.io import savemat  # only SBD's .mat labels need scipy

    sbd = Path(data_root) / SBD.subdir
    for sub in ("img", "cls"):
        (sbd / sub).mkdir(parents=True, exist_ok=True)
    (sbd / SYNTHETIC_MARKER).write_text(
        "SYNTHETIC SBD made by `dataset.py --fake-voc --with-sbd`\n", encoding="utf-8"
    )
    new = [f"fake_sbd_{i:06d}" for i in range(num_images)]
    for name in new + [voc_train_id, voc_val_id]:
        image, mask = fake_sample(rng, void_edges=False)
        Image.fromarray(image).save(sbd / "img" / f"{name}.jpg", quality=95)
        savemat(sbd / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": mask}})
    half = num_images // 2
    (sbd / "train.txt").write_text(
        "\n".join(new[:half] + [voc_train_id, voc_val_id]) + "\n", encoding="utf-8"
    )
    (sbd / "val.txt").write_text("\n".join(new[half:]) + "\n", encoding="utf-8")
    return sbd
