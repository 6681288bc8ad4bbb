"""The frozen teacher's logits, computed once per training image and reused by every epoch of
response-based distillation (train.py --teacher-cache DIR).

    train_set = with_crop_boxes(make_set, RandomScaleCropFlip(480))  # samples + (where, index)
    cache = TeacherCache.open_or_build("cache/fcn", teacher, image_files(train_set), device)
    forward = cache.teacher_forward(None, device)  # forward(images, where, indices) -> logits, _

The idea of ReLabel (Yun et al., CVPR 2021, "Re-labeling ImageNet") and FKD (Shen and Xing,
ECCV 2022, "A Fast Knowledge Distillation Framework for Visual Recognition"): the teacher never
changes, so its dense output is stored once for each whole image, and each random crop reads
its region of the stored map (bilinear samples over its box, as RoIAlign takes them) instead
of running the teacher again.

What it changes: the teacher sees the whole image, resized so its shorter side is 520 (as in
Step 1), instead of the student's crop at the crop's scale; its logits for a crop are then
bilinear samples of its whole-image map, which is what the live teacher's logits are too,
only computed in another context. The effect of that on VOC mIoU is not measured here.

On disk, DIR holds logits.f16 (raw float16 values: every image's 21 x ceil(H'/8) x ceil(W'/8)
map, one after another) and index.json (the teacher's fingerprint, the resize, and for each image
its file name, a SHA-1 of its bytes, its size, its map's shape and offset). DIR appears whole
or not at all: it is written under a temporary name and renamed last.
"""

from cli import UserError

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from dataset import EvalTransform, RandomScaleCropFlip, image_path, read_image
from files import COUNT, ENCODING, ListOf, Number, mismatch, read_utf8
from model import TEACHER_RESIZE, teacher_features
from voc import NUM_CLASSES

FORMAT = 2  # of index.json; a cache of another format is refused (1: no logits_sha1)
LOGITS, INDEX = "logits.f16", "index.json"  # raw float16 values; their layout
ENTRY_KEYS = {
    "name": str,
    "sha1": str,
    "size": ListOf(Number(1, integer=True), 2),  # [height, width] of the image
    "shape": ListOf(COUNT, 3),  # [C, h, w] of its stored map
    "offset": COUNT,  # of its first value in LOGITS
}
INDEX_KEYS = {
    "format": int,
    "logits_sha1": str,  # of LOGITS: a flipped bit there would be another teacher value
    "teacher": str,
    "resize": int,
    "values": COUNT,
    "images": ListOf(ENTRY_KEYS),
}


