"""PASCAL VOC 2012 segmentation (and SBD): download, joint transforms, loaders, colours,
synthetic data.

    python dataset.py --download --data-root data          # fetch (md5-checked), extract VOC
    python dataset.py --download sbd --data-root data      # the same for SBD (train_aug)
    python dataset.py --data-root data                     # check the layout, count the images
    python dataset.py --fake-voc data_fake --num-images 8  # tiny SYNTHETIC tree in VOC layout

The data root holds VOCdevkit/VOC2012/ (read by torchvision.datasets.VOCSegmentation) and,
for --train-set train_aug, benchmark_RELEASE/dataset/ (read by torchvision.datasets.SBDataset);
nothing here re-implements them.
"""

import argparse
import bisect
import dataclasses
import hashlib
import http.client
import math
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.datasets import SBDataset, VOCSegmentation
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from metrics import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES, model_logits, number

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    ),  # fmt: skip
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
OVERLAY_ALPHA = 0.6  # weight of the label colours over a photo: readable, photo still visible
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # written by --fake-voc; scripts label their outputs with it


# ----------------------------------------------------------------------------- colours


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


def overlay_panel(
    image: Image.Image, target: np.ndarray, pred: np.ndarray, alpha: float = OVERLAY_ALPHA
) -> Image.Image:
    """Side by side: image | ground truth blended on it | prediction blended on it."""
    image = image.convert("RGB")
    return side_by_side(
        [
            image,
            Image.blend(image, colorize(target), alpha),
            Image.blend(image, colorize(pred), alpha),
        ]
    )


def legend(classes: list) -> Image.Image:
    """A column of VOC colour swatches with the names of `classes` (class ids)."""
    palette, row = voc_palette(), 16
    image = Image.new("RGB", (150, row * len(classes) + 4), "white")
    draw = ImageDraw.Draw(image)
    for i, c in enumerate(classes):
        y = 2 + i * row
        draw.rectangle([4, y, 4 + 12, y + 12], fill=tuple(palette[3 * c : 3 * c + 3]))
        draw.text((22, y), VOC_CLASSES[c], fill="black")
    return image


def save_overlays(
    model: torch.nn.Module,
    dataset: Dataset,
    per_image_miou: list,
    count: int,
    out_dir: str | Path,
    prefix: str,
    device: torch.device,
) -> list:
    """Overlay panels of the `count` best and `count` worst images by per-image mIoU, as
    <out_dir>/<prefix>_{best,worst}<rank>_<image id>.png. Returns the paths written."""
    scored = [i for i, m in enumerate(per_image_miou) if not math.isnan(m)]
    ranked = sorted(scored, key=lambda i: per_image_miou[i], reverse=True)
    best = ranked[:count]
    worst = [i for i in reversed(ranked) if i not in best][:count]  # disjoint on small splits
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    paths = []
    for kind, picks in (("best", best), ("worst", worst)):
        for rank, index in enumerate(picks, 1):
            image, mask = dataset[index]
            with torch.inference_mode():
                logits = model_logits(model, image[None].to(device))
                logits = torch.nn.functional.interpolate(
                    logits, size=mask.shape[-2:], mode="bilinear", align_corners=False
                )
            source = image_path(dataset, index)
            pred = logits.argmax(1)[0].cpu().numpy()
            paths.append(out_dir / f"{prefix}_{kind}{rank}_{source.stem}.png")
            overlay_panel(Image.open(source), mask.numpy(), pred).save(paths[-1])
    return paths


# ----------------------------------------------------------------------------- transforms


def to_tv_tensors(image: Image.Image, mask: Image.Image) -> tuple:
    """PIL pair -> (tv_tensors.Image uint8 3 x H x W, tv_tensors.Mask uint8 H x W).

    Wrapping the mask as a Mask is what makes every v2 geometric transform use
    nearest-neighbour on it and leave the void label 255 intact.
    """
    return v2.functional.to_image(image), tv_tensors.Mask(torch.from_numpy(np.array(mask)))


