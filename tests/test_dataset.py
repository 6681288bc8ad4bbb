"""dataset.py: joint transforms, masks, train_aug, and one clear error per damaged file."""

from cli import UserError

import io
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import dataset
import voc
from conftest import run_script
from dataset import EvalTransform, image_path, train_transforms, voc_dataset
from synthetic import make_fake_voc
from voc import IMAGENET_MEAN, IMAGENET_STD, VOC

VOC_VALUES = set(range(21)) | {255}


def test_every_training_and_eval_mask_holds_only_voc_labels(fake_voc):
    torch.manual_seed(0)
    for split, transforms in (("train", train_transforms(64)), ("val", EvalTransform(520))):
        for image, mask, *_ in voc_dataset(fake_voc, split, transforms):
            assert mask.dtype == torch.uint8 and image.dtype == torch.float32
            assert set(mask.unique().tolist()) <= VOC_VALUES


def test_eval_samples_keep_the_original_label_size(fake_voc):
    labels = voc_dataset(fake_voc, "val", transforms=None)
    resized = voc_dataset(fake_voc, "val", EvalTransform(resize=520))
    for i in range(len(labels)):
        _, label = labels[i]
        image, mask = resized[i]
        assert tuple(mask.shape) == (label.height, label.width)
        assert min(image.shape[-2:]) == 520


