"""teacher_cache.py and train.py --teacher-cache: the stored logits are the live teacher's, each
crop reads its own region of them, and a cache that does not belong to the run is refused."""

from cli import UserError

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import teacher_cache
from conftest import TINY_TRAIN, damaged_json, examples, load_script, train_tiny
from dataset import EvalTransform, RandomScaleCropFlip, image_path, voc_dataset
from distill import teacher_outputs
from model import build_teacher, teacher_features
from synthetic import make_fake_voc
from teacher_cache import INDEX, LOGITS, TeacherCache, crop_logits

CPU = torch.device("cpu")
train = load_script("train")


SMALL = 96  # the teacher's resize in these tests: 30 times less work than 520, same code


@pytest.fixture(scope="module", autouse=True)
def small_teacher_input():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(teacher_cache, "TEACHER_RESIZE", SMALL)
        yield


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher("none")


def train_files(data_root) -> list:
    data = voc_dataset(data_root, "train", None)
    return [image_path(data, i) for i in range(len(data))]


@pytest.fixture(scope="module")
def cache(fake_voc, teacher, tmp_path_factory):
    directory = tmp_path_factory.mktemp("cache") / "fcn"
    return TeacherCache.open_or_build(directory, teacher, train_files(fake_voc), CPU)


def test_the_whole_image_unflipped_gives_the_live_teachers_logits(fake_voc, teacher, cache):
    """At the teacher's own input size, the box being the whole image: the cached targets are
    what teacher_features (the live teacher of train.py) gives, to float16 precision."""
    for i, path in enumerate(train_files(fake_voc)):
        with Image.open(path) as photo:
            x, _ = EvalTransform(SMALL)(photo.convert("RGB"), Image.new("L", photo.size))
            width, height = photo.size
        with torch.no_grad():
            live = teacher_features(teacher, x[None])[0]
        where = torch.tensor([[0.0, 0.0, width, height, 0.0]])
        cached = cache.crop_logits(where, torch.tensor([i]), tuple(live.shape[-2:]), CPU)
        scale = live.abs().max().item()
        assert (cached - live).abs().max().item() < 2e-3 * scale  # float16: 11 bits


def hand_bilinear(stored: np.ndarray, v: float, u: float) -> np.ndarray:
    """The C values of a C x h x w map at map coordinates (v, u), cell centres at integers,
    clamped to the outer cells' centres (as upsampling with align_corners=False does)."""
    h, w = stored.shape[-2:]
    v, u = min(max(v, 0.0), h - 1.0), min(max(u, 0.0), w - 1.0)
    top, left = int(v), int(u)
    bottom, right = min(top + 1, h - 1), min(left + 1, w - 1)
    dv, du = v - top, u - left
    return (1 - dv) * ((1 - du) * stored[:, top, left] + du * stored[:, top, right]) + dv * (
        (1 - du) * stored[:, bottom, left] + du * stored[:, bottom, right]
    )


def hand_crop(stored: np.ndarray, image_size: tuple, where: list, size: int) -> np.ndarray:
    """One crop, pixel by pixel: output pixel (i, j) is the original image's point
    x = x0 + (j + 1/2)(x1 - x0) / size (y alike), at u = x * w / W - 1/2 in the map; a flipped
    crop is the same crop mirrored."""
    height, width = image_size
    x0, y0, x1, y1, flipped = where
    h, w = stored.shape[-2:]
    out = np.zeros((stored.shape[0], size, size))
    for i in range(size):
        y = y0 + (i + 0.5) * (y1 - y0) / size
        for j in range(size):
            x = x0 + (j + 0.5) * (x1 - x0) / size
            out[:, i, size - 1 - j if flipped else j] = hand_bilinear(
                stored, y * h / height - 0.5, x * w / width - 0.5
            )
    return out