def file_sha1(path: str | Path) -> str:
    """The file's SHA-1, read in blocks (a train_aug cache is gigabytes)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 over the teacher's state dict (names and values): another teacher, or the same
    architecture with other weights, has another fingerprint."""
    digest = hashlib.sha256()
    for name, tensor in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def teacher_stride8_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x: N x 3 x H x W -> the teacher's logits at its output stride, N x 21 x h x w with
    h, w about H / 8, W / 8: its forward pass without the final bilinear upsampling, which
    teacher_features (and torchvision) apply to these very values."""
    return teacher.classifier(teacher.backbone(x)["out"])


def crop_logits(stored: list, image_sizes: list, where: torch.Tensor, size: tuple) -> torch.Tensor:
    """The stored whole-image maps resampled over each crop's box, as the live teacher's logits
    enter the loss: stored[i] 1 x C x h_i x w_i (stride 8 of image i resized for the teacher),
    image_sizes[i] (H_i, W_i) of the original image, where N x 5 rows [x0, y0, x1, y1, flipped]
    (the box in original pixel coordinates, dataset.RandomScaleCropFlip) -> N x C x size.

    A pixel at original coordinate x (pixel centres at i + 1/2) sits at u = x * w / W - 1/2 in
    the map, as bilinear upsampling (align_corners=False) of the map to the image places it;
    output pixel j of the crop is at x = x0 + (j + 1/2) (x1 - x0) / size_w, and takes the
    bilinear sample at u (the same for y). A flipped crop is the unflipped one mirrored: its
    columns in reverse order. This is what RoIAlign with aligned=True and one sample per bin
    computes; grid_sample takes every crop of the batch in one call, on every core, where
    torchvision's RoIAlign runs one crop at a time on one core on a CPU (docs/measurements.md).
    The maps are padded to a common size by repeating their edges: a sample between the last
    cell's centre and the image's edge is the edge's value, as without padding, and so is one
    beyond the image (the padding of small crops, where the mask holds 255: never scored).
    """
    height, width = max(m.shape[-2] for m in stored), max(m.shape[-1] for m in stored)
    maps = [
        F.pad(m.float(), (0, width - m.shape[-1], 0, height - m.shape[-2]), mode="replicate")
        for m in stored
    ]
    grids = []
    for m, (image_h, image_w), (x0, y0, x1, y1, flipped) in zip(
        stored, image_sizes, where.tolist()
    ):
        xs = x0 + (torch.arange(size[1]) + 0.5) * (x1 - x0) / size[1]
        ys = y0 + (torch.arange(size[0]) + 0.5) * (y1 - y0) / size[0]
        if flipped:
            xs = xs.flip(0)
        # grid_sample's coordinates: -1 and 1 are the padded map's outer edges
        gx = 2 * xs * (m.shape[-1] / image_w) / width - 1
        gy = 2 * ys * (m.shape[-2] / image_h) / height - 1
        grids.append(torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1))
    maps = torch.cat(maps)
    return F.grid_sample(
        maps,
        torch.stack(grids).to(maps.device),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )


class WithBoxes:
    """The training augmentation, also returning each crop's box (RandomScaleCropFlip.with_box)."""

    def __init__(self, crops: RandomScaleCropFlip):
        self.crops = crops

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple:
        return self.crops.with_box(image, mask)


class Indexed(Dataset):
    """dataset[i] with i appended: (image, mask, where) -> (image, mask, where, i), so that a
    batch says which training images its crops came from."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        return (*self.dataset[index], index)


def with_crop_boxes(make_set, crops: RandomScaleCropFlip) -> Indexed:
    """make_set(transforms), the training set, its samples (image, mask, where, index): the
    crop's box and the image's index, which the stored maps are read and resampled by."""
    return Indexed(make_set(WithBoxes(crops)))


def image_files(dataset: Indexed) -> list:
    """The image file behind each sample of with_crop_boxes's set, in order."""
    return [image_path(dataset.dataset, i) for i in range(len(dataset))]


def map_shape(size: list) -> list:
    """[C, h, w] of the stored map of an image of size [H, W]: the teacher's stride-8 logits
    of the image resized so its shorter side is TEACHER_RESIZE (up to a pixel of rounding)."""
    scale = TEACHER_RESIZE / min(size)
    return [NUM_CLASSES, *(math.ceil(side * scale / 8) for side in size)]


def index_problem(index) -> str | None:
    """What is wrong with an index.json's content, or None: INDEX_KEYS and each image's
    ENTRY_KEYS; each map's shape that of its image's size (map_shape, within a pixel); the
    maps one after another from offset 0, `values` in all."""
    problem = mismatch(index, INDEX_KEYS)
    if problem:
        return problem
    offset = 0
    for i, entry in enumerate(index["images"]):
        size, shape = entry["size"], entry["shape"]
        expected = map_shape(size)
        if shape[0] != expected[0] or any(abs(a - b) > 1 for a, b in zip(shape[1:], expected[1:])):
            return f"image {i}: its map's shape {shape} is not that of a {size} image"
        if entry["offset"] != offset:
            return f"image {i}: its offset {entry['offset']} is not {offset}"
        offset += math.prod(shape)
    return (
        None
        if offset == index["values"]
        else f"the maps hold {offset} values, not {index['values']}"
    )


def image_size(path: str | Path) -> list:
    """[height, width] of an image file, from its header alone."""
    with Image.open(path) as image:
        return [image.height, image.width]