def encoded_pair(h: int = 90, w: int = 70):
    """A label map of large blocks, and an image whose red channel is 10 x the label."""
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2, : w // 3] = 7
    mask[h // 2 :, w // 2 :] = 15
    mask[: h // 3, w // 2 :] = 255
    red = np.where(mask == 255, 250, mask.astype(np.int32) * 10).astype(np.uint8)
    image = np.stack([red, np.zeros_like(red), np.zeros_like(red)], axis=-1)
    return Image.fromarray(image), Image.fromarray(mask)


def decode_red(image: torch.Tensor) -> torch.Tensor:
    red = image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # undo the normalisation
    return red * 255


def interior(mask: torch.Tensor, margin: int = 3) -> torch.Tensor:
    """Pixels whose whole (2 margin + 1)^2 neighbourhood has their label: away from the edges
    that bilinear image resizing blends."""
    same = torch.ones_like(mask, dtype=torch.bool)
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            same &= torch.roll(mask, (dy, dx), dims=(0, 1)) == mask
    return same


@pytest.mark.parametrize("seed", range(6))
def test_random_transforms_move_image_and_mask_together(seed):
    torch.manual_seed(seed)
    image, mask = train_transforms(crop_size=64)(*encoded_pair())
    inside = interior(mask) & (mask != 255)
    assert inside.float().mean() > 0.2
    decoded = (decode_red(image)[inside] / 10).round()
    assert torch.equal(decoded, mask[inside].float())
    assert set(mask.unique().tolist()) <= {0, 7, 15, 255}  # nearest-neighbour: no new values


def test_the_augmentation_gives_image_and_mask_and_its_box_only_when_asked():
    """The plain data path carries no cache bookkeeping: (image, mask); with_box draws the
    same crop and adds its box [x0, y0, x1, y1, flipped]."""
    pair = Image.new("RGB", (50, 40)), Image.new("L", (50, 40), 2)
    transform = train_transforms(crop_size=32)
    torch.manual_seed(3)
    plain = transform(*pair)
    torch.manual_seed(3)
    boxed = transform.with_box(*pair)
    assert len(plain) == 2 and len(boxed) == 3 and boxed[2].shape == (5,)
    assert torch.equal(plain[0], boxed[0]) and torch.equal(plain[1], boxed[1])


def test_crop_padding_gives_void_mask_and_black_image():
    torch.manual_seed(0)
    small = Image.new("RGB", (10, 10), (255, 255, 255)), Image.new("L", (10, 10), 3)
    transform = dataset.RandomScaleCropFlip(80, short_sides=(10, 11))  # no rescale: padding
    image, mask, where = transform.with_box(*small)
    assert where[:4].tolist() == [0, 0, 80, 80]  # the box reaches past the 10 x 10 image
    assert tuple(mask.shape) == (80, 80)
    assert (mask == 3).sum() == 100 and (mask == 255).sum() == 80 * 80 - 100
    padded_red = image[0][mask == 255]
    assert torch.allclose(padded_red, torch.tensor(-IMAGENET_MEAN[0] / IMAGENET_STD[0]))


def test_an_image_as_large_as_the_crop_is_taken_whole_never_shifted_into_padding():
    transform = dataset.RandomScaleCropFlip(32, short_sides=(32, 33))  # no rescale
    pair = Image.new("RGB", (32, 32)), Image.new("L", (32, 32), 3)
    for seed in range(8):
        torch.manual_seed(seed)
        _, mask, where = transform.with_box(*pair)
        assert (mask == 3).all() and where[:4].tolist() == [0, 0, 32, 32]


def test_half_of_the_training_crops_are_flipped():
    torch.manual_seed(0)
    transform = train_transforms(crop_size=32)
    pair = Image.new("RGB", (40, 30)), Image.new("L", (40, 30))
    flips = [bool(transform.with_box(*pair)[2][4]) for _ in range(400)]
    assert 0.42 < sum(flips) / len(flips) < 0.58  # 1/2, four standard deviations wide


def test_training_and_evaluation_images_are_both_downscaled_with_antialiasing():
    """A checkerboard of 1-pixel squares, shrunk at least 2x: flat grey when antialiased,
    stripes of black and white (std ~40) when sampled without it."""
    board = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
    pair = Image.fromarray(np.stack([board] * 3, -1)), Image.new("L", (128, 128))
    torch.manual_seed(0)
    crops = [train_transforms(crop_size=32)(*pair) for _ in range(5)]
    shown = [image[0][mask != 255] for image, mask in crops]  # the padding aside
    shown.append(EvalTransform(resize=40)(*pair)[0][0])  # the mask keeps its size there
    for red in shown:
        assert ((red * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).std() < 5


def test_train_aug_is_voc_train_plus_sbd_minus_voc_val(tmp_path):
    make_fake_voc(tmp_path, num_images=8, with_sbd=True)
    voc_train = (
        (tmp_path / VOC.subdir / "ImageSets/Segmentation/train.txt")
        .read_text(encoding="utf-8")
        .split()
    )
    voc_val = (
        (tmp_path / VOC.subdir / "ImageSets/Segmentation/val.txt")
        .read_text(encoding="utf-8")
        .split()
    )
    sbd = tmp_path / voc.SBD.subdir
    sbd_ids = (sbd / "train.txt").read_text(encoding="utf-8").split() + (sbd / "val.txt").read_text(
        encoding="utf-8"
    ).split()
    assert set(sbd_ids) & set(voc_train) and set(sbd_ids) & set(voc_val)  # both overlaps exist
    assert (sbd / "img").is_dir() and len(list((sbd / "cls").glob("*.mat"))) == len(sbd_ids)

    union = dataset.train_aug_dataset(tmp_path, train_transforms(64))
    ids = [dataset.image_path(union, i).stem for i in range(len(union))]
    assert len(ids) == len(set(ids))  # every image once
    assert set(ids) == (set(voc_train) | set(sbd_ids)) - set(voc_val)
    shared = next(i for i in ids if i in voc_train and i in sbd_ids)
    assert "VOCdevkit" in str(dataset.image_path(union, ids.index(shared)))  # VOC's label wins
    for _, mask in union:
        assert set(mask.unique().tolist()) <= VOC_VALUES
    limited = dataset.train_aug_dataset(tmp_path, None, limit=5)
    assert len(limited) == 5


def test_missing_sbd_names_its_layout_and_download_flag(fake_voc):
    with pytest.raises(UserError) as e:
        dataset.train_aug_dataset(fake_voc, None)
    assert "benchmark_RELEASE/dataset" in str(e.value) and "--download sbd" in str(e.value)


def test_missing_dataset_stops_with_the_layout_and_the_download_flag(tmp_path):
    with pytest.raises(UserError) as e:
        voc_dataset(tmp_path / "nowhere", "val", None)
    message = str(e.value)
    assert "VOCdevkit/VOC2012" in message and "--download" in message and VOC.archive in message


# ----------------------------------------------------------------------------- train_aug


def test_eval_and_training_preprocessing_are_both_x_over_255_then_imagenet_normalised():
    colour = (200, 100, 50)
    image, mask = Image.new("RGB", (40, 30), colour), Image.new("L", (40, 30), 1)
    by_hand = torch.tensor(
        [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD)]
    )
    evaluated, _ = EvalTransform()(image, mask)
    assert torch.allclose(evaluated, by_hand[:, None, None].expand(3, 30, 40), atol=1e-5)
    torch.manual_seed(0)
    trained, crop_mask = train_transforms(crop_size=32)(image, mask)
    inside = crop_mask != 255  # away from the crop's padding, the colour is the image's
    assert inside.any() and torch.allclose(trained[:, inside], by_hand[:, None], atol=1e-4)


# ----------------------------------------------------------------------------- damaged data


def truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def cut_end(path):
    """The header whole, the pixel data cut short: PIL opens it and fails only as it decodes."""
    path.write_bytes(path.read_bytes()[:-30])


def save_mask(voc, name, value, mode="L", size=None):
    """Replace `name`'s mask by one of `value` everywhere, of the image's size unless given."""
    width, height = size or Image.open(voc / "JPEGImages" / f"{name}.jpg").size
    mask = Image.fromarray(np.full((height, width), value, np.uint8)).convert(mode)
    mask.save(voc / "SegmentationClass" / f"{name}.png")


DAMAGES = {
    "truncated image": lambda voc, n: truncate(voc / "JPEGImages" / f"{n}.jpg"),
    "missing image": lambda voc, n: (voc / "JPEGImages" / f"{n}.jpg").unlink(),
    "unreadable mask": lambda voc, n: (voc / "SegmentationClass" / f"{n}.png").write_bytes(b"x"),
    "truncated mask": lambda voc, n: cut_end(voc / "SegmentationClass" / f"{n}.png"),
    "label out of range": lambda voc, n: save_mask(voc, n, 30),
    "RGB mask": lambda voc, n: save_mask(voc, n, 0, "RGB"),
    "mask size differs": lambda voc, n: save_mask(voc, n, 0, size=(9, 7)),
}
MESSAGES = {
    "truncated image": "cannot read",
    "missing image": "is missing",
    "unreadable mask": "cannot read",
    "truncated mask": "cannot read it or its mask (OSError: image file is truncated",
    "label out of range": "label 30, outside 0-20 and 255",
    "RGB mask": "not a label map",
    "mask size differs": "its mask is 9x7",
}


@pytest.fixture
def damaged(tmp_path):
    """A fresh SYNTHETIC tree with one val image damaged; returns (data root, damaged id)."""

    def make(damage: str):
        make_fake_voc(tmp_path, num_images=4)
        name = read_ids(tmp_path, "val")[0]
        DAMAGES[damage](tmp_path / VOC.subdir, name)
        return tmp_path, name

    return make


def read_ids(root, split):
    return (
        (root / VOC.subdir / f"ImageSets/Segmentation/{split}.txt")
        .read_text(encoding="utf-8")
        .split()
    )


@pytest.mark.parametrize("damage", ["truncated mask"])
def test_a_damaged_file_is_one_error_naming_it_in_check_and_test_py(damage, damaged, trained):
    """What a user sees of a damaged file (the damages are generated below): --check lists it,
    test.py stops on it with one line naming it."""
    root, name = damaged(damage)
    check = run_script("dataset.py", "--check", "--data-root", root)
    assert check.returncode == 1 and "1 problem(s)" in check.stdout
    assert name in check.stdout and MESSAGES[damage] in check.stdout
    proc = run_script(
        "test.py",
        "--checkpoint",
        trained["out"],
        "--data-root",
        root,
        "--device",
        "cpu",
        "--size",
        "64",
        "--runs",
        "1",
        "--num-workers",
        "0",  # (an error in a worker process: tests/test_cli.py)
        "--out-dir",
        root / "out",
    )
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bar that was running
    assert proc.returncode == 1 and proc.stderr.count("error") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and last.startswith("error: ")
    assert name in last and MESSAGES[damage] in last


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_listed_damage_is_named_by_the_reader(damage, damaged):
    root, name = damaged(damage)
    with pytest.raises(UserError, match=re.escape(MESSAGES[damage])) as e:
        [pair for pair in voc_dataset(root, "val", None)]
    assert name in str(e.value)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged_tree")
    make_fake_voc(root, num_images=2)
    name = read_ids(root, "val")[0]
    voc = root / VOC.subdir
    return root, voc / "JPEGImages" / f"{name}.jpg", voc / "SegmentationClass" / f"{name}.png"


@st.composite
def damaged_bytes(draw, original: bytes) -> bytes:
    """The file cut short, some of its bytes changed, or bytes of noise instead."""
    kind = draw(st.sampled_from(["cut", "flip", "noise"]))
    if kind == "cut":
        return original[: draw(st.integers(0, len(original) - 1))]
    if kind == "noise":
        return draw(st.binary(max_size=200))
    data = bytearray(original)
    for at in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def foreign_masks(draw, size: tuple) -> bytes:
    """A PNG label map of any mode, of the image's size or another, with any values."""
    mode = draw(st.sampled_from(["L", "P", "RGB", "I;16", "1", "LA"]))
    width, height = size if draw(st.booleans()) else (draw(st.integers(1, 99)), size[1])
    values = draw(st.sampled_from([0, 15, 20, 21, 254, 255]))
    image = Image.new("L", (width, height), values).convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@given(st.data())
def test_a_damaged_image_or_mask_is_one_error_naming_it_or_reads_as_a_valid_pair(tree, data):
    """Whatever the damage, the reader gives one UserError naming the file, or a pair that is
    what the metric needs: a mask of the image's size holding only 0-20 and 255."""
    root, image, mask = tree
    original = {image: image.read_bytes(), mask: mask.read_bytes()}
    target = data.draw(st.sampled_from([image, mask]))
    size = Image.open(image).size
    if target == mask and data.draw(st.booleans()):
        content = data.draw(foreign_masks(size))
    else:
        content = data.draw(damaged_bytes(original[target]))
    target.write_bytes(content)
    try:
        photo, labels = voc_dataset(root, "val", None)[0]
    except UserError as e:
        assert image.stem in str(e) and "\n" not in str(e)
        return
    finally:
        for path, content in original.items():
            path.write_bytes(content)
    values = set(np.unique(np.asarray(labels)).tolist())
    assert labels.size == photo.size and labels.mode in ("L", "P")
    assert values <= set(range(21)) | {255}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "lists no image"),
        (b"\xff\xfe\x00binary", "cannot read the split file"),
    ],
)
def test_an_empty_or_binary_split_file_is_a_clear_error(tmp_path, content, message):
    make_fake_voc(tmp_path, num_images=4)
    (tmp_path / VOC.subdir / "ImageSets/Segmentation/val.txt").write_bytes(content)
    with pytest.raises(UserError, match=message):
        voc_dataset(tmp_path, "val", None)


