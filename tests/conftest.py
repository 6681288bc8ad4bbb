"""Shared fixtures: no network, a SYNTHETIC VOC tree, a script runner, one trained checkpoint.

Every test runs offline: tests/netguard/netguard.py makes any connection beyond 127.0.0.1
raise, in this process and (through its sitecustomize.py) in every script a test starts.
"""

import contextlib
import copy
import importlib.util
import inspect
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from hypothesis import settings
from hypothesis import strategies as st

# Generated inputs: a bounded, repeatable number of examples in the suite (CI), and many more,
# drawn anew, with HYPOTHESIS_PROFILE=long (dev/README.md).
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("long", max_examples=2000, deadline=None)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(count: int) -> int:
    """A generated test's own example count in the suite (`count`, where its examples are
    slow or it needs more than 25); under the long profile, the profile's."""
    return settings.default.max_examples if PROFILE == "long" else count


# Under pytest-xdist (`-n auto`, README.md) each worker is one process on one core: torch's own
# threads would only compete with the other workers for the cores.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
GUARD = Path(__file__).resolve().parent / "netguard"
sys.path.insert(0, str(GUARD))
import netguard  # noqa: E402

netguard.install()

import cli  # noqa: E402

# cli ends a script at once on Ctrl+C until `run` starts; pytest's own process is no script:
# Ctrl+C stops the tests as pytest does.
signal.signal(signal.SIGINT, signal.default_int_handler)

from synthetic import make_fake_voc  # noqa: E402


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    """An empty torch hub cache: no test can use weights someone downloaded earlier."""
    return tmp_path_factory.mktemp("torch_home")


@pytest.fixture(autouse=True)
def isolated_torch_home(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))


@pytest.fixture(autouse=True)
def nothing_written_into_the_repository():
    """Tests write under tmp_path only: a file or folder new in the repository root (an
    outputs/ made by a script's default --out-dir, say) fails the test that made it."""
    before = set(os.listdir(ROOT))
    yield
    assert set(os.listdir(ROOT)) - before == set(), "a test wrote into the repository root"


@pytest.fixture(scope="session")
def fake_voc(tmp_path_factory) -> Path:
    """Data root of a SYNTHETIC VOC tree: 8 images, 4 train and 4 val."""
    root = tmp_path_factory.mktemp("fake_voc")
    make_fake_voc(root, num_images=8, seed=0)
    return root


def visible(folder: Path) -> list:
    """The entries of a folder a user sees: not the hidden lock files beside the outputs."""
    return sorted(p for p in Path(folder).iterdir() if not p.name.startswith("."))


# ----------------------------------------------------------------------------- generated damage

ODD_JSON = [None, "text", "", -1, 0, 1, 2.5, -0.5, 1e308, math.nan, math.inf, True, [], {}, [1]]


def json_places(obj, path=()) -> list:
    """The path of keys to every entry and item of a JSON document, at every depth."""
    found = [path] if path else []
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    )
    for key, value in items:
        found += json_places(value, (*path, key))
    return found


@st.composite
def damaged_json(draw, original):
    """A copy of a JSON document with one entry, anywhere, dropped, replaced by an odd value
    or, for a number, moved a little or a lot; and (what was done, where)."""
    data = copy.deepcopy(original)
    path = draw(st.sampled_from(json_places(data)))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    value = parent[path[-1]]
    kinds = ["drop", "odd"] + (["nudge"] if isinstance(value, (int, float)) else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "drop":
        parent.pop(path[-1])
    elif kind == "odd":
        parent[path[-1]] = draw(st.sampled_from(ODD_JSON))
    else:
        parent[path[-1]] = value + draw(st.sampled_from([-1, 1, 0.5, -(10**6), 10**6]))
    return data, (kind, path)


def dest(flag: str) -> str:
    """argparse's attribute for a flag: --crop-size -> crop_size."""
    return flag.removeprefix("--").replace("-", "_")


def documented_defaults(args: dict) -> dict:
    """{flag: default as written} of the rows of the docs' tables of defaults
    ("| `--flag` | value | why |") whose flag is in `args` (a parsed namespace, as a dict)."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))
    rows = re.findall(r"^\| `(--[\w-]+)` \| ([^|]+) \|", text, flags=re.MULTILINE)
    return {flag: value.split()[0].rstrip(",") for flag, value in rows if dest(flag) in args}


def assert_limits(parse_args, flag: str, taken, refused, capsys, extra=()) -> None:
    """parse_args (argv -> Namespace) takes each value of `taken` for `flag` as it is written
    and refuses each of `refused` with argparse's "must be" line; "--flag=value", so that a
    negative value is not read as a flag. `extra`: the other flags a limit needs to be valid."""
    for value in taken:
        parsed = getattr(parse_args([*extra, f"{flag}={value}"]), dest(flag))
        assert parsed == type(parsed)(value), (flag, value)
    for value in refused:
        with pytest.raises(SystemExit):
            parse_args([f"{flag}={value}"])
        assert f"argument {flag}: must be" in capsys.readouterr().err


def run_python(*argv, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """`python *argv` in a fresh interpreter, offline, with `env` added to the environment;
    returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(GUARD), str(ROOT)]), **(env or {})}
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_subprocess(script: str, *args, **kwargs):
    """Run a repository script in its own interpreter, offline: for what only a real process
    shows (its exit code and output as a user sees them, signals, torchrun)."""
    return run_python(ROOT / script, *args, **kwargs)


