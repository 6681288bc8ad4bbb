import dataclasses
import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VOC,
    EvalTransform,
    download_source,
    make_fake_voc,
    safe_extract,
    train_transforms,
    voc_dataset,
)

VOC_VALUES = set(range(21)) | {255}


def test_fake_voc_has_the_exact_voc_layout(fake_voc):
    voc = fake_voc / VOC.subdir
    train = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == 4 and len(val) == 4 and not set(train) & set(val)
    for name in train + val:
        assert Image.open(voc / "JPEGImages" / f"{name}.jpg").format == "JPEG"
        label = Image.open(voc / "SegmentationClass" / f"{name}.png")
        assert label.mode == "P" and label.getpalette()[3:6] == [128, 0, 0]
        values = set(np.unique(np.array(label)).tolist())
        assert values <= VOC_VALUES and 255 in values  # object boundaries are void, as in VOC
    assert "SYNTHETIC" in (voc / dataset.SYNTHETIC_MARKER).read_text()
    assert dataset.is_synthetic(fake_voc)


def test_every_training_and_eval_mask_holds_only_voc_labels(fake_voc):
    torch.manual_seed(0)
    for split, transforms in (("train", train_transforms(64)), ("val", EvalTransform(520))):
        for image, mask in voc_dataset(fake_voc, split, transforms):
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


def test_crop_padding_gives_void_mask_and_black_image():
    torch.manual_seed(0)
    small = Image.new("RGB", (10, 10), (255, 255, 255)), Image.new("L", (10, 10), 3)
    transform = train_transforms(crop_size=80)
    transform.transforms[1] = lambda image, mask: (image, mask)  # no rescale: force padding
    image, mask = transform(*small)
    assert tuple(mask.shape) == (80, 80)
    assert (mask == 3).sum() == 100 and (mask == 255).sum() == 80 * 80 - 100
    padded_red = image[0][mask == 255]
    assert torch.allclose(padded_red, torch.tensor(-IMAGENET_MEAN[0] / IMAGENET_STD[0]))


def test_fake_voc_refuses_to_write_into_a_real_dataset(tmp_path):
    make_fake_voc(tmp_path, num_images=2)
    (tmp_path / VOC.subdir / dataset.SYNTHETIC_MARKER).unlink()  # now it looks real
    before = (tmp_path / VOC.subdir / "ImageSets/Segmentation/train.txt").read_text()
    with pytest.raises(SystemExit, match="holds a real dataset"):
        make_fake_voc(tmp_path, num_images=6)
    assert (tmp_path / VOC.subdir / "ImageSets/Segmentation/train.txt").read_text() == before
    make_fake_voc(tmp_path / "other", num_images=2)
    make_fake_voc(tmp_path / "other", num_images=4)  # a synthetic tree may be remade


def test_missing_dataset_stops_with_the_layout_and_the_download_flag(tmp_path):
    with pytest.raises(SystemExit) as e:
        voc_dataset(tmp_path / "nowhere", "val", None)
    message = str(e.value)
    assert "VOCdevkit/VOC2012" in message and "--download" in message and VOC.archive in message


# ----------------------------------------------------------------------------- download


class ArchiveServer:
    """Serves {path: bytes} from 127.0.0.1, honouring Range requests like a real mirror (or
    ignoring them, like some servers, with honour_range=False)."""

    def __init__(self, files: dict, honour_range: bool = True):
        self.files, self.ranges, self.honour_range = files, [], honour_range
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if "Range" in self.headers and server.honour_range:
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    server.ranges.append(start)
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"


@pytest.fixture
def server():
    servers = []
    yield lambda files, **kw: servers.append(ArchiveServer(files, **kw)) or servers[-1]
    for s in servers:
        s.httpd.shutdown()


def voc_from(mirrors: list, md5: str):
    """VOC's Source with other mirrors and md5: the real download code, a local server."""
    return dataclasses.replace(VOC, mirrors=tuple(mirrors), md5=md5)


