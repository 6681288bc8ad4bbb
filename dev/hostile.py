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
    python dev/hostile.py --makers cache_cases,acceptance_cases   # those makers' cases only

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
import re
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
OUTCOMES = ("clear error", "handled", "traceback", "silent accept", "loss", "hang", "misleading")
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
    to_group: bool = False  # `sig` goes to the whole process group (workers, torchrun's ranks)
    says: str = ""  # what the last line of stderr must hold


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
        start_new_session=case.to_group,
    )
    if case.close_stdout:
        proc.stdout.close()
    if case.stop_after is not None:
        time.sleep(case.stop_after)
        os.killpg(proc.pid, case.sig) if case.to_group else proc.send_signal(case.sig)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, "", ""
    return proc.returncode, out or "", err


def ours(err: str) -> str:
    """stderr without what torchrun itself prints, which no script of the lab does: its log
    lines (E1207 ..., W1207 ...) wherever they fall, and from its own traceback on (a failed
    run's ChildFailedError and report, a Ctrl+C's SignalException)."""
    lines = [line for line in err.splitlines() if not re.match(r"[EW]\d{4} ", line)]
    for i, line in enumerate(lines):
        frames = lines[i : i + 8]
        if line.startswith("Traceback") and any("distributed/run.py" in f for f in frames):
            return "\n".join(lines[:i])
    return "\n".join(lines)