@pytest.mark.parametrize("seed", range(4))
def test_each_crop_of_a_batch_reads_its_own_box_of_its_own_map_flipped_as_the_crop(seed):
    """Two maps of different sizes in one batch (padded to one size inside crop_logits), boxes
    reaching the image's right and bottom edges and beyond (the padding of a small crop).
    Plant: forget the flip, or the scale from image to map coordinates, or pad with zeros."""
    g = torch.Generator().manual_seed(seed)
    stored = [torch.randn(1, 21, 9, 13, generator=g).half(), torch.randn(1, 21, 7, 10, generator=g)]
    image_sizes = [(70, 100), (52, 75)]
    where = []
    for height, width in image_sizes:
        side = 20 + 40 * torch.rand(1, generator=g).item()
        x0, y0 = width - side * torch.rand(1, generator=g).item(), height - side
        where.append([x0, y0, x0 + side, y0 + side, float(seed % 2 == len(where) % 2)])
    got = crop_logits(stored, image_sizes, torch.tensor(where), (16, 16))
    for i, (m, image_size, box) in enumerate(zip(stored, image_sizes, where)):
        expected = hand_crop(m[0].double().numpy(), image_size, box, 16)
        assert np.allclose(got[i].numpy(), expected, atol=1e-4), i


def test_the_recorded_box_is_where_the_crop_came_from():
    """The crop's mask is the original mask sampled over the recorded box (flipped when the
    crop was): at least 95 % of the pixels agree (nearest-neighbour resizing rounds at the
    block edges). Plant: record the box in the resized image's coordinates."""
    mask = np.zeros((90, 120), np.uint8)
    for k in range(6):
        mask[:, 20 * k : 20 * k + 20] = k + 1  # columns of distinct labels
    mask[45:] += 10
    image = Image.new("RGB", (120, 90))
    for seed in range(6):
        torch.manual_seed(seed)
        _, crop, where = RandomScaleCropFlip(64).with_box(image, Image.fromarray(mask))
        x0, y0, x1, y1, flipped = where.tolist()
        centres = torch.arange(64) + 0.5
        cols = (x0 + centres * (x1 - x0) / 64).floor().long()
        rows = (y0 + centres * (y1 - y0) / 64).floor().long()
        inside = (cols < 120)[None] & (rows < 90)[:, None]
        expected = torch.from_numpy(mask)[rows.clamp(max=89)][:, cols.clamp(max=119)]
        if flipped:
            expected, inside = expected.flip(-1), inside.flip(-1)
        assert ((crop == expected) | ~inside).float().mean() > 0.95
        assert (crop[~inside] == 255).all()  # the padding, beyond the image


@pytest.mark.parametrize("kd", ["response", "both"])
def test_train_py_takes_the_crops_cached_logits_and_for_both_the_live_features(
    kd, fake_voc, teacher, cache
):
    """train.open_teacher on a batch of train.py's loader: the logits are the cache's for
    each crop's box, at the crop's size (N x C x H x W), and --kd both adds the live teacher's
    features of the same crops."""
    flags = ["--data-root", str(fake_voc), *TINY_TRAIN, "--kd", kd]
    args = train.parse_args([*flags, "--teacher-cache", str(cache.directory)])
    torch.manual_seed(0)
    loader = train.build_loaders(args, 0, 1, CPU)[0]
    targets = train.open_teacher(args, teacher, loader.dataset.dataset, CPU)
    images, _, where, indices = next(iter(loader))
    seen = sorted(int(i) for *_, batch in loader for i in batch)
    assert seen == list(range(len(loader.dataset)))  # each sample names its own image
    logits, features = targets(images, where, indices)
    assert logits.shape == (len(images), 21, *images.shape[-2:])
    assert torch.equal(logits, cache.crop_logits(where, indices, tuple(images.shape[-2:]), CPU))
    if kd == "response":
        assert features is None
    else:
        live = teacher_outputs(teacher, images)[1]
        assert features.keys() == live.keys() and len(live) > 0
        assert all(torch.equal(features[name], live[name]) for name in live)


def test_a_cache_of_another_teacher_is_refused(fake_voc, cache):
    torch.manual_seed(1)
    other = build_teacher("none")
    with pytest.raises(UserError, match="made by another teacher; delete .* to rebuild it"):
        TeacherCache.open_or_build(cache.directory, other, train_files(fake_voc), CPU)


