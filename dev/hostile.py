"""Try the scripts as a hostile user would: damaged, foreign and linked files, faults during
writes (a full disk, a file-size limit, a read-only folder), interrupts, colliding names, bad
flags. Each case runs a script in its own interpreter, offline, and is classified by what the
user sees:

    clear error    exit 1 or 2 (130 or SIGINT for an interrupt) with one error line at the end,
                   no traceback, and the case's check holds (nothing half-written, say)
    handled        exit 0 (or a quiet exit for a closed pipe), and the case's check holds
    traceback      a Python traceback reached the user
    silent accept  exit 0 where the input should have been refused, or a failed check
    loss           a file the user had was changed or lost
    hang           no exit within the time limit

    python dev/hostile.py              # every case; a table by category at the end
    python dev/hostile.py -k onnx      # the cases whose category or name holds "onnx"

The full-disk and read-only cases mount a small tmpfs and a read-only bind mount, which needs
root (and CAP_SYS_ADMIN); elsewhere they are listed as not run. Not part of the test suite (it
takes minutes); run it on every change to input handling.
"""

import argparse
import collections
import contextlib
import dataclasses
import io
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GUARD = ROOT / "tests" / "netguard"
sys.path.insert(0, str(ROOT))
from synthetic import make_fake_voc  # noqa: E402
from voc import VOC  # noqa: E402

TIMEOUT = 240
TINY = (
    "--no-pretrained-backbone --teacher-weights none --device cpu --batch-size 2 "
    "--crop-size 64 --num-workers 0 --limit-val 2"
).split()
FAST_TEST = "--runs 1 --size 64 --device cpu".split()
OUTCOMES = ("clear error", "handled", "traceback", "silent accept", "loss", "hang")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), str(ROOT)]), PYTHONUNBUFFERED="1")


@dataclasses.dataclass
class Case:
    """One hostile try: `argv` for python, what should happen (`expect`: error, ok, or quiet:
    any exit without a traceback) and a check of the outcome."""

    category: str
    name: str
    argv: list
    expect: str
    check: Callable = lambda: True
    stop_after: float | None = None  # seconds, then `sig`
    sig: int = signal.SIGTERM
    file_limit: int | None = None  # bytes: RLIMIT_FSIZE, a file-size limit
    close_stdout: bool = False  # the reader of its output went away (`| head`)
    setup: Callable = lambda: None  # run first, when the case is selected


def run(case: Case) -> tuple:
    """(exit code, or None for a hang; stdout; stderr) of the case's process."""

    def limits():
        if case.file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.file_limit, case.file_limit))

    proc = subprocess.Popen(
        [sys.executable, *map(str, case.argv)],
        cwd=ROOT,
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limits,
    )
    if case.close_stdout:
        proc.stdout.close()
    if case.stop_after is not None:
        time.sleep(case.stop_after)
        proc.send_signal(case.sig)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, "", ""
    return proc.returncode, out or "", err


