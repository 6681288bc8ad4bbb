"""synthetic.py: the SYNTHETIC tree has VOC's exact layout and never touches a real one."""

from cli import UserError

import numpy as np
import pytest
from PIL import Image

from synthetic import make_fake_voc
from voc import SBD, SYNTHETIC_MARKER, VOC, is_synthetic

VOC_VALUES = set(range(21)) | {255}


def test_fake_voc_has_the_exact_voc_layout(fake_voc):
    voc = fake_voc / VOC.subdir
    train = (voc / "ImageSets/Segmentation/train.txt").read_text(encoding="utf-8").split()
    val = (voc / "ImageSets/Segmentation/val.txt").read_text(encoding="utf-8").split()
    assert len(train) == 4 and len(val) == 4 and not set(train) & set(val)
    for name in train + val:
        assert Image.open(voc / "JPEGImages" / f"{name}.jpg").format == "JPEG"
        label = Image.open(voc / "SegmentationClass" / f"{name}.png")
        assert label.mode == "P" and label.getpalette()[3:6] == [128, 0, 0]
        values = set(np.unique(np.array(label)).tolist())
        assert values <= VOC_VALUES and 255 in values  # object boundaries are void, as in VOC
    assert "SYNTHETIC" in (voc / SYNTHETIC_MARKER).read_text(encoding="utf-8")
    assert is_synthetic(fake_voc)


def test_fake_voc_refuses_to_write_into_a_real_dataset(tmp_path):
    make_fake_voc(tmp_path, num_images=2)
    (tmp_path / VOC.subdir / SYNTHETIC_MARKER).unlink()  # now it looks real
    before = (tmp_path / VOC.subdir / "ImageSets/Segmentation/train.txt").read_text(
        encoding="utf-8"
    )
    with pytest.raises(UserError, match="did not make"):
        make_fake_voc(tmp_path, num_images=6)
    assert (tmp_path / VOC.subdir / "ImageSets/Segmentation/train.txt").read_text(
        encoding="utf-8"
    ) == before
    make_fake_voc(tmp_path / "other", num_images=2)
    make_fake_voc(tmp_path / "other", num_images=4)  # a synthetic tree may be remade


def test_fake_voc_refuses_a_partly_extracted_real_tree(tmp_path):
    (tmp_path / VOC.subdir / "JPEGImages").mkdir(parents=True)
    (tmp_path / VOC.subdir / "JPEGImages" / "2007_000032.jpg").write_bytes(b"a real photo")
    with pytest.raises(UserError, match="did not make"):
        make_fake_voc(tmp_path, num_images=2)
    assert sorted(p.name for p in (tmp_path / VOC.subdir).iterdir()) == ["JPEGImages"]


def test_fake_sbd_refuses_a_real_sbd_beside_a_synthetic_voc(tmp_path):
    """The VOC tree's marker says nothing about the SBD tree beside it."""
    make_fake_voc(tmp_path, num_images=4)
    real_sbd = tmp_path / SBD.subdir
    real_sbd.mkdir(parents=True)
    (real_sbd / "train.txt").write_text("2008_000002\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"{real_sbd} holds data that --fake-voc did not make"):
        make_fake_voc(tmp_path, num_images=4, with_sbd=True)
    assert [p.name for p in real_sbd.iterdir()] == ["train.txt"]
    make_fake_voc(tmp_path / "other", num_images=4, with_sbd=True)
    make_fake_voc(tmp_path / "other", num_images=6, with_sbd=True)  # its own: may be remade