class TeacherCache:
    """A built cache, validated against the teacher and the training images."""

    def __init__(self, directory: Path, index: dict, logits: np.ndarray):
        self.directory, self.index, self.logits = directory, index, logits

    @classmethod
    def open_or_build(
        cls, directory: str | Path, teacher: nn.Module, images: list, device: torch.device
    ) -> "TeacherCache":
        """The cache at `directory` for this teacher and these image files (in training-set
        order), built first when `directory` does not exist."""
        directory = Path(directory)
        fingerprint = teacher_fingerprint(teacher)
        if not directory.exists():
            build(directory, teacher, fingerprint, images, device)
        cache = cls.open(directory)
        cache.check(fingerprint, images)
        return cache

    @classmethod
    def open(cls, directory: Path) -> "TeacherCache":
        if not directory.is_dir():
            raise UserError(f"--teacher-cache {directory} is not a folder")
        if not any((directory / name).exists() for name in (INDEX, LOGITS)):
            raise UserError(
                f"--teacher-cache {directory} is a folder but not a teacher cache (no {INDEX}); "
                "give the path of a folder that does not exist yet, and train.py builds it there"
            )
        try:
            index = json.loads(read_utf8(directory / INDEX, "the cache's index"))
            size = (directory / LOGITS).stat().st_size
        except (UserError, OSError, ValueError, RecursionError) as e:
            raise UserError(
                f"teacher cache {directory}: cannot read {INDEX} or {LOGITS} ({e}); "
                f"delete {directory} to rebuild it"
            ) from None
        if isinstance(index, dict) and index.get("format") != FORMAT:
            raise UserError(
                f"teacher cache {directory} has another format (an older version's?); delete "
                f"{directory} to rebuild it"
            )
        problem = index_problem(index)
        if problem:
            raise UserError(
                f"teacher cache {directory}: its {INDEX} is damaged ({problem}); delete "
                f"{directory} to rebuild it"
            )
        total = index["values"]
        if size != 2 * total or total == 0:
            raise UserError(
                f"teacher cache {directory}: {directory / LOGITS} is damaged ({size:,d} bytes, "
                f"{INDEX} says {2 * total:,d}); delete {directory} to rebuild it"
            )
        if file_sha1(directory / LOGITS) != index["logits_sha1"]:
            raise UserError(
                f"teacher cache {directory}: {directory / LOGITS} is damaged (its SHA-1 is not "
                f"the one {INDEX} gives); delete {directory} to rebuild it"
            )
        logits = np.memmap(directory / LOGITS, dtype=np.float16, mode="r", shape=(total,))
        return cls(directory, index, logits)

    def check(self, fingerprint: str, images: list) -> None:
        """Refuse a cache made by another teacher, with another resize, or for other or
        changed image files."""
        rebuild = f"delete {self.directory} (or pass another --teacher-cache) to rebuild it"
        index = self.index
        if index.get("format") != FORMAT or index.get("resize") != TEACHER_RESIZE:
            raise UserError(f"teacher cache {self.directory} has another format; {rebuild}")
        if index.get("teacher") != fingerprint:
            raise UserError(
                f"teacher cache {self.directory} was made by another teacher; {rebuild}"
            )
        names, wanted = [entry["name"] for entry in index["images"]], [Path(p).name for p in images]
        if names != wanted:
            differ = next(
                (i for i, pair in enumerate(zip(names, wanted)) if len(set(pair)) > 1), None
            )
            what = (
                f"{len(names)} images, the training set {len(wanted)}"
                if differ is None
                else f"image {differ + 1} is {names[differ]}, the training set's {wanted[differ]}"
            )
            raise UserError(
                f"teacher cache {self.directory} was made for other images, or in another order "
                f"({what}); {rebuild}"
            )
        for entry, path in zip(
            index["images"], tqdm(images, desc="checking the cache", leave=False)
        ):
            if entry["sha1"] != file_sha1(path):
                raise UserError(
                    f"teacher cache {self.directory}: {path} changed since the cache was "
                    f"made; {rebuild}"
                )
            if entry["size"] != image_size(path):
                raise UserError(
                    f"teacher cache {self.directory}: {INDEX} gives {path} the size "
                    f"{entry['size']}, the file is {image_size(path)}; {rebuild}"
                )

    def stored(self, i: int) -> torch.Tensor:
        """Image i's stored map, 1 x C x h x w float16."""
        entry = self.index["images"][i]
        shape, offset = entry["shape"], entry["offset"]
        flat = np.array(self.logits[offset : offset + int(np.prod(shape))])
        return torch.from_numpy(flat).reshape(1, *shape)

    def crop_logits(self, where: torch.Tensor, indices: torch.Tensor, size: tuple, device):
        """N x C x size logits of a batch's crops (where: N x 5, indices: N), on `device`."""
        images = [self.index["images"][i] for i in indices.tolist()]
        stored = [self.stored(i).to(device) for i in indices.tolist()]
        return crop_logits(stored, [entry["size"] for entry in images], where.cpu(), size)

    def teacher_forward(self, teacher: nn.Module | None, device: torch.device):
        """teacher_forward(images, where, indices) -> (logits, features), as the loss takes
        the live teacher's: the stored logits over each crop at the batch's size, and the
        live teacher's features when `teacher` is given (--kd both), else None."""

        def forward(images: torch.Tensor, where: torch.Tensor, indices: torch.Tensor) -> tuple:
            logits = self.crop_logits(where, indices, tuple(images.shape[-2:]), device)
            return logits, teacher_features(teacher, images)[1] if teacher is not None else None

        return forward


