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
The downloader is download.py, the synthetic data synthetic.py.
"""

import argparse
import bisect
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset
from torchvision import tv_tensors
from torchvision.datasets import SBDataset, VOCSegmentation
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cli import UserError, add_data_root, number, parser, run

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
NUM_CLASSES = len(VOC_CLASSES)
IGNORE_INDEX = 255  # VOC's void label: object edges and ambiguous pixels, never scored
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the encoders' pretraining statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
VOC_SPLIT_SIZES = {"train": 1464, "val": 1449}  # VOC 2012 segmentation, what --check expects
MAX_PROBLEMS = 10  # what --check lists of the problems it finds
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # written by --fake-voc; scripts label their outputs with it


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset archive: where it unpacks under the data root and where to get it.
    The mirrors are tried in order; the md5 decides, whichever host served the file."""

    name: str
    subdir: Path  # what the archive unpacks to, under the data root
    needed: tuple  # what the scripts read inside subdir
    layout: str  # the same, for people
    archive: str
    md5: str
    mirrors: tuple
    flag: str  # the dataset.py flag that downloads it


VOC = Source(
    name="PASCAL VOC 2012",
    subdir=Path("VOCdevkit", "VOC2012"),
    needed=(
        "JPEGImages",
        "SegmentationClass",
        "ImageSets/Segmentation/train.txt",
        "ImageSets/Segmentation/val.txt",
    ),
    layout="{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}",
    archive="VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",  # the md5 torchvision's VOCSegmentation checks
    # The Oxford host is often down, hence the mirrors. Add yours here.
    mirrors=(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "https://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "http://d2l-data.s3-accelerate.amazonaws.com/VOCtrainval_11-May-2012.tar",  # d2l.ai
        "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",  # the YOLO author's
    ),
    flag="--download",
)
# Semantic Boundaries Dataset (Hariharan et al., 2011, "Semantic contours from inverse
# detectors"): 11,355 VOC 2011 images with full segmentation labels in .mat files.
SBD = Source(
    name="SBD (Semantic Boundaries Dataset)",
    subdir=Path("benchmark_RELEASE", "dataset"),
    needed=("img", "cls", "train.txt", "val.txt"),
    layout="{img/*.jpg, cls/*.mat, train.txt, val.txt}",
    archive="benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",  # the md5 torchvision's SBDataset checks
    mirrors=(
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
        "benchmark.tgz",
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
        "benchmark.tgz",
    ),
    flag="--download sbd",
)


def is_present(source: Source, data_root: str | Path) -> bool:
    return all((Path(data_root) / source.subdir / name).exists() for name in source.needed)


def check_present(source: Source, data_root: str | Path) -> None:
    """Raise a UserError with the layout and the ways to get `source` when it is not on disk."""
    root = Path(data_root)
    for name in source.needed:
        if not (root / source.subdir / name).exists():
            raise UserError(
                f"{source.name} not found: no {root / source.subdir / name}. Expected layout: "
                f"{root / source.subdir}/{source.layout}. Get it with: python dataset.py "
                f"{source.flag} --data-root {root} (md5-checked), or put a downloaded "
                f"{source.archive} into {root}/ and run that same command to verify and extract it"
            )


def is_synthetic(data_root: str | Path) -> bool:
    return (Path(data_root) / VOC.subdir / SYNTHETIC_MARKER).exists()


# ----------------------------------------------------------------------------- transforms


def to_tv_tensors(image: Image.Image, mask: Image.Image) -> tuple:
    """PIL pair -> (tv_tensors.Image uint8 3 x H x W, tv_tensors.Mask uint8 H x W).

    Wrapping the mask as a Mask is what makes every v2 geometric transform use
    nearest-neighbour on it and leave the void label 255 intact.
    """
    return v2.functional.to_image(image), tv_tensors.Mask(torch.from_numpy(np.array(mask)))