def run_script(script: str, *args) -> subprocess.CompletedProcess:
    """A script's entry point, cli.run(main, parse_args), in this process (a fresh interpreter
    costs seconds of imports): its exit code and what it printed, as a CompletedProcess."""
    module = load_script(script.removesuffix(".py"))
    argv = [str(a) for a in args]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run(module.main, lambda: module.parse_args(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def load_script(name: str):
    """Import a root script by path (test.py would otherwise clash with Python's own `test`)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HISTORY_ROW = {
    "epoch": 1,
    "data": "SYNTHETIC",
    "device": "a CPU",
    "lr": 0.01,
    "train_loss": 1.0,
    "train_ce": 1.0,
    "train_kl": 0.5,  # the terms of every --kd method: a row fit for any
    "train_feat": 0.5,
    "val_ce": 1.0,
    "val_miou": 0.5,
    "epoch_time_s": 1.0,
}


def checkpoint_of(student, kd: str = "none", synthetic: bool = True, **args) -> dict:
    """What train.py saves after one epoch of `student` (checkpoints.training_state)."""
    import torch

    from checkpoints import training_state
    from distill import KDConfig, Trainee
    from lab import OptimConfig, build_optimizer

    trainee = Trainee(student, KDConfig(kd))
    optimizer = build_optimizer(trainee.parameters(), OptimConfig())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    flags = {"kd": kd, "epochs": 2, **args}
    return training_state(trainee, optimizer, scaler, flags, [dict(HISTORY_ROW)], synthetic)


# train.py's smallest settings: random weights, tiny crops and batches, 4 + 2 images
TINY_TRAIN = tuple(
    "--no-pretrained-backbone --teacher-weights none --device cpu --batch-size 2 --crop-size 64 "
    "--num-workers 0 --limit-train 4 --limit-val 2".split()
)


def train_tiny(data_root: Path, out: Path, *flags):
    """train.py on the SYNTHETIC tree with the smallest settings, its log beside `out`."""
    return run_script(
        "train.py",
        "--data-root",
        data_root,
        "--out",
        out,
        "--out-dir",
        out.parent,
        *TINY_TRAIN,
        *flags,
    )


# Keys that Step 1's and test.py's JSON both hold.
RESULT_KEYS = {
    "miou",
    "iou",
    "pixel_acc",
    "params",
    "ms_per_image",
    "device",
    "split",
    "num_images",
    "synthetic",
}


@pytest.fixture(scope="session")
def trained(fake_voc, tmp_path_factory) -> dict:
    """One tiny --kd none run of 2 epochs on the SYNTHETIC tree: its paths and its output."""
    work = tmp_path_factory.mktemp("trained")
    out = work / "student_none.pth"
    proc = train_tiny(fake_voc, out, "--kd", "none", "--epochs", 2)
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "logs": work, "proc": proc}


def demo_commands() -> tuple:
    """(the data and the trainings, test.txt's commands) of demo.txt, as run.py reads them."""
    found = [argv for _, argv in load_script("run").commands(ROOT / "demo.txt")]
    first = next(i for i, argv in enumerate(found) if argv[1] == "test_pretrained.py")
    return found[:first], found[first:]


def run_all(steps: list) -> list:
    """Each command in this process (an interpreter's start costs seconds), the zip packing
    this repository's code; their CompletedProcess."""
    done = []
    for argv in steps:
        extra = ["--root", ROOT] if argv[1] == "make_submission.py" else []
        done.append(run_script(argv[1], *argv[2:], *extra))
        assert done[-1].returncode == 0, (argv, done[-1].stderr[-2000:])
    return done


@pytest.fixture(scope="session")
def lab_demo(tmp_path_factory) -> dict:
    """demo.txt run once in its own folder (the lab on SYNTHETIC data: two tiny trainings, then
    test.txt's commands): the folder, and each command's CompletedProcess by script. The
    xdist workers share one run: the first to take the lock makes it, the others read its
    record. Tests read the folder; one that changes it works on a copy."""
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if WORKER else shared  # the folder of every worker's own
    work, record = shared / "lab_demo", shared / "lab_demo.json"
    with FileLock(shared / "lab_demo.lock"):
        if not record.exists():
            work.mkdir()
            setup, rehearsed = demo_commands()
            here = os.getcwd()
            os.chdir(work)  # contextlib.chdir is Python 3.11's
            try:
                run_all(setup)
                done = run_all(rehearsed)
            finally:
                os.chdir(here)
            outcome = {a[1]: [p.returncode, p.stdout, p.stderr] for a, p in zip(rehearsed, done)}
            record.write_text(json.dumps(outcome), encoding="utf-8")
    outcome = json.loads(record.read_text(encoding="utf-8"))
    proc = {script: subprocess.CompletedProcess(script, *o) for script, o in outcome.items()}
    return {"work": work, "demo": work / "demo", "proc": proc}


@pytest.fixture(scope="session")
def export_run(lab_demo) -> dict:
    """The demo's export.py run: --int8 calibrated on 2 SYNTHETIC images, --mobile, of the
    --kd response student (its teacher random)."""
    weights = lab_demo["demo"] / "weights"
    return {
        "checkpoint": weights / "student_response.pth",
        "onnx": weights / "student_response.onnx",
        "int8": weights / "student_response_int8.onnx",
        "ort": weights / "student_response.ort",
        "int8 ort": weights / "student_response_int8.ort",
        "data": lab_demo["demo"] / "data",
        "proc": lab_demo["proc"]["export.py"],
        "work": lab_demo["work"],  # the folder it ran in: it printed paths relative to it
    }


@pytest.fixture(scope="session")
def exported(export_run) -> Path:
    return export_run["onnx"]


# What makes a test slow (seconds, not milliseconds): a real training run, a script in its own
# interpreter, or a fixture that trains or exports. `python -m pytest -m "not slow"` skips them.
DEMO_FIXTURES = {"lab_demo", "export_run", "exported"}
SLOW_FIXTURES = {"trained", "person_checkpoint", *DEMO_FIXTURES}
SLOW_CALLS = (
    "run_subprocess(",
    "run_python(",
    "subprocess.Popen(",
    "mp.spawn(",
    "train_tiny(",
    "train.main(",
    "run_demo(",
    'run_script("train.py"',
    'run_script("benchmark.py"',
    'run_script("export.py"',
    'run_script("test_pretrained.py"',
)


# What only a POSIX system (Linux, macOS) has: FIFOs, process groups and their signals, /proc,
# links a user may make, tmpfs. On Windows (.github/workflows/ci.yml) such a test is skipped.
POSIX_ONLY = (
    "mkfifo",
    "killpg",
    "SIGHUP",
    "SIGKILL",
    "/proc/",
    "symlink_to",
    "start_new_session",
    "os.kill(",
    "RLIMIT",
)


def pytest_collection_modifyitems(items):
    """Mark slow the tests that use a slow fixture or make a slow call (read off their source,
    spaces and line breaks removed), besides those marked by hand; on a system that is not
    POSIX, skip those that need it."""
    first, readers = [], []
    for item in items:
        source = inspect.getsource(item.function) if hasattr(item, "function") else ""
        source = "".join(source.split())
        if SLOW_FIXTURES & set(item.fixturenames) or any(c in source for c in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
        if os.name != "posix" and any(c in source for c in POSIX_ONLY):
            item.add_marker(pytest.mark.skip(reason="needs a POSIX system"))
        if DEMO_FIXTURES & set(item.fixturenames):
            (first if "run_all(" in source and not first else readers).append(item)
    # The demo's longest test first, its other readers last: under pytest-xdist one worker
    # makes the demo while the others run the rest, and none waits for it.
    items[:] = first + [item for item in items if item not in first + readers] + readers