def train_transforms(crop_size: int) -> v2.Compose:
    """Random scale (shorter side 0.5x to 2x the crop, as torchvision's reference recipe),
    random crop padded with 0 / 255 when the image is smaller, flip, ImageNet normalisation."""
    return v2.Compose([
        to_tv_tensors,
        v2.RandomResize(crop_size // 2, 2 * crop_size),
        v2.RandomCrop(crop_size, pad_if_needed=True,
                      fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),  # images only; masks stay uint8
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


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


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 3 x H x W -> float, ImageNet mean and std (the encoders' pretraining statistics)."""
    return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


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


def is_present(source: Source, data_root: str | Path) -> bool:
    return all((Path(data_root) / source.subdir / name).exists() for name in source.needed)


def check_present(source: Source, data_root: str | Path) -> None:
    """Stop with the layout and the ways to get `source` when it is not on disk."""
    root = Path(data_root)
    for name in source.needed:
        if not (root / source.subdir / name).exists():
            raise SystemExit(
                f"error: {source.name} not found: no {root / source.subdir / name}.\n"
                f"Expected layout: {root / source.subdir}/{source.layout}\n"
                f"Get it with: python dataset.py {source.flag} --data-root {root}  (md5-checked)\n"
                f"or put a downloaded {source.archive} into {root}/ and run that same command to "
                "verify and extract it."
            )


def is_synthetic(data_root: str | Path) -> bool:
    return (Path(data_root) / VOC.subdir / SYNTHETIC_MARKER).exists()


def first(dataset: Dataset, limit: int | None) -> Dataset:
    return Subset(dataset, range(min(limit, len(dataset)))) if limit else dataset


def voc_dataset(data_root: str | Path, split: str, transforms, limit: int | None = None) -> Dataset:
    """VOC 2012 `split` ("train" 1,464 or "val" 1,449 images), optionally its first `limit`."""
    check_present(VOC, data_root)
    dataset = VOCSegmentation(str(data_root), year="2012", image_set=split, transforms=transforms)
    return first(dataset, limit)


def split_ids(data_root: str | Path, split: str) -> list:
    return (
        (Path(data_root) / VOC.subdir / f"ImageSets/Segmentation/{split}.txt").read_text().split()
    )


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
    taken = set(split_ids(data_root, "train")) | set(split_ids(data_root, "val"))
    parts = [voc_train]
    for split in ("train", "val"):
        sbd = SBDataset(str(Path(data_root) / SBD.subdir), image_set=split, mode="segmentation",
                        transforms=transforms)  # fmt: skip
        keep = [i for i, path in enumerate(sbd.images) if Path(path).stem not in taken]
        taken |= {Path(sbd.images[i]).stem for i in keep}
        parts.append(Subset(sbd, keep))
    return first(ConcatDataset(parts), limit)


def eval_loader(
    data_root: str | Path,
    split: str,
    batch_size: int = 1,
    num_workers: int = 2,
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


# ----------------------------------------------------------------------------- download


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, timeout: float = 30) -> None:
    """Download url to dest, resuming a partial dest with an HTTP Range request.

    A server that ignores Range answers 200 with the whole file: we then restart from zero.
    """
    offset = dest.stat().st_size if dest.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # nothing left to fetch: the partial file is already complete
            return
        raise
    with response:
        if response.status != 206:
            offset = 0
        total = response.headers.get("Content-Length")
        total = int(total) + offset if total is not None else None
        with (
            open(dest, "ab" if offset else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                dynamic_ncols=True,
            ) as bar,
        ):
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))


def fetch_archive(urls: list, dest: Path, md5: str) -> None:
    """Try each mirror in turn until one yields a file with the right md5, saved at dest.

    A broken transfer keeps dest + ".part" so the next try resumes it; a file with the wrong
    md5 is deleted, so nothing corrupt is left behind.
    """
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        print(f"downloading {url}")
        try:
            download(url, part)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            errors.append(f"{url}: {e}")
            continue
        got = md5sum(part)
        if got == md5:
            part.replace(dest)
            return
        part.unlink()
        errors.append(f"{url}: md5 mismatch (got {got}, expected {md5}); partial file deleted")
    raise SystemExit(
        f"error: could not download {dest.name} from any mirror:\n  "
        + "\n  ".join(errors)
        + f"\nDownload it by hand, put it at {dest}, and run the same command again."
    )


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, refusing it whole if any member could land outside dest
    (absolute path, '..', link or device), before a single file is written."""
    dest = Path(dest).resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            inside = (dest / m.name).resolve().is_relative_to(dest)
            if os.path.isabs(m.name) or ".." in Path(m.name).parts or not inside:
                raise SystemExit(f"error: refusing {archive}: member {m.name!r} escapes {dest}")
            if not (m.isfile() or m.isdir()):
                raise SystemExit(f"error: refusing {archive}: member {m.name!r} is not a file")
        # The "data" filter (Python >= 3.10.12) repeats these checks inside tarfile itself.
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        for m in tqdm(members, desc=f"extracting {archive.name}", unit="file", dynamic_ncols=True):
            tar.extract(m, dest, **extra)


def download_source(data_root: str | Path, source: Source) -> None:
    """Get source.archive into data_root (unless it is already there), check its md5 and
    extract it there, which gives data_root/source.subdir. Nothing to do when that is there."""
    root = Path(data_root)
    if is_present(source, root):
        print(f"{source.name} is already under {root / source.subdir}; nothing to do")
        return
    root.mkdir(parents=True, exist_ok=True)
    archive = root / source.archive
    if archive.exists():
        print(f"found {archive}, checking its md5")
        if md5sum(archive) != source.md5:
            raise SystemExit(
                f"error: {archive} has the wrong md5 (expected {source.md5}); delete it "
                "and run again to download it"
            )
    else:
        fetch_archive(list(source.mirrors), archive, source.md5)
    safe_extract(archive, root)
    print(f"{source.name} ready under {root / source.subdir}")


# ----------------------------------------------------------------------------- synthetic data


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
    {train,val}.txt (first half train, rest val) and a SYNTHETIC.txt marker; with_sbd adds
    a SYNTHETIC SBD tree beside it (make_fake_sbd)."""
    voc = Path(data_root) / VOC.subdir
    if is_present(VOC, data_root) and not is_synthetic(data_root):
        raise SystemExit(f"error: {voc} holds a real dataset; choose another folder for --fake-voc")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"fake_{i:06d}" for i in range(num_images)]
    for name in ids:
        image, mask = fake_sample(rng)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        label = Image.fromarray(mask, mode="P")
        label.putpalette(voc_palette())
        label.save(voc / "SegmentationClass" / f"{name}.png")
    n_train = math.ceil(num_images / 2)
    for split, names in (("train", ids[:n_train]), ("val", ids[n_train:])):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (voc / SYNTHETIC_MARKER).write_text(
        "SYNTHETIC data made by `dataset.py --fake-voc`; "
        "no number measured on it is a VOC result.\n"
    )
    if with_sbd:
        make_fake_sbd(data_root, ids[0], ids[n_train], num_images, rng)
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
    new = [f"fake_sbd_{i:06d}" for i in range(num_images)]
    for name in new + [voc_train_id, voc_val_id]:
        image, mask = fake_sample(rng, void_edges=False)
        Image.fromarray(image).save(sbd / "img" / f"{name}.jpg", quality=95)
        savemat(sbd / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": mask}})
    half = num_images // 2
    (sbd / "train.txt").write_text("\n".join(new[:half] + [voc_train_id, voc_val_id]) + "\n")
    (sbd / "val.txt").write_text("\n".join(new[half:]) + "\n")
    return sbd


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", default="data", help="folder holding VOCdevkit/ (default: data)")
    p.add_argument(
        "--download",
        nargs="?",
        const="voc",
        choices=("voc", "sbd"),
        help="download (or verify a manually placed archive) and extract VOC 2012, or SBD "
        "with '--download sbd' (default: no download)",
    )
    p.add_argument(
        "--fake-voc",
        metavar="DIR",
        help="write a SYNTHETIC dataset in VOC layout under DIR and exit (default: off)",
    )
    p.add_argument(
        "--num-images",
        type=number(int, 2),
        default=8,
        help="images in the synthetic dataset, half train, half val (default: 8)",
    )
    p.add_argument(
        "--with-sbd",
        action="store_true",
        help="--fake-voc also writes a SYNTHETIC SBD tree (default: off)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset (default: 0)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    if args.fake_voc:
        voc = make_fake_voc(args.fake_voc, args.num_images, args.seed, args.with_sbd)
        print(f"wrote a SYNTHETIC dataset of {args.num_images} images in VOC layout at {voc}")
        return
    if args.download:
        download_source(args.data_root, {"voc": VOC, "sbd": SBD}[args.download])
    tag = " (SYNTHETIC)" if is_synthetic(args.data_root) else ""
    for split in ("train", "val"):
        print(f"{split}: {len(voc_dataset(args.data_root, split, None))} images{tag}")
    if (Path(args.data_root) / SBD.subdir).exists():
        print(f"train_aug: {len(train_aug_dataset(args.data_root, None))} images{tag}")


if __name__ == "__main__":
    main(parse_args())