def train_transforms(crop_size: int) -> v2.Compose:
    """Random scale (shorter side 0.5x to 2x the crop, as torchvision's reference recipe),
    random crop padded with 0 / 255 when the image is smaller, flip, then `normalize`, the
    same function evaluation uses."""
    return v2.Compose([
        to_tv_tensors,
        v2.RandomResize(crop_size // 2, 2 * crop_size),
        v2.RandomCrop(crop_size, pad_if_needed=True,
                      fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
        v2.RandomHorizontalFlip(),
        lambda image, mask: (normalize(image), mask),
    ])  # fmt: skip


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


def collate_eval(batch: list) -> tuple:
    """Batch images of different sizes for evaluation.

    Returns (images N x 3 x H x W, zero-padded at the bottom and right to the largest image,
    masks as a list at their original sizes, [(h, w)] of each image before padding). Zero is
    the mean colour after normalisation. evaluate() crops the padding off the logits, so padded
    pixels never reach the metric, but they can still shift predictions near the bottom/right
    edge through the receptive field: published numbers use batch size 1.
    """
    sizes = [tuple(image.shape[-2:]) for image, _ in batch]
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    images = torch.zeros(len(batch), 3, h, w)
    for i, (image, _) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
    return images, [torch.as_tensor(mask) for _, mask in batch], sizes


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
            raise UserError(
                f"{name}: cannot read it or its mask ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); re-extract the "
                "dataset or run python dataset.py --check"
            ) from None
        check_pair(image, mask, name)
        return self.transforms(image, mask) if self.transforms else (image, mask)


def read_split(data_root: str | Path, split: str) -> list:
    """The image ids of a VOC split file."""
    path = Path(data_root) / VOC.subdir / f"ImageSets/Segmentation/{split}.txt"
    try:
        return path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the split file {path} ({e})") from None


def voc_dataset(data_root: str | Path, split: str, transforms, limit: int | None = None) -> Dataset:
    """VOC 2012 `split` ("train" 1,464 or "val" 1,449 images), optionally its first `limit`."""
    check_present(VOC, data_root)
    ids = read_split(data_root, split)  # read first: a clear error for a damaged split file
    if not ids:
        raise UserError(f"the {split} split of {Path(data_root) / VOC.subdir} lists no image")
    base = VOCSegmentation(str(data_root), year="2012", image_set=split)
    for path in (p for pair in zip(base.images, base.masks) for p in pair):
        if not Path(path).is_file():
            raise UserError(
                f"{path}, listed in the {split} split, is missing; re-extract the "
                "dataset or run python dataset.py --check"
            )
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


def training_loader(
    dataset: Dataset, batch_size: int, num_workers: int, seed: int, world: int, cuda: bool
) -> DataLoader:
    """Shuffled batches; under torchrun (world > 1) a DistributedSampler gives each process its
    share, reshuffled each epoch by loader.sampler.set_epoch."""
    sampler = DistributedSampler(dataset, seed=seed) if world > 1 else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=cuda,
        persistent_workers=num_workers > 0,
    )


def eval_loader(
    data_root: str | Path,
    split: str,
    batch_size: int = 1,
    num_workers: int = 0,
    resize: int | None = None,
    limit: int | None = None,
    shard: tuple = (0, 1),
) -> DataLoader:
    """Loader of a VOC split for metrics.evaluate. shard=(rank, world size) keeps every
    world-th image from the rank-th: disjoint shares that together are the split, each image
    once (DistributedSampler would pad the shares with repeats, which would bias the mIoU)."""
    dataset = voc_dataset(data_root, split, EvalTransform(resize), limit)
    rank, world = shard
    if world > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_eval,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,  # train.py validates every epoch with this loader
    )


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
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    # Imported here: both modules build on this one (its constants and sources).
    from download import download_source
    from synthetic import make_fake_voc

    if args.fake_voc:
        voc = make_fake_voc(args.fake_voc, args.num_images, args.seed, args.with_sbd)
        print(f"wrote a SYNTHETIC dataset of {args.num_images} images in VOC layout at {voc}")
        return
    if args.download:
        download_source(args.data_root, {"voc": VOC, "sbd": SBD}[args.download])
    tag = " (SYNTHETIC)" if is_synthetic(args.data_root) else ""
    if args.check:
        lines, problems = check_tree(args.data_root)
        print("\n".join(lines) + tag)
        if problems:
            print(f"{len(problems)} problem(s):", *problems[:MAX_PROBLEMS], sep="\n  ")
            raise UserError(f"{args.data_root} has damaged files (listed above)")
        return
    for split in ("train", "val"):
        print(f"{split}: {len(voc_dataset(args.data_root, split, None))} images{tag}")
    if (Path(args.data_root) / SBD.subdir).exists():
        print(f"train_aug: {len(train_aug_dataset(args.data_root, None))} images{tag}")


if __name__ == "__main__":
    run(main, parse_args)