def test_check_passes_a_sound_tree_and_compares_the_counts_with_voc(fake_voc):
    proc = run_script("dataset.py", "--check", "--data-root", fake_voc)
    assert proc.returncode == 0, proc.stderr
    assert "val: 4 images (VOC 2012 has 1,449)" in proc.stdout and "SYNTHETIC" in proc.stdout


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            "fake_000000\nfake_000001\nfake_000000\n",
            "line 3: 'fake_000000' repeats an earlier line",
        ),
        (
            "fake_000000\n../../etc/hostname\n",
            "line 2: '../../etc/hostname' is not a plain image id",
        ),
    ],
)
def test_a_split_file_with_a_repeat_or_a_path_is_refused_naming_the_line(tmp_path, lines, message):
    make_fake_voc(tmp_path, num_images=4)
    (tmp_path / VOC.subdir / "ImageSets/Segmentation/val.txt").write_text(lines, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        voc_dataset(tmp_path, "val", None)


def test_blank_lines_of_a_split_file_are_skipped(tmp_path):
    make_fake_voc(tmp_path, num_images=4)
    split = tmp_path / VOC.subdir / "ImageSets/Segmentation/val.txt"
    split.write_text(
        "\n" + split.read_text(encoding="utf-8").replace("\n", "\n\n"), encoding="utf-8"
    )
    assert len(voc_dataset(tmp_path, "val", None)) == 2


def test_an_image_linked_out_of_the_data_root_is_not_followed_one_inside_is(tmp_path):
    make_fake_voc(tmp_path / "data", num_images=4)
    image = tmp_path / "data" / VOC.subdir / "JPEGImages" / "fake_000002.jpg"
    for place in (tmp_path / "data" / "moved.jpg", tmp_path / "outside.jpg"):
        place.write_bytes(image.read_bytes())
        image.unlink()
        image.symlink_to(place)
        if place.parent.name == "data":
            assert voc_dataset(tmp_path / "data", "val", None)[0][0].size == Image.open(place).size
    with pytest.raises(UserError, match="fake_000002.jpg is a link out of"):
        voc_dataset(tmp_path / "data", "val", None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-images", "1"], "--num-images: must be at least 2 and at most 100000"),
        (["--num-images", "100001"], "--num-images: must be at least 2 and at most 100000"),
        (["--download"], "goes with neither --download nor --check"),
        (["--check"], "goes with neither --download nor --check"),
    ],
)
def test_fake_voc_flags_out_of_range_or_contradictory_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        dataset.parse_args(["--fake-voc", "x", *argv])
    assert message in capsys.readouterr().err
    assert dataset.parse_args(["--fake-voc", "x", "--num-images", "2"]).num_images == 2