def tar_bytes(members: dict) -> bytes:
    """A tar archive of {member name: content}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def tiny_voc_tar(tmp_path) -> bytes:
    make_fake_voc(tmp_path / "src", num_images=2)
    files = sorted(p for p in (tmp_path / "src").rglob("*") if p.is_file())
    return tar_bytes({str(p.relative_to(tmp_path / "src")): p.read_bytes() for p in files})


def test_good_download_from_the_second_mirror_is_checked_and_extracted(tmp_path, server):
    archive = tiny_voc_tar(tmp_path)
    srv = server({"/voc.tar": archive})
    root = tmp_path / "data"
    download_source(
        root,
        voc_from(
            [srv.url("/missing.tar"), srv.url("/voc.tar")],
            hashlib.md5(archive).hexdigest(),
        ),
    )
    assert len(voc_dataset(root, "train", None)) == 1 and len(voc_dataset(root, "val", None)) == 1
    assert (root / VOC.archive).exists() and not (root / (VOC.archive + ".part")).exists()


def test_md5_mismatch_is_a_clear_error_and_leaves_no_partial_file(tmp_path, server):
    srv = server({"/voc.tar": tiny_voc_tar(tmp_path)})
    root = tmp_path / "data"
    with pytest.raises(SystemExit) as e:
        download_source(root, voc_from([srv.url("/voc.tar")], "0" * 32))
    assert "md5 mismatch" in str(e.value) and "by hand" in str(e.value)
    assert list(root.iterdir()) == []


def test_a_broken_download_resumes_with_a_range_request(tmp_path, server):
    archive = tiny_voc_tar(tmp_path)
    srv = server({"/voc.tar": archive})
    root = tmp_path / "data"
    root.mkdir()
    (root / (VOC.archive + ".part")).write_bytes(archive[:1000])  # what a dropped link left
    download_source(root, voc_from([srv.url("/voc.tar")], hashlib.md5(archive).hexdigest()))
    assert srv.ranges == [1000]
    assert (root / VOC.archive).read_bytes() == archive


def test_a_server_ignoring_range_gets_the_download_restarted_from_zero(tmp_path, server):
    archive = tiny_voc_tar(tmp_path)
    srv = server({"/voc.tar": archive}, honour_range=False)
    root = tmp_path / "data"
    root.mkdir()
    (root / (VOC.archive + ".part")).write_bytes(b"stale bytes of another attempt")
    download_source(root, voc_from([srv.url("/voc.tar")], hashlib.md5(archive).hexdigest()))
    assert (root / VOC.archive).read_bytes() == archive


def test_an_extracted_dataset_is_used_as_is_without_the_network(fake_voc):
    download_source(fake_voc, voc_from(["http://example.invalid/never-used"], "0" * 32))


def test_a_manually_placed_archive_is_used_without_the_network(tmp_path):
    archive = tiny_voc_tar(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    (root / VOC.archive).write_bytes(archive)
    download_source(
        root, voc_from(["http://example.invalid/never-used"], hashlib.md5(archive).hexdigest())
    )
    assert len(voc_dataset(root, "val", None)) == 1


@pytest.mark.parametrize(
    "evil", ["../escaped.txt", "/tmp/absolute_escape.txt", "VOCdevkit/../../escaped.txt"]
)
def test_archive_members_escaping_the_target_are_refused(tmp_path, evil):
    (tmp_path / "evil.tar").write_bytes(tar_bytes({"VOCdevkit/ok.txt": b"ok", evil: b"x"}))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(SystemExit) as e:
        safe_extract(tmp_path / "evil.tar", target)
    assert "escapes" in str(e.value)
    assert list(target.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


# ----------------------------------------------------------------------------- train_aug


def test_train_aug_is_voc_train_plus_sbd_minus_voc_val(tmp_path):
    make_fake_voc(tmp_path, num_images=8, with_sbd=True)
    voc_train = (tmp_path / VOC.subdir / "ImageSets/Segmentation/train.txt").read_text().split()
    voc_val = (tmp_path / VOC.subdir / "ImageSets/Segmentation/val.txt").read_text().split()
    sbd = tmp_path / dataset.SBD.subdir
    sbd_ids = (sbd / "train.txt").read_text().split() + (sbd / "val.txt").read_text().split()
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
    with pytest.raises(SystemExit) as e:
        dataset.train_aug_dataset(fake_voc, None)
    assert "benchmark_RELEASE/dataset" in str(e.value) and "--download sbd" in str(e.value)
