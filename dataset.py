"""PASCAL VOC 2012 segmentation (and SBD): where the data lies, joint transforms, loaders.

    python dataset.py --download --data-root data          # fetch (md5-checked), extract VOC
    python dataset.py --download sbd --data-root data      # the same for SBD (train_aug)
    python dataset.py --check --data-root data             # verify every image and mask
    python dataset.py --data-root data                     # check the layout, count the images
    python dataset.py --fake-voc data_fake --num-images 8  # tiny SYNTHETIC tree in VOC layout

The data root holds VOCdevkit/VOC2012/ (read by torchvision.datasets.VOCSegmentation) and,
for --train-set train_aug, benchmark_RELEASE/dataset/ (read by torchvision.datasets.SBDataset);
nothing here re-implements them. Each pair they read is checked (readable, same size, labels
0-20 or 255) before the transforms, so a damaged file is one error that names it.
The facts about VOC (classes, sources, markers) are in voc.py; the downloader is download.py,
the synthetic data synthetic.py, which this module's command line runs.
"""

from cli import (
    UserError,
    add_data_root,
    number,
    parser,
    path_arg,
    run,
    seed_int,
)

import argparse
import bisect
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import tv_tensors
from torchvision.datasets import SBDataset, VOCSegmentation
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from download import download_source
from synthetic import make_fake_voc
from voc import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_CLASSES,
    SBD,
    VOC,
    VOC_SPLIT_SIZES,
    check_present,
    is_synthetic,
)

MAX_PROBLEMS = 10  # what --check lists of the problems it finds
SPLIT_ID = re.compile(r"[A-Za-z0-9_.-]+")  # VOC's ids are like 2007_000032; no path parts


# ----------------------------------------------------------------------------- transforms


def to_tv_tensors(image: Image.Image, mask: Image.Image) -> tuple:
    """PIL pair -> (tv_tensors.Image uint8 3 x H x W, tv_tensors.Mask uint8 H x W).

    Wrapping the mask as a Mask is what makes every v2 geometric transform use
    nearest-neighbour on it and leave the void label 255 intact.
    """
    return v2.functional.to_image(image), tv_tensors.Mask(torch.from_numpy(np.array(mask)))