def test_dataset_py_writes_counts_and_downloads_through_its_command_line(tmp_path):
    """What the README's commands print: the synthetic tree written, the images of each split
    (and of train_aug with SBD), and --download refused there: the tree is not VOC."""
    made = run_script("dataset.py", "--fake-voc", tmp_path, "--num-images", "6", "--with-sbd")
    assert made.returncode == 0 and "wrote a SYNTHETIC dataset of 6 images" in made.stdout
    counted = run_script("dataset.py", "--data-root", tmp_path)
    lines = counted.stdout.splitlines()
    assert lines == ["train: 3 images (SYNTHETIC)", "val: 3 images (SYNTHETIC)", lines[2]]
    assert (
        lines[2]
        == f"train_aug: {len(dataset.train_aug_dataset(tmp_path, None))} images (SYNTHETIC)"
    )
    fetched = run_script("dataset.py", "--download", "--data-root", tmp_path)
    assert fetched.returncode == 1 and "holds a SYNTHETIC tree" in fetched.stderr
    checked = run_script("dataset.py", "--check", "--data-root", tmp_path)
    assert checked.returncode == 0 and checked.stdout.splitlines()[-1].startswith("no problems")


def test_image_path_names_the_file_behind_every_train_aug_sample(tmp_path):
    make_fake_voc(tmp_path, num_images=8, with_sbd=True)
    data = dataset.train_aug_dataset(tmp_path, None)
    for i in range(len(data)):
        with Image.open(image_path(data, i)) as photo:
            assert np.array_equal(np.asarray(photo), np.asarray(data[i][0])), i
