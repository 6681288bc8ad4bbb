"""Try the scripts as a hostile user would: damaged, foreign and linked files, faults during
writes, colliding names, bad flags. Each case runs a script in its own interpreter, offline,
and is classified by what the user sees:

    clear error    exit 1 or 2 (130 for an interrupt) with one error line, no traceback
    handled        exit 0, and the check of the case holds (the right thing was done)
    traceback      a Python traceback reached the user
    silent accept  exit 0 where the input should have been refused, or a failed check
    loss           a file the user had was changed or lost
    hang           no exit within the time limit

    python tools/hostile.py              # every case; a table by category at the end
    python tools/hostile.py -k onnx      # the cases whose category or name holds "onnx"

Not part of the test suite (it takes minutes); run it on every change to input handling.
"""

import argparse
import collections
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
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


def run(argv: list, cwd: Path, stop_after: float | None = None, sig=signal.SIGTERM):
    """(exit code or None for a hang, stdout, stderr) of `python argv` offline; with
    stop_after, `sig` is sent after that many seconds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), str(ROOT)]))
    proc = subprocess.Popen(
        [sys.executable, *map(str, argv)],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if stop_after is not None:
        time.sleep(stop_after)
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, "", ""
    return proc.returncode, out, err


def classify(code, err: str, expect: str, check_ok: bool, kept: bool) -> str:
    if code is None:
        return "hang"
    if "Traceback" in err:
        return "traceback"
    if not kept:
        return "loss"
    if expect == "error":
        lines = [line for line in err.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        # cli.run's "error: ..." or "interrupted...", or argparse's "<script>: error: ..."
        clear = last.startswith(("error:", "interrupted")) or ": error: " in last
        if code in (1, 2, 130) and clear:
            return "clear error" if check_ok else "silent accept"
        return "silent accept"
    return "handled" if code == 0 and check_ok else "silent accept"


def train_argv(lab: "Lab", out: Path, *flags) -> list:
    """train.py on the lab's SYNTHETIC tree, smallest settings, writing beside `out`."""
    return [
        "train.py",
        "--data-root",
        lab.data,
        "--out",
        out,
        "--out-dir",
        out.parent,
        *TINY,
        *flags,
    ]


def test_argv(lab: "Lab", checkpoint: Path, out_dir: Path) -> list:
    """test.py on the lab's SYNTHETIC tree, timed briefly, writing into out_dir."""
    return [
        "test.py",
        "--checkpoint",
        checkpoint,
        "--data-root",
        lab.data,
        *FAST_TEST,
        "--out-dir",
        out_dir,
    ]


class Lab:
    """A working folder with a SYNTHETIC tree and one tiny trained checkpoint."""

    def __init__(self, work: Path):
        self.work, self.data = work, work / "data"
        make_fake_voc(self.data, num_images=8)
        self.ckpt = work / "weights" / "student_none.pth"
        code, _, err = run(
            [
                "train.py",
                "--data-root",
                self.data,
                "--out",
                self.ckpt,
                "--out-dir",
                work / "out",
                "--epochs",
                "1",
                *TINY,
            ],
            ROOT,
        )
        assert code == 0, err

    def script(self, name: str) -> Path:
        return ROOT / name

    def damaged_checkpoint(self, name: str, change) -> Path:
        ckpt = torch.load(self.ckpt, weights_only=True)
        change(ckpt)
        path = self.work / f"{name}.pth"
        torch.save(ckpt, path)
        return path


def checkpoint_cases(lab: Lab) -> list:
    def drop(key):
        return lambda c: c.pop(key)

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
        ("negative BatchNorm variance", absurd),
        (
            "1e38 everywhere",
            lambda c: [v.fill_(1e38) for v in c["model"].values() if v.is_floating_point()],
        ),
    ]:
        path = lab.damaged_checkpoint(name.replace(" ", "_"), change)
        cases.append(
            (
                "checkpoints",
                f"test.py: {name}",
                test_argv(lab, path, lab.work / "o"),
                "error",
            )
        )
    for name, change in [
        ("no optimizer", drop("optimizer")),
        ("no scaler", drop("scaler")),
        ("no history", drop("history")),
    ]:
        out = lab.work / name.replace(" ", "_") / "s.pth"
        out.parent.mkdir()
        (out.parent / "s_last.pth").write_bytes(lab.damaged_checkpoint("x", change).read_bytes())
        cases.append(
            (
                "checkpoints",
                f"--resume: {name}",
                train_argv(lab, out, "--epochs", "3", "--resume"),
                "error",
            )
        )
    broken = lab.damaged_checkpoint("args_list_cmp", set_("args", "x"))
    cases.append(
        (
            "checkpoints",
            "--compare lists a damaged file and goes on",
            [
                "test.py",
                "--compare",
                lab.ckpt,
                broken,
                "--data-root",
                lab.data,
                "--runs",
                "1",
                "--size",
                "64",
                "--device",
                "cpu",
                "--out-dir",
                lab.work / "cmp",
            ],
            "ok",
            lambda: "args_list_cmp.pth" in (lab.work / "cmp/kd_comparison.md").read_text(),
        )
    )
    return cases


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
    cases = []
    for name, args in [
        ("other input name", ("input", 21, good)),
        ("5 classes", ("image", 5, good)),
        ("300 classes", ("image", 300, good)),
        ("no metadata", ("image", 21, None)),
        ("metadata null", ("image", 21, "null")),
        ("metadata a list", ("image", 21, "[1]")),
        ("metadata a string", ("image", 21, '"x"')),
    ]:
        path = model(lab.work / f"{name.replace(' ', '_')}.onnx", *args)
        cases.append(
            (
                "onnx",
                name,
                test_argv(lab, path, lab.work / "onnx_out"),
                "error",
            )
        )
    return cases