class RandomScaleCropFlip:
    """The training augmentation, joint on image and mask: scale so the shorter side is drawn
    uniformly from [crop / 2, 2 * crop) (torchvision's reference recipe), pad the bottom and
    right to at least crop x crop (image 0, mask 255: padding is never scored), take a random
    crop x crop window, flip it horizontally with probability 1/2, then `normalize`, the same
    function evaluation uses. The mask is resized nearest-neighbour, so 255 stays 255.

    (PIL image, PIL mask) -> (image 3 x crop x crop float, mask crop x crop uint8).
    `with_box` also returns where the crop came from (teacher_cache needs it).
    """

    def __init__(self, crop_size: int, short_sides: tuple | None = None):
        self.crop = crop_size
        self.short_sides = short_sides or (crop_size // 2, 2 * crop_size)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple:
        return self.with_box(image, mask)[:2]

    def with_box(self, image: Image.Image, mask: Image.Image) -> tuple:
        """(image, mask, where: [x0, y0, x1, y1, flipped]): the crop's box in the original
        image's pixel coordinates (edges, x1 and y1 excluded; beyond the image where the crop
        was padded), what a stored teacher map needs to be resampled over the same region."""
        image, mask = to_tv_tensors(image, mask)
        height, width = image.shape[-2:]
        scale = int(torch.randint(*self.short_sides, ())) / min(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        image, mask = TF.resize(image, [h, w], antialias=True), TF.resize(mask, [h, w])
        pad = [0, 0, max(self.crop - w, 0), max(self.crop - h, 0)]  # left, top, right, bottom
        image, mask = TF.pad(image, pad, fill=0), TF.pad(mask, pad, fill=IGNORE_INDEX)
        top = int(torch.randint(h + pad[3] - self.crop + 1, ()))
        left = int(torch.randint(w + pad[2] - self.crop + 1, ()))
        image, mask = (TF.crop(x, top, left, self.crop, self.crop) for x in (image, mask))
        flipped = bool(torch.rand(()) < 0.5)
        if flipped:
            image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
        sx, sy = width / w, height / h  # resized -> original pixel coordinates
        box = [left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy]
        return normalize(image), mask.as_subclass(torch.Tensor), torch.tensor(box + [flipped])


def train_transforms(crop_size: int) -> RandomScaleCropFlip:
    return RandomScaleCropFlip(crop_size)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 3 x H x W -> float: x / 255, then (x - mean) / std per channel with ImageNet's
    mean and std, the encoders' pretraining statistics. Training and evaluation both use it."""
    return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


class EvalTransform:
    """No random op. The mask keeps its original size; the image is optionally resized so its
    shorter side is `resize` (what torchvision's segmentation weights expect) and normalised."""

    def __init__(self, resize: int | None = None):
        self.resize = resize

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple:
        image, mask = to_tv_tensors(image, mask)
        if self.resize is not None:
            image = TF.resize(image, self.resize, antialias=True)
        return normalize(image), mask


# ----------------------------------------------------------------------------- datasets


def check_pair(image: Image.Image, mask: Image.Image, name: str) -> None:
    """Raise a UserError naming `name` unless the mask is a one-channel label map of the
    image's size holding only classes 0-20 and the void label 255."""
    problem = None
    if mask.mode not in ("P", "L"):
        problem = f"its mask is a {mask.mode} image, not a label map (palette or grey)"
    elif mask.size != image.size:
        problem = (
            f"its mask is {mask.size[0]}x{mask.size[1]}, its image {image.width}x{image.height}"
        )
    else:
        values = np.unique(np.asarray(mask))
        bad = values[(values >= NUM_CLASSES) & (values != IGNORE_INDEX)]
        if bad.size:
            problem = f"its mask holds label {bad[0]}, outside 0-{NUM_CLASSES - 1} and 255"
    if problem:
        raise UserError(
            f"{name}: {problem}; re-extract the dataset, or run python dataset.py "
            "--check to list every damaged file"
        )


def unreadable(name: str | Path, error: Exception) -> UserError:
    """The one line for an image or mask that cannot be read (damaged, truncated, a
    decompression bomb: PIL, scipy and the OS raise many unrelated types)."""
    detail = str(error).splitlines()[0] if str(error) else ""
    return UserError(
        f"{name}: cannot read it or its mask ({type(error).__name__}: {detail}); re-extract "
        "the dataset or run python dataset.py --check"
    )


def read_image(path: str | Path) -> Image.Image:
    """The image at `path` read whole as RGB, or the UserError of a damaged file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as e:  # as in CheckedPairs
        raise unreadable(path, e) from None


class CheckedPairs(Dataset):
    """A torchvision VOC or SBD dataset whose every (image, mask) is read and checked
    (check_pair) before `transforms`, so that a damaged file is one clear error naming it."""

    def __init__(self, base: VOCSegmentation | SBDataset, transforms=None):
        self.base, self.transforms, self.images = base, transforms, base.images

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple:
        name = self.images[index]
        try:
            image, mask = self.base[index]
            mask.load()
        except Exception as e:  # PIL, scipy and the OS raise many unrelated types
            raise unreadable(name, e) from None
        check_pair(image, mask, name)
        return self.transforms(image, mask) if self.transforms else (image, mask)


def read_split(data_root: str | Path, split: str) -> list:
    """The image ids of a VOC split file, one per line; blank lines are skipped. An id that
    repeats (it would count twice in the mIoU) or is not a plain file name (`../x` would lead
    out of the tree) is refused, naming the line."""
    path = Path(data_root) / VOC.subdir / f"ImageSets/Segmentation/{split}.txt"
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the split file {path} ({e})") from None
    ids, seen = [], set()
    for line_number, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if name in seen or not SPLIT_ID.fullmatch(name):
            problem = "repeats an earlier line" if name in seen else "is not a plain image id"
            raise UserError(f"{path}, line {line_number}: {name[:60]!r} {problem}")
        seen.add(name)
        ids.append(name)
    return ids


def voc_dataset(data_root: str | Path, split: str, transforms, limit: int | None = None) -> Dataset:
    """VOC 2012 `split` ("train" 1,464 or "val" 1,449 images), optionally its first `limit`.
    An image or mask that is a link out of the data root is refused, never followed."""
    check_present(VOC, data_root)
    ids = read_split(data_root, split)  # read first: a clear error for a damaged split file
    if not ids:
        raise UserError(f"the {split} split of {Path(data_root) / VOC.subdir} lists no image")
    base = VOCSegmentation(str(data_root), year="2012", image_set=split)
    voc = Path(data_root) / VOC.subdir
    base.images = [str(voc / "JPEGImages" / f"{i}.jpg") for i in ids]  # the checked ids
    base.targets = [str(voc / "SegmentationClass" / f"{i}.png") for i in ids]
    root = Path(data_root).resolve()
    for path in map(Path, (p for pair in zip(base.images, base.masks) for p in pair)):
        if not path.is_file():
            raise UserError(
                f"{path}, listed in the {split} split, is missing; re-extract the "
                "dataset or run python dataset.py --check"
            )
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise UserError(f"{path} is a link out of {data_root}: not followed")
    return first(CheckedPairs(base, transforms), limit)


def first(dataset: Dataset, limit: int | None) -> Dataset:
    return Subset(dataset, range(min(limit, len(dataset)))) if limit else dataset


def train_aug_dataset(data_root: str | Path, transforms, limit: int | None = None) -> Dataset:
    """The standard augmented training set: VOC 2012 train, plus SBD train and val, minus every
    VOC 2012 val image, each image once: 1,464 + 9,118 = 10,582 images (SBD: Hariharan et al.,
    2011; the count of DeepLab and torchvision's references).

    An image in both VOC train and SBD keeps VOC's label. SBD's labels hold 0-20 and no 255
    (no void band on object edges), so the two sources mix as they are: the loss ignores 255
    where VOC has it and SBD simply has none.
    """
    check_present(SBD, data_root)
    voc_train = voc_dataset(data_root, "train", transforms)
    taken = set(read_split(data_root, "train")) | set(read_split(data_root, "val"))
    parts = [voc_train]
    for split in ("train", "val"):
        try:
            sbd = SBDataset(str(Path(data_root) / SBD.subdir), image_set=split, mode="segmentation")
        except (OSError, RuntimeError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read SBD's {split} split ({e})") from None
        keep = [i for i, path in enumerate(sbd.images) if Path(path).stem not in taken]
        taken |= {Path(sbd.images[i]).stem for i in keep}
        parts.append(Subset(CheckedPairs(sbd, transforms), keep))
    return first(ConcatDataset(parts), limit)


def image_path(dataset: Dataset, index: int) -> Path:
    """The JPEG file behind dataset[index], through any Subset or ConcatDataset."""
    while isinstance(dataset, (Subset, ConcatDataset)):
        if isinstance(dataset, Subset):
            dataset, index = dataset.dataset, dataset.indices[index]
        else:
            part = bisect.bisect_right(dataset.cumulative_sizes, index)  # as ConcatDataset does
            index -= dataset.cumulative_sizes[part - 1] if part else 0
            dataset = dataset.datasets[part]
    return Path(dataset.images[index])


def check_tree(data_root: str | Path) -> tuple:
    """Read every image and mask of VOC train and val as the scripts will: returns (summary
    lines, counts against VOC's; the problems found, one line each)."""
    lines, problems = [], []
    for split, expected in VOC_SPLIT_SIZES.items():
        try:
            data = voc_dataset(data_root, split, None)
        except UserError as e:
            problems.append(str(e))
            continue
        for i in range(len(data)):
            try:
                data[i]
            except UserError as e:
                problems.append(str(e))
        note = "" if len(data) == expected else f" (VOC 2012 has {expected:,d})"
        lines.append(f"{split}: {len(data):,d} images{note}")
    return lines, problems


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    add_data_root(p)
    p.add_argument(
        "--download",
        nargs="?",
        const="voc",
        choices=("voc", "sbd"),
        help="download (or verify a manually placed archive) and extract VOC 2012, "
        "or SBD with '--download sbd'",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="read every image and mask of --data-root and list the problems",
    )
    p.add_argument(
        "--fake-voc",
        type=path_arg,
        metavar="DIR",
        help="write a SYNTHETIC dataset in VOC layout under DIR and exit",
    )
    p.add_argument(
        "--num-images",
        type=number(int, 2, 100_000),
        default=8,
        help="images in the synthetic dataset, half train, half val",
    )
    p.add_argument(
        "--with-sbd", action="store_true", help="--fake-voc also writes a SYNTHETIC SBD tree"
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the synthetic dataset")
    args = p.parse_args(argv)
    if args.fake_voc and (args.download or args.check):
        p.error("--fake-voc writes a synthetic tree: it goes with neither --download nor --check")
    return args


def main(args: argparse.Namespace) -> None:
    if args.fake_voc:
        voc = make_fake_voc(args.fake_voc, args.num_images, args.seed, args.with_sbd)
        print(f"wrote a SYNTHETIC dataset of {args.num_images} images in VOC layout at {voc}")
        return
    if args.download and is_synthetic(args.data_root):
        raise UserError(
            f"{args.data_root} holds a SYNTHETIC tree made by --fake-voc, not VOC: download into "
            "another --data-root, or delete its VOCdevkit/ first"
        )
    if args.download:
        download_source(args.data_root, {"voc": VOC, "sbd": SBD}[args.download])
    tag = " (SYNTHETIC)" if is_synthetic(args.data_root) else ""
    if args.check:
        lines, problems = check_tree(args.data_root)
        print("\n".join(lines) + tag)
        if problems:
            print(f"{len(problems)} problem(s):", *problems[:MAX_PROBLEMS], sep="\n  ")
            raise UserError(f"{args.data_root} has damaged files (listed above)")
        print("no problems: every image and mask reads as the scripts read them")
        return
    for split in ("train", "val"):
        print(f"{split}: {len(voc_dataset(args.data_root, split, None))} images{tag}")
    if (Path(args.data_root) / SBD.subdir).exists():
        print(f"train_aug: {len(train_aug_dataset(args.data_root, None))} images{tag}")


if __name__ == "__main__":
    run(main, parse_args)