def classify(case: Case, code, err: str, check_ok: bool, kept: bool) -> str:
    if code is None:
        return "hang"
    if "Traceback" in err:
        return "traceback"
    if not kept:
        return "loss"
    if case.expect == "error":
        lines = [line for line in err.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        # cli.run's "error: ..." or "interrupted...", or argparse's "<script>: error: ..."
        clear = last.startswith(("error:", "interrupted")) or ": error: " in last
        ok_code = code in (1, 2, 130, -signal.SIGINT)
        return "clear error" if ok_code and clear and check_ok else "silent accept"
    quiet_ok = case.expect == "quiet" and code in (0, 1)
    return "handled" if (code == 0 or quiet_ok) and check_ok else "silent accept"


class Lab:
    """A working folder with a SYNTHETIC tree and one tiny trained checkpoint."""

    def __init__(self, work: Path):
        self.work, self.data = work, work / "data"
        make_fake_voc(self.data, num_images=8)
        self.ckpt = work / "weights" / "student_none.pth"
        code, _, err = run(Case("", "", self.train(self.ckpt, "--epochs", "1"), "ok"))
        assert code == 0, err
        self.mounts = []

    def train(self, out: Path, *flags, out_dir: Path | None = None) -> list:
        """train.py on the SYNTHETIC tree, smallest settings, writing beside `out`."""
        argv = ["train.py", "--data-root", self.data, "--out", out]
        return [*argv, "--out-dir", out_dir or out.parent, *TINY, *flags]

    def test(self, checkpoint: Path, out_dir: Path, *flags) -> list:
        """test.py on the SYNTHETIC tree, timed briefly, writing into out_dir."""
        argv = ["test.py", "--checkpoint", checkpoint, "--data-root", self.data, *FAST_TEST]
        return [*argv, "--out-dir", out_dir, *flags]

    def folder(self, name: str) -> Path:
        path = self.work / name.replace(" ", "_").replace("/", "")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def damaged_checkpoint(self, name: str, change) -> Path:
        ckpt = torch.load(self.ckpt, weights_only=True)
        change(ckpt)
        path = self.work / f"{name.replace(' ', '_')}.pth"
        torch.save(ckpt, path)
        return path

    def mount(self, path: Path, *options: str) -> bool:
        """Mount at `path` (mount's own options); False where this machine does not allow it."""
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", *options, path], capture_output=True).returncode == 0
        if done:
            self.mounts.append(path)
        return done

    def full_disk(self, name: str, megabytes: int) -> Path | None:
        path = self.work / name
        return (
            path if self.mount(path, "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs") else None
        )

    def read_only(self, name: str) -> Path | None:
        path = self.work / name
        path.mkdir()
        (path / "kept.txt").write_text("the user's own file\n")
        if self.mount(path, "--bind", str(path)) and self.mount(path, "-o", "remount,bind,ro"):
            return path
        return None

    def unmount(self) -> None:
        for path in reversed(self.mounts):
            subprocess.run(["umount", path], capture_output=True)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system of `folder` but for `leave` bytes."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))


def no_temporaries(folder: Path) -> Callable:
    return lambda: not [p for p in folder.rglob("*") if ".tmp" in p.name]


# ----------------------------------------------------------------------------- files read


def checkpoint_cases(lab: Lab) -> list:
    def set_(key, value):
        return lambda c: c.__setitem__(key, value)

    def absurd(c):
        for k, v in c["model"].items():
            if k.endswith("running_var"):
                v.fill_(-1.0)

    cases = []
    for name, change in [
        ("args a list", set_("args", ["kd"])),
        ("history a dict", set_("history", {"a": 1})),
        ("epoch a string", set_("epoch", "3")),
        ("model a tensor", set_("model", torch.zeros(3))),
        ("negative BatchNorm variance", absurd),
        (
            "1e38 everywhere",
            lambda c: [v.fill_(1e38) for v in c["model"].values() if v.is_floating_point()],
        ),
        ("a NaN weight", lambda c: c["model"]["classifier.1.bias"].fill_(float("nan"))),
    ]:
        path = lab.damaged_checkpoint(name, change)
        cases.append(
            Case("checkpoints", f"test.py: {name}", lab.test(path, lab.folder("o")), "error")
        )
    truncated = lab.work / "truncated.pth"
    truncated.write_bytes(lab.ckpt.read_bytes()[:5000])
    payload = lab.work / "payload.pth"
    marker = lab.work / "payload_ran"
    payload.write_bytes(pickle.dumps(Payload(marker)))
    cases += [
        Case(
            "checkpoints",
            "test.py: a truncated checkpoint",
            lab.test(truncated, lab.folder("o")),
            "error",
        ),
        Case(
            "checkpoints",
            "test.py: the checkpoint is a folder",
            lab.test(lab.folder("a_dir.pth"), lab.folder("o")),
            "error",
        ),
        Case(
            "checkpoints",
            "test.py: a pickle that runs a command",
            lab.test(payload, lab.folder("o")),
            "error",
            lambda: not marker.exists(),
        ),
        Case(
            "checkpoints",
            "export.py: args a list",
            [
                "export.py",
                "--checkpoint",
                lab.work / "args_a_list.pth",
                "--out",
                lab.work / "x.onnx",
            ],
            "error",
        ),
    ]
    for name, change in [
        ("no optimizer", lambda c: c.pop("optimizer")),
        ("no scaler", lambda c: c.pop("scaler")),
        ("no history", lambda c: c.pop("history")),
        (
            "an optimizer state of another model",
            lambda c: c["optimizer"]["param_groups"][0].__setitem__("params", [0, 1]),
        ),
    ]:
        out = lab.folder(f"resume {name}") / "s.pth"
        (out.parent / "s_last.pth").write_bytes(lab.damaged_checkpoint("x", change).read_bytes())
        cases.append(
            Case(
                "checkpoints",
                f"--resume: {name}",
                lab.train(out, "--epochs", "3", "--resume"),
                "error",
            )
        )
    older = lab.folder("resume older") / "student_none.pth"
    (older.parent / "student_none_last.pth").write_bytes(
        lab.damaged_checkpoint("y", lambda c: c["args"].pop("alpha")).read_bytes()
    )
    cases.append(
        Case(
            "checkpoints",
            "--resume: a checkpoint older than a flag",
            lab.train(older, "--epochs", "2", "--resume"),
            "ok",
            lambda: (
                torch.load(older.with_name("student_none_last.pth"), weights_only=True)["epoch"]
                == 2
            ),
        )
    )
    broken = lab.damaged_checkpoint("args_list_cmp", set_("args", "x"))
    compared = lab.folder("cmp")
    argv = [
        "test.py",
        "--compare",
        lab.ckpt,
        broken,
        "--data-root",
        lab.data,
        *FAST_TEST,
        "--out-dir",
        compared,
    ]
    cases.append(
        Case(
            "checkpoints",
            "--compare lists a damaged file and goes on",
            argv,
            "ok",
            lambda: "args_list_cmp.pth" in (compared / "kd_comparison.md").read_text(),
        )
    )
    return cases


class Payload:
    """A pickle that would create `marker` when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def onnx_cases(lab: Lab) -> list:
    import onnx
    from onnx import TensorProto, helper

    def model(path: Path, inputs: str, channels: int, metadata: str | None) -> Path:
        node = helper.make_node("Conv", [inputs, "w"], ["logits"])
        weight = helper.make_tensor(
            "w", TensorProto.FLOAT, [channels, 3, 1, 1], [0.1] * channels * 3
        )
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info(inputs, TensorProto.FLOAT, [1, 3, "h", "w"])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, channels, "h", "w"])],
            [weight],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        if metadata is not None:
            helper.set_model_props(m, {"student": metadata})
        onnx.save_model(m, str(path))
        return path

    good = json.dumps({"kd": "none", "params": 10})
    files = {
        name: model(lab.work / f"{name.replace(' ', '_')}.onnx", *args)
        for name, args in [
            ("other input name", ("input", 21, good)),
            ("5 classes", ("image", 5, good)),
            ("300 classes", ("image", 300, good)),
            ("no metadata", ("image", 21, None)),
            ("metadata null", ("image", 21, "null")),
            ("metadata a list", ("image", 21, "[1]")),
            ("metadata a string", ("image", 21, '"x"')),
            ("metadata not JSON", ("image", 21, "{kd")),
        ]
    }
    files["truncated"] = lab.work / "truncated.onnx"
    files["truncated"].write_bytes(files["5 classes"].read_bytes()[:40])
    files["a text file"] = lab.work / "text.onnx"
    files["a text file"].write_text("not a model\n")
    return [
        Case("onnx", name, lab.test(path, lab.folder("onnx_out")), "error")
        for name, path in files.items()
    ]


def report_cases(lab: Lab) -> list:
    cases = []
    for name, content in [
        ("Step 1 JSON without miou", {"iou": []}),
        ("Step 1 JSON miou a string", {"miou": "x", "iou": []}),
        ("Step 1 JSON iou a number", {"miou": 0.5, "iou": 3}),
        ("benchmark JSON with a bad row", {"models": [1], "train_steps": []}),
        ("benchmark JSON a list", [1, 2]),
        ("benchmark JSON not JSON", b"{"),
        ("comparison table not text", b"\xff\xfe\x00 binary"),
    ]:
        out = lab.folder(f"report {name}")
        file = {"Step": "step1_fcn_resnet50.json", "benc": "benchmark.json"}.get(name[:4])
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        (out / (file or "kd_comparison.md")).write_bytes(data)
        argv = ["report.py", "--out-dir", out, "--weights-dir", lab.ckpt.parent]
        cases.append(
            Case(
                "report inputs",
                name,
                argv,
                "ok",
                lambda out=out: (
                    "not what" in (out / "report.md").read_text()
                    or "unreadable" in (out / "report.md").read_text()
                ),
            )
        )
    weights = lab.folder("report history")
    bad = lab.damaged_checkpoint("history_ints", lambda c: c.__setitem__("history", [1, 2]))
    (weights / "student_none.pth").write_bytes(bad.read_bytes())
    out = lab.folder("report history out")
    argv = ["report.py", "--out-dir", out, "--weights-dir", weights]
    cases.append(
        Case(
            "report inputs",
            "a history of the wrong shape",
            argv,
            "ok",
            lambda: "unreadable" in (out / "report.md").read_text(),
        )
    )
    return cases


def split_cases(lab: Lab) -> list:
    cases = []
    for name, text in [
        ("a repeated id", "fake_000004\nfake_000004\n"),
        ("an id with ../", "../../../../etc/hostname\n"),
        ("an absolute path", "/etc/hostname\n"),
        ("an id of a missing image", "fake_999999\n"),
        ("bytes that are not text", b"\xff\xfe\x00\x01"),
    ]:
        root = lab.folder(f"split {name}")
        make_fake_voc(root, num_images=8)
        split = root / VOC.subdir / "ImageSets/Segmentation/val.txt"
        split.write_bytes(text if isinstance(text, bytes) else text.encode())
        cases.append(
            Case("split files", name, ["dataset.py", "--check", "--data-root", root], "error")
        )
    root = lab.folder("split blank")
    make_fake_voc(root, num_images=8)
    split = root / VOC.subdir / "ImageSets/Segmentation/val.txt"
    split.write_text("\n" + split.read_text().replace("\n", "\n\n"))
    out = lab.folder("split blank out")
    argv = ["test.py", "--checkpoint", lab.ckpt, "--data-root", root, *FAST_TEST, "--out-dir", out]
    cases.append(
        Case(
            "split files",
            "blank lines are skipped",
            argv,
            "ok",
            lambda: json.loads((out / "test_student_none.json").read_text())["num_images"] == 4,
        )
    )
    return cases


def path_cases(lab: Lab) -> list:
    cases = []
    for name, sub, stem in [
        ("a dataset image linked out of the root", "JPEGImages", "fake_000004.jpg"),
        ("a dataset mask linked out of the root", "SegmentationClass", "fake_000004.png"),
    ]:
        root = lab.folder(name)
        make_fake_voc(root, num_images=8)
        target = root / VOC.subdir / sub / stem
        target.unlink()
        target.symlink_to(lab.data / VOC.subdir / sub / stem.replace("4", "5"))
        cases.append(Case("paths", name, ["dataset.py", "--check", "--data-root", root], "error"))
    root = lab.folder("a link inside the root")
    make_fake_voc(root, num_images=8)
    image = root / VOC.subdir / "JPEGImages" / "fake_000004.jpg"
    image.rename(root / "moved.jpg")
    image.symlink_to(root / "moved.jpg")
    cases.append(
        Case(
            "paths",
            "a dataset image linked inside the root",
            ["dataset.py", "--check", "--data-root", root],
            "ok",
        )
    )
    out = lab.folder("report link")
    (out / "kd_comparison.md").symlink_to("/etc/passwd")
    (out / "overlays").mkdir()
    (out / "overlays" / "fcn_resnet50_best1_x.png").symlink_to("/etc/hostname")
    argv = ["report.py", "--out-dir", out, "--weights-dir", lab.ckpt.parent]
    cases.append(
        Case(
            "paths",
            "report.py and links to /etc files",
            argv,
            "ok",
            lambda: (
                "root:" not in (out / "report.md").read_text()
                and "best1_x"
                not in (out / "report.md").read_text().split("Missing inputs")[-1].split("## 1.")[1]
            ),
        )
    )
    repo = lab.folder("submission")
    (repo / "outputs").mkdir()
    (repo / "outputs" / "secret.md").symlink_to("/etc/passwd")
    (repo / "README.md").write_text("x\n")
    argv = ["make_submission.py", "12345678", "--root", repo]
    cases.append(
        Case(
            "paths",
            "make_submission.py and a link in outputs/",
            argv,
            "ok",
            lambda: "outputs/secret.md" not in zipfile.ZipFile(repo / "12345678.zip").namelist(),
        )
    )
    return cases


# ----------------------------------------------------------------------------- names, archives


def photo_cases(lab: Lab) -> list:
    a, b = lab.folder("photos a"), lab.folder("photos b")
    for folder in (a, b):
        Image.new("RGB", (20, 20), "red").save(folder / "same.jpg")
    Image.new("RGB", (20, 20), "red").save(a / "x.JPG")
    Image.new("RGB", (20, 20), "red").save(a / "x.jpg")
    grey = lab.folder("photos grey")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(grey / "deep.png")

    def photos(name: str, *paths, check) -> Case:
        out = lab.folder(f"photos out {name}")
        images = [arg for p in paths for arg in ("--images", p)]
        argv = ["test.py", "--checkpoint", lab.ckpt, *images, "--device", "cpu", "--out-dir", out]
        return Case("collisions", name, argv, "ok", lambda: check(out / "photos"))

    def masks(count: int):
        return lambda out: len(list(out.glob("*_mask.png"))) == count

    def grey_kept(out: Path) -> bool:
        overlay = np.asarray(Image.open(next(out.glob("deep_png*_overlay.png"))))
        return 140 < overlay[60, 20, 0] < 170  # 40000 / 65535 of white, not white (255)

    cut = lab.folder("compare twice")
    compare = [
        "test.py",
        "--compare",
        lab.ckpt,
        "--compare",
        lab.damaged_checkpoint("copy", lambda c: None),
    ]
    compare += ["--data-root", lab.data, *FAST_TEST, "--out-dir", cut]
    return [
        photos("two folders' same.jpg", a / "same.jpg", b / "same.jpg", check=masks(2)),
        photos("x.jpg beside x.JPG", a / "x.jpg", a / "x.JPG", check=masks(2)),
        photos("repeated --images flags", a, b, check=masks(4)),
        photos("a 16-bit grey PNG", grey / "deep.png", check=grey_kept),
        Case(
            "collisions",
            "repeated --compare flags",
            compare,
            "ok",
            lambda: len(json.loads((cut / "kd_comparison.json").read_text())["students"]) == 2,
        ),
    ]


EXTRACT = """
import sys
import cli, download, voc
from pathlib import Path
archive, dest = map(Path, sys.argv[1:])
cli.run(lambda _: download.safe_extract(archive, dest, voc.VOC), lambda: None)
"""


def archive_cases(lab: Lab) -> list:
    """safe_extract on archives that reach it (a manually placed archive must first match
    VOC's md5, which none of these can)."""
    make_fake_voc(lab.work / "tar_src", num_images=2)

    def tar(*members) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as t:
            t.add(lab.work / "tar_src" / "VOCdevkit", "VOCdevkit")
            for info, data in members:
                t.addfile(info, io.BytesIO(data) if data is not None else None)
        return buffer.getvalue()

    def member(name: str, kind=tarfile.REGTYPE, data: bytes | None = b"", **fields):
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(data) if data is not None else 0
        for key, value in fields.items():
            setattr(info, key, value)
        return info, data if kind == tarfile.REGTYPE else None

    good = tar()
    archives = {
        "truncated": good[: len(good) // 2],
        "a file and a folder of one name": tar(
            member("VOCdevkit/x"), member("VOCdevkit/x", tarfile.DIRTYPE)
        ),
        "not the VOC layout": tar_of([member("photos/a.jpg")]),
        "an absolute member": tar(member("/tmp/evil.txt")),
        "a member with ..": tar(member("VOCdevkit/../../evil.txt")),
        "a symbolic link": tar(member("VOCdevkit/link", tarfile.SYMTYPE, linkname="/etc")),
        "a hard link": tar(member("VOCdevkit/hard", tarfile.LNKTYPE, linkname="/etc/passwd")),
        "a device": tar(member("VOCdevkit/dev", tarfile.CHRTYPE, devmajor=1, devminor=3)),
    }
    cases = []
    for name, content in archives.items():
        path = lab.work / f"{name.replace(' ', '_')}.tar"
        path.write_bytes(content)
        dest = lab.work / f"{path.stem}_out"
        nothing = lambda dest=dest: not (dest / "VOCdevkit").exists()  # noqa: E731
        check = (lambda: True) if name == "truncated" else nothing  # refused before writing
        cases.append(Case("extraction", name, ["-c", EXTRACT, path, dest], "error", check))
    huge = lab.work / "huge.tar"
    cases.append(
        Case(
            "extraction",
            "a member of 17 GiB",
            ["-c", EXTRACT, huge, lab.work / "huge"],
            "error",
            setup=lambda: sparse_tar(huge, 17 * 2**30),
        )
    )
    return cases


def sparse_tar(path: Path, size: int) -> None:
    """A tar archive of one member of `size` bytes of zeros, written as a sparse file: whole,
    as the archive says, but taking no room on the disk."""
    header = tarfile.TarInfo("VOCdevkit/huge.bin")
    header.size = size
    with open(path, "wb") as f:
        f.write(header.tobuf())
        f.seek(tarfile.BLOCKSIZE + size)
        f.write(b"\0" * tarfile.RECORDSIZE)


def tar_of(members: list) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# ----------------------------------------------------------------------------- writes, signals


def write_cases(lab: Lab) -> list:
    def refused(name: str, argv: list, check: Callable = lambda: True, **kwargs) -> Case:
        return Case("writes", name, argv, "error", check, **kwargs)

    busy = lab.folder("busy") / "s.pth"
    Path(f"{busy}.lock").write_text(f"{os.getpid()}\n")
    folder_out = lab.folder("out is a folder") / "s.pth"
    folder_out.mkdir()
    file_parent = lab.work / "a_file"
    file_parent.write_text("x")
    limited = lab.folder("file-size limit")
    (limited / "s_last.pth").write_bytes(lab.ckpt.with_name("student_none_last.pth").read_bytes())
    kept = (limited / "s_last.pth").read_bytes()
    onnx_out = ["export.py", "--checkpoint", lab.ckpt, "--out", lab.work / "limited.onnx"]
    cases = [
        refused("a second run on the same --out", lab.train(busy, "--epochs", "1")),
        refused("--out is a folder", lab.train(folder_out, "--epochs", "1")),
        refused("--out inside a file", lab.train(file_parent / "s.pth", "--epochs", "1")),
        refused(
            "a file-size limit while saving a resumed run",
            lab.train(limited / "s.pth", "--epochs", "2", "--resume"),
            lambda: (limited / "s_last.pth").read_bytes() == kept and no_temporaries(limited)(),
            file_limit=2_000_000,
        ),
        refused(
            "a file-size limit in export.py", onnx_out, no_temporaries(lab.work), file_limit=10**5
        ),
    ]
    full, read_only = lab.full_disk("full", 3), lab.read_only("read_only")
    if full is not None:
        cases += [
            refused(
                "a full disk while saving a checkpoint",
                lab.train(full / "s.pth", "--epochs", "1"),
                no_temporaries(full),
            ),
            refused(
                "a full disk under test.py's outputs",
                lab.test(lab.ckpt, full / "out"),
                no_temporaries(full),
                setup=lambda: fill(full, 64_000),
            ),
        ]
    if read_only is not None:
        out_dir = lab.folder("ro out")
        cases += [
            refused(
                "a read-only weights folder",
                lab.train(read_only / "s.pth", "--epochs", "1"),
                lambda: (read_only / "kept.txt").exists(),
            ),
            refused(
                "a read-only --out-dir",
                lab.train(out_dir / "s.pth", "--epochs", "1", out_dir=read_only),
                lambda: not (out_dir / "s.pth").exists(),
            ),
            refused("test.py into a read-only folder", lab.test(lab.ckpt, read_only)),
        ]
    return cases


def signal_cases(lab: Lab) -> list:
    cases = []
    for name, sig, after in [
        ("SIGTERM during training", signal.SIGTERM, 25),
        ("SIGHUP during training", signal.SIGHUP, 25),
        ("Ctrl+C during the imports", signal.SIGINT, 0.3),
    ]:
        out = lab.folder(name) / "s.pth"
        argv = lab.train(out, "--epochs", "1000")
        cases.append(
            Case("interrupts", name, argv, "error", no_temporaries(out.parent), after, sig)
        )
    zipped = lab.folder("zip")

    def big_weights():  # random bytes: deflate takes seconds over them
        (zipped / "weights").mkdir()
        (zipped / "weights" / "student_none.pth").write_bytes(os.urandom(200_000_000))

    argv = ["make_submission.py", "12345678", "--root", zipped]
    no_zip = lambda: not list(zipped.glob("*.zip")) and no_temporaries(zipped)()  # noqa: E731
    cases.append(
        Case("interrupts", "SIGTERM while zipping", argv, "error", no_zip, 5, setup=big_weights)
    )
    argv = lab.test(lab.ckpt, lab.folder("pipe"))
    cases.append(Case("interrupts", "a closed pipe (| head)", argv, "quiet", close_stdout=True))
    a, b = lab.folder("resume a") / "s.pth", lab.folder("resume b") / "s.pth"
    flags = ("--epochs", "3", "--limit-train", "4", "--warmup-epochs", "0.5")  # 2 steps an epoch
    cases.append(
        Case(
            "interrupts",
            "Ctrl+C mid-epoch, then --resume: an uninterrupted run's weights",
            lab.train(a, *flags, "--resume"),
            "ok",
            lambda: same_weights(a, b, lab.train(b, *flags)),
            setup=lambda: interrupt_mid_epoch(lab.train(a, *flags), "epoch 2/3"),
        )
    )
    return cases


def interrupt_mid_epoch(argv: list, epoch: str) -> None:
    """Run train.py and press Ctrl+C once a step of `epoch` is done (its bar shows a loss)."""
    proc = subprocess.Popen(
        [sys.executable, *map(str, argv)],
        cwd=ROOT,
        env=ENV,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen, started = [], threading.Event()

    def read():  # tqdm draws with \r: characters, not lines
        while chunk := proc.stderr.read(1):
            seen.append(chunk)
            if "loss=" in "".join(seen[-400:]).partition(epoch)[2]:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    if started.wait(TIMEOUT):
        proc.send_signal(signal.SIGINT)
    proc.wait(TIMEOUT)


def same_weights(a: Path, b: Path, argv: list) -> bool:
    """Run the uninterrupted twin (`argv`, writing `b`), then compare the two last checkpoints."""
    code, _, _ = run(Case("", "", argv, "ok"))
    first, second = (torch.load(p.with_name("s_last.pth"), weights_only=True) for p in (a, b))
    return code == 0 and all(torch.equal(v, second["model"][k]) for k, v in first["model"].items())


def flag_cases(lab: Lab) -> list:
    train = ["train.py", "--data-root", lab.data, *TINY]
    test = ["test.py", "--checkpoint", lab.ckpt, "--data-root", lab.data]
    return [
        Case("flags", name, argv, "error")
        for name, argv in [
            ("--seed beyond 64 bits", train + ["--seed", str(2**70)]),
            ("--seed negative", train + ["--seed", "-3"]),
            ("--tau 1e-300", train + ["--kd", "response", "--tau", "1e-300"]),
            ("--lr 0", train + ["--lr", "0"]),
            ("--epochs 0", train + ["--epochs", "0"]),
            ("--batch-size 0", train + ["--batch-size", "0"]),
            ("--limit-val 0", train + ["--limit-val", "0"]),
            ("--num-workers -1", train + ["--num-workers", "-1"]),
            ("--out empty", train + ["--out", ""]),
            ("--data-root empty", train + ["--data-root", ""]),
            ("--device tpu", train + ["--device", "tpu"]),
            ("--device cuda without a GPU", train + ["--device", "cuda", "--epochs", "1"]),
            (
                "--teacher-cache with --kd feature",
                train + ["--kd", "feature", "--teacher-cache", "c"],
            ),
            ("test.py --runs 0", test + ["--runs", "0"]),
            ("test.py --size 5", test + ["--size", "5"]),
            ("test.py --images without --checkpoint", ["test.py", "--images", "x.jpg"]),
            ("benchmark.py --batch-size 0", ["benchmark.py", "--batch-size", "0"]),
            ("export.py --calib 0", ["export.py", "--checkpoint", lab.ckpt, "--calib", "0"]),
            (
                "export.py --out not .onnx",
                ["export.py", "--checkpoint", lab.ckpt, "--out", "x.pth"],
            ),
            ("--fake-voc empty", ["dataset.py", "--fake-voc", ""]),
            ("--fake-voc with --download", ["dataset.py", "--fake-voc", "x", "--download"]),
            ("--num-images 1", ["dataset.py", "--fake-voc", lab.work / "one", "--num-images", "1"]),
            ("a student number with a letter", ["make_submission.py", "1234a"]),
            ("three student numbers", ["make_submission.py", "1", "2", "3"]),
        ]
    ]


MAKERS = (
    checkpoint_cases,
    onnx_cases,
    report_cases,
    split_cases,
    path_cases,
    photo_cases,
    archive_cases,
    write_cases,
    signal_cases,
    flag_cases,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-k", default="", help="only the cases whose category or name holds this")
    args = p.parse_args()
    table = collections.defaultdict(collections.Counter)
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp))
        try:
            for case in (c for make in MAKERS for c in make(lab)):
                if args.k in f"{case.category} {case.name}":
                    outcome = try_case(lab, case)
                    table[case.category][outcome] += 1
        finally:
            lab.unmount()
    if not lab.mounts:
        print("not run: the full-disk and read-only cases (no tmpfs or bind mount allowed here)")
    print("\n| category | cases | " + " | ".join(OUTCOMES) + " |")
    print("|---|---:|" + "---:|" * len(OUTCOMES))
    for category, counts in table.items():
        cells = " | ".join(str(counts[o]) for o in OUTCOMES)
        print(f"| {category} | {sum(counts.values())} | {cells} |")
    total = collections.Counter()
    for counts in table.values():
        total.update(counts)
    print(f"| all | {sum(total.values())} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
    sys.exit(1 if any(total[o] for o in OUTCOMES[2:]) else 0)


def try_case(lab: Lab, case: Case) -> str:
    case.setup()
    before = lab.ckpt.read_bytes()
    code, _, err = run(case)
    try:
        check_ok = bool(case.check())
    except (OSError, ValueError, KeyError, StopIteration, IndexError, zipfile.BadZipFile):
        check_ok = False
    outcome = classify(case, code, err, check_ok, lab.ckpt.read_bytes() == before)
    last = (err.strip().splitlines() or [""])[-1][:110]
    print(f"{outcome:13s} {case.category:13s} {case.name[:46]:46s} {last}", flush=True)
    return outcome


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