def report_cases(lab: Lab) -> list:
    cases = []
    for name, files in [
        ("Step 1 JSON without miou", {"step1_fcn_resnet50.json": {"iou": []}}),
        ("Step 1 JSON miou a string", {"step1_fcn_resnet50.json": {"miou": "x", "iou": []}}),
        ("benchmark JSON with a bad row", {"benchmark.json": {"models": [1], "train_steps": []}}),
        ("benchmark JSON a list", {"benchmark.json": [1, 2]}),
    ]:
        out = lab.work / f"report_{name.replace(' ', '_')}"
        out.mkdir()
        for file, content in files.items():
            (out / file).write_text(json.dumps(content))
        cases.append(
            (
                "report inputs",
                name,
                ["report.py", "--out-dir", out, "--weights-dir", lab.ckpt.parent],
                "ok",
                lambda out=out: "not what" in (out / "report.md").read_text(),
            )
        )
    out = lab.work / "report_link"
    out.mkdir()
    (out / "kd_comparison.md").symlink_to("/etc/passwd")
    cases.append(
        (
            "paths",
            "report.py and a link to /etc/passwd",
            ["report.py", "--out-dir", out, "--weights-dir", lab.ckpt.parent],
            "ok",
            lambda: "root:" not in (out / "report.md").read_text(),
        )
    )
    return cases


def data_cases(lab: Lab) -> list:
    cases = []
    for name, text in [
        ("a repeated id", "fake_000004\nfake_000004\n"),
        ("an id with ../", "../../../../etc/hostname\n"),
    ]:
        root = lab.work / f"split_{name.replace(' ', '_').replace('/', '')}"
        make_fake_voc(root, num_images=8)
        (root / VOC.subdir / "ImageSets/Segmentation/val.txt").write_text(text)
        cases.append(("split files", name, ["dataset.py", "--check", "--data-root", root], "error"))
    root = lab.work / "split_blank"
    make_fake_voc(root, num_images=8)
    split = root / VOC.subdir / "ImageSets/Segmentation/val.txt"
    split.write_text("\n" + split.read_text().replace("\n", "\n\n"))
    cases.append(
        (
            "split files",
            "blank lines are skipped",
            ["dataset.py", "--data-root", root],
            "ok",
            lambda: True,
        )
    )
    root = lab.work / "linked"
    make_fake_voc(root, num_images=8)
    image = root / VOC.subdir / "JPEGImages" / "fake_000004.jpg"
    image.unlink()
    image.symlink_to(lab.data / VOC.subdir / "JPEGImages" / "fake_000005.jpg")
    cases.append(
        (
            "paths",
            "a dataset image linked out of the root",
            ["dataset.py", "--check", "--data-root", root],
            "error",
        )
    )
    return cases


def photo_cases(lab: Lab) -> list:
    a, b = lab.work / "a", lab.work / "b"
    for folder in (a, b):
        folder.mkdir()
        Image.new("RGB", (20, 20), "red").save(folder / "same.jpg")
    Image.new("RGB", (20, 20), "red").save(a / "x.JPG")
    Image.new("RGB", (20, 20), "red").save(a / "x.jpg")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(a / "deep.png")
    out = lab.work / "photos_out"
    return [
        (
            "collisions",
            "own photos with colliding names",
            [
                "test.py",
                "--checkpoint",
                lab.ckpt,
                "--images",
                a,
                "--images",
                b,
                "--device",
                "cpu",
                "--out-dir",
                out,
            ],
            "ok",
            lambda: len(list((out / "photos").glob("*_mask.png"))) == 5,
        )
    ]