def test_a_cache_of_other_images_is_refused(fake_voc, teacher, cache):
    with pytest.raises(UserError, match="made for other images"):
        TeacherCache.open_or_build(cache.directory, teacher, train_files(fake_voc)[:2], CPU)


def test_a_changed_image_is_refused_and_a_truncated_cache_named(tmp_path, teacher):
    make_fake_voc(tmp_path / "data", num_images=4)
    files = train_files(tmp_path / "data")
    directory = tmp_path / "cache"
    TeacherCache.open_or_build(directory, teacher, files, CPU)
    kept = files[1].read_bytes()
    Image.new("RGB", (50, 60), "red").save(files[1])
    with pytest.raises(UserError, match=f"{files[1].name} changed since the cache was made"):
        TeacherCache.open_or_build(directory, teacher, files, CPU)
    files[1].write_bytes(kept)
    TeacherCache.open_or_build(directory, teacher, files, CPU)  # the same bytes: accepted
    logits = directory / LOGITS
    logits.write_bytes(logits.read_bytes()[:1000])
    with pytest.raises(UserError, match=f"{LOGITS} is damaged .* delete .* to rebuild it"):
        TeacherCache.open_or_build(directory, teacher, files, CPU)


def test_an_interrupted_build_leaves_no_cache_that_looks_whole(tmp_path, teacher, monkeypatch):
    make_fake_voc(tmp_path / "data", num_images=4)
    files = train_files(tmp_path / "data")
    calls = []

    def stop_at_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    real = teacher_cache.teacher_stride8_logits
    monkeypatch.setattr(teacher_cache, "teacher_stride8_logits", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        TeacherCache.open_or_build(tmp_path / "cache", teacher, files, CPU)
    assert list(tmp_path.glob("*cache*")) == []


def read_log(path) -> list:
    return list(csv.DictReader(open(path, encoding="utf-8")))


@pytest.mark.slow
def test_a_cached_run_learns_and_writes_what_a_live_run_writes(fake_voc, tmp_path):
    """train.py --kd response, live and cached, 4 epochs on the SYNTHETIC tree: the cached
    run's distillation term falls, and both runs leave the same files with the same columns."""
    flags = ("--kd", "response", "--epochs", 4, "--lr", "0.05", "--warmup-epochs", "0")
    runs = {}
    for name, extra in (("live", ()), ("cached", ("--teacher-cache", tmp_path / "cache"))):
        out = tmp_path / name / "student_response.pth"
        proc = train_tiny(fake_voc, out, *flags, *extra)
        assert proc.returncode == 0, proc.stderr
        runs[name] = out.parent
    assert "teacher cache: 4 images" in proc.stdout and "MB on disk" in proc.stdout
    live, cached = (sorted(p.name for p in runs[n].iterdir()) for n in ("live", "cached"))
    assert live == cached
    log = read_log(runs["cached"] / "student_response_log.csv")
    assert log[0].keys() == read_log(runs["live"] / "student_response_log.csv")[0].keys()
    kl = [float(row["train_kl"]) for row in log]
    assert kl[-1] < 0.7 * kl[0]
    index = json.loads((tmp_path / "cache" / "index.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in index["images"]] == [p.name for p in train_files(fake_voc)]


def test_the_flag_is_refused_where_there_is_no_response_term(fake_voc, tmp_path):
    proc = train_tiny(fake_voc, tmp_path / "s.pth", "--kd", "feature", "--teacher-cache", "c")
    assert proc.returncode == 1 and "--kd feature has no response term" in proc.stderr


def test_a_cache_folder_that_is_a_file_is_one_error(fake_voc, tmp_path):
    (tmp_path / "c").write_text("not a folder", encoding="utf-8")
    proc = train_tiny(
        fake_voc,
        tmp_path / "s.pth",
        "--kd",
        "response",
        "--teacher-cache",
        tmp_path / "c",
        "--epochs",
        1,
    )
    assert proc.returncode == 1 and "is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def edited_index(cache, tmp_path, change):
    """A copy of the module's cache whose index.json `change(index)` edited."""
    directory = tmp_path / "edited"
    directory.mkdir(exist_ok=True)
    (directory / LOGITS).symlink_to(cache.directory / LOGITS)
    index = json.loads((cache.directory / INDEX).read_text(encoding="utf-8"))
    change(index)
    (directory / INDEX).write_text(json.dumps(index), encoding="utf-8")
    return directory


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_damaged_index_is_one_error_saying_how_to_rebuild_or_changes_nothing(
    fake_voc, teacher, cache, tmp_path_factory, data
):
    """Any entry of index.json, at any depth, dropped, made odd or nudged: refused with the way
    out, or every stored map read exactly as before."""
    original = json.loads((cache.directory / INDEX).read_text(encoding="utf-8"))
    index, what = data.draw(damaged_json(original))
    directory = edited_index(
        cache, tmp_path_factory.mktemp("damaged"), lambda ix: ix.clear() or ix.update(index)
    )
    try:
        opened = TeacherCache.open_or_build(directory, teacher, train_files(fake_voc), CPU)
    except UserError as e:
        assert "delete" in str(e) and "rebuild" in str(e), (what, str(e))
        return
    for i in range(len(original["images"])):
        assert torch.equal(opened.stored(i), cache.stored(i)), what


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=examples(10))
@given(st.integers(0, 10**9), st.integers(0, 7), st.integers(-3, 3))
def test_damaged_logits_are_refused(fake_voc, teacher, cache, tmp_path_factory, at, bit, length):
    """A flipped bit anywhere in logits.f16 (another teacher value, silently), or a file cut
    short or grown: refused by its size or its SHA-1 in the index."""
    directory = tmp_path_factory.mktemp("logits") / "fcn"
    shutil.copytree(cache.directory, directory)
    data = bytearray((directory / LOGITS).read_bytes())
    data[at % len(data)] ^= 1 << bit
    data = data[: len(data) + length] if length < 0 else data + bytes(length)
    (directory / LOGITS).write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{LOGITS} is damaged"):
        TeacherCache.open_or_build(directory, teacher, train_files(fake_voc), CPU)


def test_an_image_size_the_file_does_not_have_is_refused(fake_voc, teacher, cache, tmp_path):
    """A size a few pixels off keeps a plausible map shape, but would move every crop's box."""
    height, width = json.loads((cache.directory / INDEX).read_text(encoding="utf-8"))["images"][2][
        "size"
    ]
    directory = edited_index(
        cache, tmp_path, lambda ix: ix["images"][2].__setitem__("size", [height + 3, width])
    )
    with pytest.raises(UserError, match=f"gives .* the size \\[{height + 3}, {width}\\], the file"):
        TeacherCache.open_or_build(directory, teacher, train_files(fake_voc), CPU)


@pytest.mark.parametrize("damage", ["truncated", "a decompression bomb"])
def test_a_damaged_image_is_named_by_the_build_not_blamed_on_the_cache(
    tmp_path, teacher, damage, monkeypatch
):
    make_fake_voc(tmp_path / "data", num_images=4)
    files = train_files(tmp_path / "data")
    if damage == "truncated":
        files[1].write_bytes(files[1].read_bytes()[:200])
    else:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # every image is one now
    with pytest.raises(
        UserError, match=f"{files[1 if damage == 'truncated' else 0].name}: cannot "
    ):
        TeacherCache.open_or_build(tmp_path / "cache", teacher, files, CPU)
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]  # no cache, no temporary


def test_a_second_build_of_one_cache_uses_the_first(fake_voc, teacher, cache, capsys):
    """Two runs that both found no cache: the one that finishes second keeps the first's."""
    before = (cache.directory / INDEX).read_bytes()
    fingerprint = teacher_cache.teacher_fingerprint(teacher)
    teacher_cache.build(cache.directory, teacher, fingerprint, train_files(fake_voc), CPU)
    assert "another run built" in capsys.readouterr().out
    assert (cache.directory / INDEX).read_bytes() == before
    assert not [p for p in cache.directory.parent.iterdir() if ".tmp" in p.name]
    TeacherCache.open_or_build(cache.directory, teacher, train_files(fake_voc), CPU)