def classify(case: Case, code, err: str, check_ok: bool, kept: bool) -> str:
    if code is None:
        return "hang"
    err = ours(err)
    if "Traceback" in err or "Exception ignored" in err:
        return "traceback"
    if case.says and case.says not in (err.strip().splitlines() or [""])[-1]:
        return "misleading"
    if not kept:
        return "loss"
    if case.expect == "error":
        lines = [line for line in err.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        # cli.run's "error: ..." or "interrupted...", or argparse's "<script>: error: ..."
        clear = last.startswith(("error:", "interrupted")) or ": error: " in last
        ok_code = code in (1, 2, 130, -signal.SIGINT) or code != 0 and case.to_group
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
        (path / "kept.txt").write_text("the user's own file\n", encoding="utf-8")
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
            lambda: (
                "args_list_cmp.pth" in (compared / "kd_comparison.md").read_text(encoding="utf-8")
            ),
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
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
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
    files["a text file"].write_text("not a model\n", encoding="utf-8")
    return [
        Case("onnx", name, lab.test(path, lab.folder("onnx_out")), "error")
        for name, path in files.items()
    ]


def report_case(category: str, name: str, out: Path, weights: Path, *says: str) -> Case:
    """report.py into `out` from `weights`: it must draft the report, listing an input with
    one of `says` (why it was not used)."""
    argv = ["report.py", "--out-dir", out, "--weights-dir", weights]
    check = lambda: any(text in (out / "report.md").read_text(encoding="utf-8") for text in says)  # noqa: E731
    return Case(category, name, argv, "ok", check)


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
        cases.append(
            report_case("report inputs", name, out, lab.ckpt.parent, "not what", "unreadable")
        )
    weights = lab.folder("report history")
    bad = lab.damaged_checkpoint("history_ints", lambda c: c.__setitem__("history", [1, 2]))
    (weights / "student_none.pth").write_bytes(bad.read_bytes())
    out = lab.folder("report history out")
    cases.append(
        report_case("report inputs", "a history of the wrong shape", out, weights, "unreadable")
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
    split.write_text(
        "\n" + split.read_text(encoding="utf-8").replace("\n", "\n\n"), encoding="utf-8"
    )
    out = lab.folder("split blank out")
    argv = ["test.py", "--checkpoint", lab.ckpt, "--data-root", root, *FAST_TEST, "--out-dir", out]
    cases.append(
        Case(
            "split files",
            "blank lines are skipped",
            argv,
            "ok",
            lambda: (
                json.loads((out / "test_student_none.json").read_text(encoding="utf-8"))[
                    "num_images"
                ]
                == 4
            ),
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
                "root:" not in (out / "report.md").read_text(encoding="utf-8")
                and "best1_x"
                not in (out / "report.md")
                .read_text(encoding="utf-8")
                .split("Missing inputs")[-1]
                .split("## 1.")[1]
            ),
        )
    )
    repo = lab.folder("submission")
    (repo / "outputs").mkdir()
    (repo / "outputs" / "secret.md").symlink_to("/etc/passwd")
    (repo / "README.md").write_text("x\n", encoding="utf-8")
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
            lambda: (
                len(
                    json.loads((cut / "kd_comparison.json").read_text(encoding="utf-8"))["students"]
                )
                == 2
            ),
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
    Path(f"{busy}.lock").write_text(f"{os.getpid()}\n", encoding="utf-8")
    folder_out = lab.folder("out is a folder") / "s.pth"
    folder_out.mkdir()
    file_parent = lab.work / "a_file"
    file_parent.write_text("x", encoding="utf-8")
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


def script(argv: list, **streams) -> subprocess.Popen:
    """A script of the lab started in the background, offline, its output to `streams`."""
    return subprocess.Popen(
        [sys.executable, *map(str, argv)], cwd=ROOT, env=ENV, text=True, **streams
    )


def interrupt_mid_epoch(argv: list, epoch: str) -> None:
    """Run train.py and press Ctrl+C once a step of `epoch` is done (its bar shows a loss)."""
    proc = script(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


# ----------------------------------------------------------------------------- round 4 (2026-12-07)

# The teacher cache, read and built by train.py --kd response --teacher-cache DIR.
CACHED = ("--kd", "response", "--epochs", "1", "--limit-train", "4")


def cached_train(lab: Lab, cache: Path, name: str) -> list:
    return lab.train(lab.folder(f"cache run {name}") / "s.pth", *CACHED, "--teacher-cache", cache)


def built_cache(lab: Lab) -> Path:
    """A cache of the lab's 4 train images, built once by a real run."""
    cache = lab.work / "cache_built"
    if not (cache / "index.json").exists():
        code, _, err = run(Case("", "", cached_train(lab, cache, "build"), "ok"))
        assert code == 0, err
    return cache


def damaged_cache(lab: Lab, name: str, change) -> Path:
    """A copy of the built cache with `change(index dict, logits path)` applied, or its
    index.json replaced by `change` when it is a string."""
    import shutil

    directory = lab.work / f"cache_{name.replace(' ', '_').replace('/', '')}"
    shutil.copytree(built_cache(lab), directory)
    if isinstance(change, str):
        (directory / "index.json").write_text(change, encoding="utf-8")
        return directory
    index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
    change(index, directory / "logits.f16")
    (directory / "index.json").write_text(json.dumps(index), encoding="utf-8")
    return directory


def cache_cases(lab: Lab) -> list:
    def entry(i, key, value):
        return lambda ix, logits: ix["images"][i].__setitem__(key, value)

    def swap(ix, logits):
        ix["images"][0], ix["images"][1] = ix["images"][1], ix["images"][0]

    def size_off(ix, logits):
        ix["images"][0]["size"] = [ix["images"][0]["size"][0] + 3, ix["images"][0]["size"][1]]

    damages = {
        "a map's shape changed": entry(0, "shape", [21, 3, 3]),
        "a map's shape of floats": entry(0, "shape", [21.0, 8.0, 8.0]),
        "a map's shape of two numbers": entry(0, "shape", [21, 8]),
        "a map of 20 classes": lambda ix, lg: ix["images"][0]["shape"].__setitem__(0, 20),
        "an offset beyond the logits": entry(-1, "offset", 10**9),
        "a negative offset": entry(1, "offset", -5),
        "two entries swapped": swap,
        "no images key": lambda ix, lg: ix.pop("images"),
        "images not a list": lambda ix, lg: ix.__setitem__("images", {"a": 1}),
        "an entry without its sha1": lambda ix, lg: ix["images"][1].pop("sha1"),
        "an entry without its name": lambda ix, lg: ix["images"][1].pop("name"),
        "an entry that is a string": lambda ix, lg: ix["images"].__setitem__(0, "x"),
        "a size of one number": entry(0, "size", [64]),
        "a negative size": entry(0, "size", [-64, 64]),
        "a size 3 pixels off": size_off,
        "values a string": lambda ix, lg: ix.__setitem__("values", "many"),
        "values not the sum": lambda ix, lg: ix.__setitem__("values", ix["values"] + 21),
        "another format": lambda ix, lg: ix.__setitem__("format", 99),
        "another resize": lambda ix, lg: ix.__setitem__("resize", 256),
        "logits cut short": lambda ix, lg: lg.write_bytes(lg.read_bytes()[:1000]),
        "logits with extra bytes": lambda ix, lg: lg.write_bytes(lg.read_bytes() + b"\0\0"),
        "logits missing": lambda ix, lg: lg.unlink(),
        "index.json not JSON": "{",
        "index.json a list": "[1, 2]",
    }
    cases = []
    for name, change in damages.items():
        directory = lab.work / f"cache_{name.replace(' ', '_').replace('/', '')}"
        setup = lambda name=name, change=change: damaged_cache(lab, name, change)  # noqa: E731
        argv = cached_train(lab, directory, name)
        cases.append(Case("teacher cache", name, argv, "error", setup=setup))
    return cases


def cache_build_cases(lab: Lab) -> list:
    truncated = lab.folder("build truncated")
    make_fake_voc(truncated, num_images=8)
    first = sorted((truncated / VOC.subdir / "JPEGImages").glob("*.jpg"))[0]
    first.write_bytes(first.read_bytes()[:300])
    bomb = lab.folder("build bomb")
    make_fake_voc(bomb, num_images=8)
    name = sorted((bomb / VOC.subdir / "JPEGImages").glob("*.jpg"))[0]
    Image.new("1", (15_000, 13_000)).save(name.with_suffix(".png"))  # 195 megapixels
    name.unlink()
    name.with_suffix(".png").rename(name)  # PIL reads the format from the bytes, not the name
    cases = []
    for label, root in [("a truncated train image", truncated), ("a decompression bomb", bomb)]:
        out = lab.folder(f"build {label}") / "s.pth"
        cache = out.parent / "cache"
        argv = ["train.py", "--data-root", root, "--out", out, "--out-dir", out.parent, *TINY]
        argv += [*CACHED, "--teacher-cache", cache]
        check = lambda cache=cache: not cache.exists() and no_temporaries(cache.parent)()  # noqa: E731
        cases.append(Case("cache build", label, argv, "error", check))
    shared = lab.folder("build shared") / "cache"
    first_run = {}

    def start_first():
        argv = cached_train(lab, shared, "shared first")
        first_run["proc"] = subprocess.Popen(
            [sys.executable, *map(str, argv)],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)

    def both_done():
        proc = first_run["proc"]
        return proc.wait(timeout=TIMEOUT) == 0 and (shared / "index.json").is_file()

    cases.append(
        Case(
            "cache build",
            "two runs building one cache at once",
            cached_train(lab, shared, "shared second"),
            "ok",
            both_done,
            setup=start_first,
        )
    )
    stopped = lab.folder("build stopped") / "cache"
    cases.append(
        Case(
            "cache build",
            "SIGTERM during the build",
            cached_train(lab, stopped, "stopped"),
            "error",
            lambda: not stopped.exists() and no_temporaries(stopped.parent)(),
            stop_after=9,
        )
    )
    return cases


def foreign_onnx_cases(lab: Lab) -> list:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def model(
        name: str, image=("n", 3, "h", "w"), kind=TensorProto.FLOAT, stride=1, meta=None, out_rank=4
    ) -> Path:
        """A 1 x 1 convolution to 21 channels; `meta` the student metadata as export.py writes."""
        inputs = image[1] if isinstance(image[1], int) else 3
        dtype = helper.tensor_dtype_to_np_dtype(kind)
        weight = numpy_helper.from_array(np.full((21, inputs, 1, 1), 0.1, dtype), "w")
        nodes = [helper.make_node("Conv", ["image", "w"], ["c"], strides=[stride, stride])]
        if out_rank == 3:
            nodes.append(helper.make_node("ReduceMean", ["c"], ["logits"], axes=[3], keepdims=0))
        else:
            nodes.append(helper.make_node("Identity", ["c"], ["logits"]))
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("image", kind, list(image))],
            [helper.make_tensor_value_info("logits", kind, None)],
            [weight],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        meta = {"kd": "none", "params": 10} if meta is None else meta
        helper.set_model_props(m, {"student": json.dumps(meta)})
        path = lab.work / f"foreign_{name.replace(' ', '_').replace('/', '')}.onnx"
        onnx.save_model(m, str(path))
        return path

    files = {
        "a float16 input": model("f16", kind=TensorProto.FLOAT16),
        "a float64 input": model("f64", kind=TensorProto.DOUBLE),
        "a fixed input size": model("fixed", image=(1, 3, 64, 64)),
        "a fixed height only": model("fixed h", image=("n", 3, 64, "w")),
        "4 input channels": model("4ch", image=("n", 4, "h", "w")),
        "1 input channel": model("1ch", image=("n", 1, "h", "w")),
        "logits at 1/8 of the input size": model("stride8", stride=8),
        "logits at 1/2 of the input size": model("stride2", stride=2),
        "logits of 3 dimensions": model("rank3", out_rank=3),
        "negative parameters": model("neg", meta={"kd": "none", "params": -5}),
        "parameters a float": model("float", meta={"kd": "none", "params": 10.5}),
        "parameters a bool": model("bool", meta={"kd": "none", "params": True}),
        "parameters a string": model("str", meta={"kd": "none", "params": "10"}),
        "another --kd": model("crd", meta={"kd": "crd", "params": 10}),
        "--kd a number": model("kd num", meta={"kd": 3, "params": 10}),
        "synthetic a string": model("syn", meta={"kd": "none", "params": 10, "synthetic": "no"}),
    }
    out = lab.folder("foreign out")
    no_result = lambda: not list(out.glob("*.json"))  # noqa: E731
    return [
        Case("foreign onnx", name, lab.test(path, out), "error", no_result)
        for name, path in files.items()
    ]


def shared_output_cases(lab: Lab) -> list:
    cases = []
    logs = lab.folder("shared logs")
    first = lab.folder("shared a") / "s.pth"
    their_log = logs / "s_log.csv"

    def first_run():
        code, _, err = run(Case("", "", lab.train(first, "--epochs", "1", out_dir=logs), "ok"))
        assert code == 0, err
        (logs / "kept.csv").write_bytes(their_log.read_bytes())

    second = lab.folder("shared b") / "s.pth"
    cases.append(
        Case(
            "shared outputs",
            "another --out folder, the same stem and --out-dir",
            lab.train(second, "--epochs", "1", out_dir=logs),
            "error",
            lambda: (
                their_log.read_bytes() == (logs / "kept.csv").read_bytes() and not second.exists()
            ),
            setup=first_run,
        )
    )
    curves_only = lab.folder("shared curves")
    (curves_only / "s_curves.png").write_bytes(b"the user's own picture")
    cases.append(
        Case(
            "shared outputs",
            "a picture of the curves' name in --out-dir",
            lab.train(lab.folder("shared c") / "s.pth", "--epochs", "1", out_dir=curves_only),
            "error",
            lambda: (curves_only / "s_curves.png").read_bytes() == b"the user's own picture",
        )
    )
    sbd_root = lab.folder("shared sbd")
    make_fake_voc(sbd_root, num_images=4)  # a synthetic VOC, then a real SBD beside it
    (sbd_root / "benchmark_RELEASE" / "dataset").mkdir(parents=True)
    real_train = sbd_root / "benchmark_RELEASE" / "dataset" / "train.txt"
    real_train.write_text("2008_000002\n", encoding="utf-8")
    cases.append(
        Case(
            "shared outputs",
            "--fake-voc --with-sbd beside a real SBD",
            ["dataset.py", "--fake-voc", sbd_root, "--num-images", "4", "--with-sbd"],
            "error",
            lambda: real_train.read_text(encoding="utf-8") == "2008_000002\n",
        )
    )
    devices = lab.folder("shared devices")
    (devices / "null.pth").symlink_to("/dev/null")
    os.mkfifo(devices / "fifo.pth")
    os.mkfifo(devices / "test_student_none.json")
    for name, out in [
        ("--out a link to /dev/null", devices / "null.pth"),
        ("--out a FIFO", devices / "fifo.pth"),
    ]:
        cases.append(
            Case(
                "shared outputs",
                name,
                lab.train(out, "--epochs", "1", out_dir=lab.folder("shared dev logs")),
                "error",
                lambda: Path("/dev/null").is_char_device() and (devices / "fifo.pth").is_fifo(),
            )
        )
    cases.append(
        Case(
            "shared outputs",
            "test.py's result file a FIFO",
            lab.test(lab.ckpt, devices),
            "error",
            lambda: (devices / "test_student_none.json").is_fifo(),
        )
    )
    photos = lab.folder("shared photos")
    Image.new("RGB", (20, 20), "red").save(photos / "a.jpg")
    out = lab.folder("shared photos out")
    argv = ["test.py", "--checkpoint", lab.ckpt, "--device", "cpu", "--out-dir", out]

    def segmented_once():
        code, _, err = run(Case("", "", argv + ["--images", photos], "ok"))
        assert code == 0, err

    cases.append(
        Case(
            "shared outputs",
            "test.py --images over its own output folder",
            argv + ["--images", photos, out / "photos"],
            "ok",
            lambda: len(list((out / "photos").iterdir())) == 2,
            setup=segmented_once,
        )
    )
    cases.append(
        Case(
            "shared outputs",
            "train.py --out model.onnx",
            lab.train(lab.folder("shared onnx") / "model.onnx", "--epochs", "1"),
            "error",
            lambda: not (lab.work / "shared_onnx" / "model.onnx").exists(),
        )
    )
    return cases


def mid_write_cases(lab: Lab) -> list:
    cases = []
    out = lab.folder("int8 stopped")
    onnx_out = out / "s.onnx"
    argv = ["export.py", "--checkpoint", lab.ckpt, "--out", onnx_out, "--int8", "--mobile"]
    argv += ["--calib", "4", "--data-root", lab.data]
    for after in (9, 14):
        cases.append(
            Case(
                "mid-write",
                f"Ctrl+C in export.py --int8 after {after} s",
                argv + (["--overwrite"] if after == 14 else []),
                "error",
                lambda: (
                    no_temporaries(out)()
                    and not [p for p in out.glob("*int8*") if p.stat().st_size == 0]
                ),
                stop_after=after,
                sig=signal.SIGINT,
            )
        )
    closed = lab.folder("closed stdout") / "s.pth"
    cases.append(
        Case(
            "mid-write",
            "a closed stdout during training (| head -0)",
            lab.train(closed, "--epochs", "2"),
            "quiet",
            lambda: torch.load(closed.with_name("s_last.pth"), weights_only=True)["epoch"] >= 1,
            close_stdout=True,
        )
    )
    full = lab.full_disk("full report", 1)
    if full is not None:
        report_out = full / "outputs"

        def old_report():
            report_out.mkdir()
            (report_out / "report.md").write_text("the user's edited report\n", encoding="utf-8")
            fill(full, 2_000)

        cases.append(
            Case(
                "mid-write",
                "a full disk during report.py --overwrite",
                [
                    "report.py",
                    "--out-dir",
                    report_out,
                    "--weights-dir",
                    lab.ckpt.parent,
                    "--overwrite",
                ],
                "error",
                lambda: (
                    (report_out / "report.md").read_text(encoding="utf-8")
                    == "the user's edited report\n"
                    and no_temporaries(report_out)()
                ),
                setup=old_report,
            )
        )
        cache_disk = lab.full_disk("full cache", 1)
        if cache_disk is not None:
            cache = cache_disk / "cache"
            cases.append(
                Case(
                    "mid-write",
                    "a full disk under --teacher-cache",
                    cached_train(lab, cache, "full cache"),
                    "error",
                    lambda: not cache.exists() and no_temporaries(cache_disk)(),
                    setup=lambda: fill(cache_disk, 20_000),
                )
            )
    return cases


def table_without_nan(path: Path) -> bool:
    """The comparison table names the unusable Step 1 result, and no cell of it holds a NaN."""
    text = path.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return "not what" in text and not any("nan" in row.lower() for row in rows)


def acceptance_cases(lab: Lab) -> list:
    cases = []
    void = lab.folder("void masks")
    make_fake_voc(void, num_images=8)
    for name in (
        (void / VOC.subdir / "ImageSets/Segmentation/train.txt").read_text(encoding="utf-8").split()
    ):
        mask = void / VOC.subdir / "SegmentationClass" / f"{name}.png"
        size = Image.open(mask).size
        Image.fromarray(np.full(size[::-1], 255, np.uint8)).save(mask)
    out = lab.folder("void out") / "s.pth"
    argv = ["train.py", "--data-root", void, "--out", out, "--out-dir", out.parent, *TINY]
    cases.append(
        Case("acceptances", "every training mask all 255", argv + ["--epochs", "1"], "error")
    )
    real = lab.folder("unmarked root")
    import shutil

    shutil.copytree(lab.data, real, dirs_exist_ok=True)
    (real / VOC.subdir / "SYNTHETIC.txt").unlink()
    resumed = lab.folder("resume unmarked")

    def copy_run(folder: Path, best: bool = True):
        def setup():
            last = lab.ckpt.with_name("student_none_last.pth")
            (folder / "s_last.pth").write_bytes(last.read_bytes())
            if best:
                (folder / "s.pth").write_bytes(lab.ckpt.read_bytes())

        return setup

    argv = ["train.py", "--data-root", real, "--out", resumed / "s.pth", "--out-dir", resumed]
    cases.append(
        Case(
            "acceptances",
            "resuming a SYNTHETIC run on an unmarked root",
            argv + [*TINY, "--epochs", "3", "--resume"],
            "error",
            setup=copy_run(resumed),
        )
    )
    no_best = lab.folder("resume no best")
    cases.append(
        Case(
            "acceptances",
            "resuming after the best checkpoint was deleted",
            lab.train(no_best / "s.pth", "--epochs", "3", "--resume"),
            "error",
            lambda: not (no_best / "s.pth").exists(),
            setup=copy_run(no_best, best=False),
        )
    )
    good = {
        "miou": 0.5,
        "iou": [0.5] * 21,
        "params": 32957013,
        "ms_per_image": 900.0,
        "pixel_acc": 0.9,
        "input_size": 520,
        "device_name": "cpu",
        "num_images": 2,
        "split": "val",
        "date": "2026-12-07",
    }
    for name, change in [
        ("a Step 1 JSON with a NaN mIoU", {"miou": float("nan")}),
        ("a Step 1 JSON with an infinite time", {"ms_per_image": float("inf")}),
        ("a Step 1 JSON with negative parameters", {"params": -1}),
        ("a Step 1 JSON with an mIoU of 150", {"miou": 150.0}),
        ("a Step 1 JSON with a negative class IoU", {"iou": [-0.5] * 21}),
    ]:
        folder = lab.folder(f"report {name}")
        (folder / "step1_fcn_resnet50.json").write_text(
            json.dumps({**good, **change}), encoding="utf-8"
        )
        unusable = "step1_fcn_resnet50.json`: not what"
        cases.append(report_case("acceptances", name, folder, lab.ckpt.parent, unusable))
        compare = ["test.py", "--compare", lab.ckpt, "--data-root", lab.data, *FAST_TEST]
        compare += ["--out-dir", folder]
        if "NaN" in name:
            cases.append(
                Case(
                    "acceptances",
                    f"test.py --compare beside {name[2:]}",
                    compare,
                    "ok",
                    lambda folder=folder: table_without_nan(folder / "kd_comparison.md"),
                )
            )
    lock_out = lab.folder("stale lock") / "s.pth"
    Path(f"{lock_out}.lock").write_text(
        "1\n", encoding="utf-8"
    )  # process 1 lives: init, not a run of the lab
    cases.append(
        Case(
            "acceptances",
            "a stale lock whose process id is another program's",
            lab.train(lock_out, "--epochs", "1"),
            "error",
            lambda: Path(f"{lock_out}.lock").exists(),
        )
    )
    return cases


def background(argv: list, ready: str, held: list) -> Callable:
    """A setup that starts `argv` and returns once its output holds `ready` (the run is at
    work, its outputs locked); the process goes into `held`, for the check to wait on."""

    def start():
        proc = script(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        held.append(proc)
        seen = ""
        while ready not in seen and (line := proc.stdout.readline()):
            seen += line

    return start


def finished(held: list) -> int:
    return held[0].wait(timeout=TIMEOUT) if held else -1


def round5_cases(lab: Lab) -> list:
    """What no generator reaches: signals to a process group with workers, runs at the same
    time, a closed stdout mid-export, torchrun's processes, a full disk under an export."""
    cases = []
    for sig in (signal.SIGHUP, signal.SIGTERM):
        out = lab.folder(f"group {sig.name}") / "s.pth"
        argv = lab.train(out, "--epochs", "1000", "--num-workers", "2")

        def kept(out=out):
            return out.with_name("s_last.pth").is_file() and no_temporaries(out.parent)()

        name = f"{sig.name} to the group, 2 workers"
        cases.append(
            Case("signals", name, argv, "error", kept, 20, sig, to_group=True, says="interrupted")
        )
    out = lab.folder("term imports") / "s.pth"
    name = "SIGTERM while the imports load"
    cases.append(Case("signals", name, lab.train(out), "error", stop_after=0.5, says="interrupted"))
    cases += concurrent_cases(lab)
    piped = lab.folder("export piped") / "m.onnx"
    argv = ["export.py", "--checkpoint", lab.ckpt, "--out", piped, "--mobile"]

    def both_written():
        return piped.is_file() and piped.with_suffix(".ort").is_file()

    cases.append(
        Case("closed stdout", "export.py | head -1", argv, "quiet", both_written, close_stdout=True)
    )
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    taken = lab.folder("torchrun taken") / "s.pth"
    argv = [*torchrun, *lab.train(taken, "--epochs", "1")]
    cases.append(
        Case(
            "torchrun",
            "an output taken, two processes",
            argv,
            "error",
            lambda: taken.read_bytes() == b"theirs",
            setup=lambda: taken.write_bytes(b"theirs"),
            says="already exist",
        )
    )
    stopped = lab.folder("torchrun interrupted") / "s.pth"
    argv = [*torchrun, *lab.train(stopped, "--epochs", "1000")]
    cases.append(
        Case(
            "torchrun",
            "Ctrl+C to the group, two processes",
            argv,
            "error",
            no_temporaries(stopped.parent),
            30,
            signal.SIGINT,
            to_group=True,
        )
    )
    disk = lab.full_disk("export disk", 3)
    if disk:
        argv = ["export.py", "--checkpoint", lab.ckpt, "--out", disk / "m.onnx"]
        cases.append(
            Case(
                "full disk",
                "export.py onto a full disk names the user's file",
                argv,
                "error",
                no_temporaries(disk),
                setup=lambda: fill(disk, 100_000),
                says=f"cannot write {disk / 'm.onnx'}",
            )
        )
    return cases


def concurrent_cases(lab: Lab) -> list:
    """Two runs at once on shared outputs, and a resume into another run's --out-dir."""
    logs, held = lab.folder("concurrent logs"), []
    first, second = lab.folder("concurrent a") / "s.pth", lab.folder("concurrent b") / "s.pth"
    # Long enough to be at work while the second starts (its imports take seconds).
    start = background(lab.train(first, "--epochs", "60", out_dir=logs), "epoch 1:", held)

    def log_whole():
        return finished(held) == 0 and len(read_lines(logs / "s_log.csv")) == 61

    cases = [
        Case(
            "concurrency",
            "two trainings, other --out folders, one --out-dir",
            lab.train(second, "--epochs", "1", out_dir=logs),
            "error",
            log_whole,
            setup=start,
            says="another run is writing",
        )
    ]
    theirs, resumed = lab.folder("their logs"), lab.folder("resumed") / "s.pth"

    def two_runs():
        for argv in (
            lab.train(resumed, "--epochs", "1"),
            lab.train(lab.folder("their run") / "s.pth", "--epochs", "1", out_dir=theirs),
        ):
            code, _, err = run(Case("", "", argv, "ok"))
            assert code == 0, err
        (theirs / "kept.csv").write_bytes((theirs / "s_log.csv").read_bytes())

    def kept_log():
        return (theirs / "s_log.csv").read_bytes() == (theirs / "kept.csv").read_bytes()

    argv = lab.train(resumed, "--epochs", "2", "--resume", out_dir=theirs)
    cases.append(
        Case(
            "concurrency",
            "--resume into another run's --out-dir",
            argv,
            "error",
            kept_log,
            setup=two_runs,
            says="not the log of the run",
        )
    )
    onnx, held2 = lab.folder("two exports") / "m.onnx", []
    export = ["export.py", "--checkpoint", lab.ckpt, "--out", onnx]
    int8 = [*export, "--int8", "--calib", "1", "--data-root", lab.data]
    cases.append(
        Case(
            "concurrency",
            "two export.py of one --out at once",
            export,
            "error",
            lambda: finished(held2) == 0 and onnx.is_file(),
            setup=background(int8, "exporting", held2),
            says="another run is writing",
        )
    )
    return cases


def read_lines(path: Path) -> list:
    return path.read_text(encoding="utf-8").splitlines()


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
    cache_cases,
    cache_build_cases,
    foreign_onnx_cases,
    shared_output_cases,
    mid_write_cases,
    acceptance_cases,
    round5_cases,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-k", default="", help="only the cases whose category or name holds this")
    p.add_argument("--makers", default="", help="only these case makers, by name, comma-separated")
    args = p.parse_args()
    makers = [m for m in MAKERS if not args.makers or m.__name__ in args.makers.split(",")]
    table = collections.defaultdict(collections.Counter)
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp))
        try:
            for case in (c for make in makers for c in make(lab)):
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