EXTRACT = """
import sys
import cli, download, voc
cli.run(lambda _: download.safe_extract(sys.argv[1], sys.argv[2], voc.VOC), lambda: None)
"""


def archive_cases(lab: Lab) -> list:
    """safe_extract on archives that reach it (a manually placed archive must first match
    VOC's md5, which none of these can)."""
    make_fake_voc(lab.work / "tar_src", num_images=2)
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w") as tar:
        tar.add(lab.work / "tar_src" / "VOCdevkit", "VOCdevkit")
    clash = io.BytesIO()
    with tarfile.open(fileobj=clash, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("VOCdevkit/x"), io.BytesIO(b""))
        folder = tarfile.TarInfo("VOCdevkit/x")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    other = io.BytesIO()
    with tarfile.open(fileobj=other, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("photos/a.jpg"), io.BytesIO(b""))
    archives = {
        "truncated": good.getvalue()[: len(good.getvalue()) // 2],
        "file and folder of one name": clash.getvalue(),
        "not the VOC layout": other.getvalue(),
    }
    cases = []
    for name, content in archives.items():
        path = lab.work / f"{name.replace(' ', '_')}.tar"
        path.write_bytes(content)
        dest = lab.work / f"{path.stem}_out"
        cases.append(("extraction", name, ["-c", EXTRACT, path, dest], "error"))
    return cases


def write_cases(lab: Lab) -> list:
    out = lab.work / "busy" / "s.pth"
    out.parent.mkdir()
    Path(f"{out}.lock").write_text(f"{os.getpid()}\n")
    return [
        (
            "writes",
            "a second run on the same --out",
            train_argv(lab, out, "--epochs", "1"),
            "error",
        )
    ]


def flag_cases(lab: Lab) -> list:
    train = ["train.py", "--data-root", lab.data, *TINY]
    return [
        ("flags", name, argv, "error")
        for name, argv in [
            ("--seed beyond 64 bits", train + ["--seed", str(2**70)]),
            ("--seed negative", train + ["--seed", "-3"]),
            ("--tau 1e-300", train + ["--kd", "response", "--tau", "1e-300"]),
            ("--out empty", train + ["--out", ""]),
            ("--fake-voc empty", ["dataset.py", "--fake-voc", ""]),
            ("--fake-voc with --download", ["dataset.py", "--fake-voc", "x", "--download"]),
            (
                "--teacher-cache with --kd feature",
                train + ["--kd", "feature", "--teacher-cache", "c"],
            ),
        ]
    ]


def interrupt_cases(lab: Lab) -> list:
    out = lab.work / "term" / "s.pth"
    out.parent.mkdir()
    return [
        (
            "interrupts",
            "SIGTERM during training",
            train_argv(lab, out, "--epochs", "1000"),
            "error",
            lambda: not list(out.parent.glob(".*tmp*")),
            25,
        )
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-k", default="", help="only the cases whose category or name holds this")
    args = p.parse_args()
    table = collections.defaultdict(collections.Counter)
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp))
        makers = (
            checkpoint_cases,
            onnx_cases,
            report_cases,
            data_cases,
            photo_cases,
            archive_cases,
            write_cases,
            flag_cases,
            interrupt_cases,
        )
        for case in (c for make in makers for c in make(lab)):
            category, name, argv, expect, *rest = case
            if args.k not in f"{category} {name}":
                continue
            check = rest[0] if rest else (lambda: True)
            stop_after = rest[1] if len(rest) > 1 else None
            before = lab.ckpt.read_bytes()
            code, out, err = run(argv, ROOT, stop_after)
            try:
                check_ok = check()
            except OSError:
                check_ok = False
            outcome = classify(code, err, expect, check_ok, lab.ckpt.read_bytes() == before)
            table[category][outcome] += 1
            last = (err.strip().splitlines() or [""])[-1][:110]
            print(f"{outcome:13s} {category:14s} {name:44s} {last}", flush=True)
    print("\n| category | cases | " + " | ".join(OUTCOMES) + " |")
    print("|---|---:|" + "---:|" * len(OUTCOMES))
    for category, counts in table.items():
        cells = " | ".join(str(counts[o]) for o in OUTCOMES)
        print(f"| {category} | {sum(counts.values())} | {cells} |")
    bad = sum(t[o] for t in table.values() for o in ("traceback", "silent accept", "loss", "hang"))
    sys.exit(1 if bad else 0)


OUTCOMES = ("clear error", "handled", "traceback", "silent accept", "loss", "hang")

if __name__ == "__main__":
    main()
