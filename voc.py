"""The facts that every module shares: PASCAL VOC's classes, void label and colours, the
ImageNet statistics the encoders expect, the dataset archives (`Source`), the marker files
that tell a complete tree and a SYNTHETIC one, and the names of the lab's --kd methods.

    from voc import NUM_CLASSES, IGNORE_INDEX, VOC, SBD, is_synthetic

The bottom layer: it imports nothing of the project but cli.
"""

from cli import UserError

import dataclasses
from pathlib import Path

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(VOC_CLASSES)
IGNORE_INDEX = 255  # VOC's void label: object edges and ambiguous pixels, never scored
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the encoders' pretraining statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
VOC_SPLIT_SIZES = {"train": 1464, "val": 1449}  # VOC 2012 segmentation, what --check expects
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # written by --fake-voc; scripts label their outputs with it
SYNTHETIC_NOTE = "SYNTHETIC data, not a VOC result"  # how every output says so
# How every output says that the teacher had random weights (--teacher-weights none).
RANDOM_TEACHER = "RANDOM teacher (--teacher-weights none)"
COMPLETE_MARKER = ".extracted"  # in Source.subdir, written once an extraction has finished
# train.py --kd: each method and the loss terms its log holds as train_<term>, what a checkpoint
# may name (distill.KD_MODES says what each takes from the teacher).
KD_METHODS = {
    "none": ("loss", "ce"),
    "response": ("loss", "ce", "kl"),
    "feature": ("loss", "ce", "feat"),
    "both": ("loss", "ce", "kl", "feat"),
}


def class_name(label: int) -> str:
    """VOC's name of a label: a class, or "void" for 255."""
    return VOC_CLASSES[label] if label < NUM_CLASSES else "void"


def voc_palette() -> list:
    """The VOC colour map as a flat [r0, g0, b0, r1, ...] list of 256 colours, the one VOC's
    label PNGs carry.

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


def random_teacher(flags: dict) -> bool:
    """Whether a run distilled from a teacher with random weights, by its train.py flags (as
    train.py parsed them, or as a checkpoint or a result records them)."""
    return flags.get("kd") not in ("none", None) and flags.get("teacher_weights") == "none"