@torch.no_grad()
def build(
    directory: Path, teacher: nn.Module, fingerprint: str, images: list, device: torch.device
) -> None:
    """Run the teacher once over every image (shorter side TEACHER_RESIZE, normalised as in
    evaluation) and write its stride-8 logits as float16, under a temporary name renamed
    to `directory` only once whole."""
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    transform, entries, offset = EvalTransform(TEACHER_RESIZE), [], 0
    start = time.perf_counter()
    try:
        tmp.mkdir(parents=True)
        with open(tmp / LOGITS, "wb") as out:
            for path in tqdm(images, desc="teacher cache", unit="image"):
                photo = read_image(path)  # a damaged image is named as the dataset names it
                size = [photo.height, photo.width]
                x, _ = transform(photo, Image.new("L", photo.size))
                logits = teacher_stride8_logits(teacher, x[None].to(device))[0].half().cpu()
                out.write(logits.numpy().tobytes())
                entries.append(
                    {
                        "name": Path(path).name,
                        "sha1": file_sha1(path),
                        "size": size,
                        "shape": list(logits.shape),
                        "offset": offset,
                    }
                )
                offset += logits.numel()
        index = {
            "format": FORMAT,
            "logits_sha1": file_sha1(tmp / LOGITS),
            "teacher": fingerprint,
            "resize": TEACHER_RESIZE,
            "values": offset,
            "images": entries,
        }
        (tmp / INDEX).write_text(json.dumps(index), encoding=ENCODING)
        if not rename_unless_built(tmp, directory):
            return
    except OSError as e:
        raise UserError(f"cannot write the teacher cache {directory}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb = (directory / LOGITS).stat().st_size / 1e6
    seconds = time.perf_counter() - start
    print(
        f"teacher cache: {len(images)} images, {mb:.1f} MB on disk, built in {seconds:.1f} s "
        f"({1000 * seconds / len(images):.0f} ms per image) -> {directory}"
    )


def rename_unless_built(tmp: Path, directory: Path) -> bool:
    """Rename the built `tmp` to `directory`; False, leaving `tmp`, when another run built
    `directory` meanwhile (two runs on one cache): its cache is used, and checked, instead."""
    try:
        os.replace(tmp, directory)
    except OSError:
        if not (directory / INDEX).is_file():
            raise
        print(f"teacher cache: another run built {directory} meanwhile; using it")
        return False
    return True
