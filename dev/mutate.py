"""Plant one-line bugs systematically, one at a time, and run the tests that reach each: a mutant
the tests pass is a bug they would not catch.

    python dev/mutate.py map                          # once: which tests call which function
    python dev/mutate.py run metrics.py distill.py    # every mutant of these modules
    python dev/mutate.py run train.py --function resume
    python dev/mutate.py run cli.py --list            # the mutants, not run
    python dev/mutate.py run metrics.py --survivors-of metrics.log   # rerun what survived
    python dev/mutate.py run train.py --not-in train.partial.log    # finish a stopped run

The mutations, each at one place inside a function: comparisons turned around (== !=, < >=,
<= >, in / not in, is / is not), + - and * / swapped, numbers changed (n -> n + 1, x -> 2x),
True <-> False (keyword flags included), `and` <-> `or`, `not` dropped, a statement that only
calls something removed. Never in a docstring, nor in the keywords that only draw progress
bars or schedule copies (PRESENTATION: tqdm's leave, disable, ...; non_blocking).

`map` runs the whole suite once, in this process, recording with sys.setprofile which functions
of the project each test calls, itself, through its fixtures or in the processes it starts
(SUBPROCESS_HOOK), and how long it takes (.mutate/map.json). `run` gives each mutant the tests
that call its function, fastest first, and stops at the first failure. Each mutant runs in a
process forked from this one once torch and the other libraries are imported (seconds saved
per mutant), in a private copy of the repository: --jobs mutants side by side, one core each,
and the working tree never touched.
A mutant whose tests pass the time limit counts as killed (timeout). A function that no test
reaches at all gets the module's own test file.

Why a tool of our own beside mutmut (requirements-dev.txt, configured in pyproject.toml):
measured here on 2026-12-01, mutmut 3.8.1 made 3,952 mutants of the eight modules (most in
help and error texts) and ran about 3 a minute (each with every test reaching its function,
the end-to-end ones included), about 20 hours for a run; and it leaves decorated functions
(metrics.evaluate under @torch.inference_mode, for one) unmutated.
"""

import argparse
import ast
import collections
import dataclasses
import json
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".mutate"  # the map; ignored by git
# Each process uses one core: two mutants side by side on two cores, never contending.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
COMPARE = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.LtE: ast.Gt,
    ast.Gt: ast.LtE,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
ARITHMETIC = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}


# ----------------------------------------------------------------------------- the mutants


# Keywords that only change how progress is shown or how a copy is scheduled, never a number,
# a file or a refusal: their mutants are equivalent for a user, and each would cost a full run.
PRESENTATION = {"leave", "dynamic_ncols", "disable", "unit_scale", "unit_divisor", "non_blocking"}


def unmutated(tree: ast.AST) -> set:
    """ids of the nodes never mutated: docstrings and the PRESENTATION keywords' values."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                found.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg in PRESENTATION:
            found |= {id(n) for n in ast.walk(node.value)}
    return found


def mutation(node: ast.AST) -> tuple | None:
    """(description, function that mutates `node` in place) of this node's mutation, or None."""
    if isinstance(node, ast.Compare) and type(node.ops[0]) in COMPARE:
        new = COMPARE[type(node.ops[0])]
        return f"{type(node.ops[0]).__name__} -> {new.__name__}", lambda n: n.ops.__setitem__(
            0, new()
        )
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        new = ARITHMETIC[type(node.op)]
        return f"{type(node.op).__name__} -> {new.__name__}", lambda n: setattr(n, "op", new())
    if isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        return f"{type(node.op).__name__} -> {new.__name__}", lambda n: setattr(n, "op", new())
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return f"{node.value} -> {not node.value}", lambda n: setattr(n, "value", not n.value)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        new = node.value + 1 if isinstance(node.value, int) else (node.value * 2 or 1.0)
        return f"{node.value!r} -> {new!r}", lambda n: setattr(n, "value", new)
    return None


class Planter(ast.NodeTransformer):
    """Walks a module; applies mutation number `target` (in walk order) when it is given, and
    records every mutation site as (function's qualified name, description, line)."""

    def __init__(self, target: int | None = None, skip: set = frozenset()):
        self.target, self.skip, self.sites, self.scope = target, skip, [], []

    def visit_ClassDef(self, node):
        return self.within(node, node.name)

    def visit_FunctionDef(self, node):
        return self.within(node, node.name)

    def within(self, node, name: str):
        in_function = any(kind == "function" for kind, _ in self.scope)
        self.scope.append(("function" if isinstance(node, ast.FunctionDef) else "class", name))
        if in_function:  # as Python names a nested function: outer.<locals>.inner
            self.scope.insert(-1, ("function", "<locals>"))
        self.generic_visit(node)
        del self.scope[-2 if in_function else -1 :]
        return node

    def qualname(self) -> str:
        return ".".join(name for _, name in self.scope)

    def active(self, node) -> bool:
        inside = any(kind == "function" for kind, _ in self.scope)
        return inside and id(node) not in self.skip

    def hit(self, node, description: str) -> bool:
        self.sites.append((self.qualname(), description, getattr(node, "lineno", 0)))
        return len(self.sites) - 1 == self.target

    def visit_Expr(self, node):
        self.generic_visit(node)
        if self.active(node.value) and isinstance(node.value, ast.Call):
            if self.hit(node, "call removed: " + ast.unparse(node.value)[:60]):
                return ast.Pass()
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if self.active(node) and isinstance(node.op, ast.Not) and self.hit(node, "not dropped"):
            return node.operand
        return node

    def generic_visit(self, node):
        super().generic_visit(node)
        found = mutation(node) if self.active(node) else None
        if found and self.hit(node, found[0]):
            found[1](node)
        return node


def mutants(source: str) -> list:
    """[(index, qualified name, description with its occurrence in the function, line)]."""
    tree = ast.parse(source)
    planter = Planter(skip=unmutated(tree))
    planter.visit(tree)
    seen, found = collections.Counter(), []
    for index, (function, description, line) in enumerate(planter.sites):
        seen[function, description] += 1
        found.append((index, function, f"{description} #{seen[function, description]}", line))
    return found


def mutated_source(source: str, index: int) -> str:
    tree = ast.parse(source)
    Planter(index, unmutated(tree)).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree))


# ----------------------------------------------------------------------------- the map


class CallMap:
    """A pytest plugin: for each test, the project functions it calls ('file.py::qualname'),
    itself or in the setup of the fixtures it uses, and its duration. What runs in the
    processes a test starts is recorded by SUBPROCESS_HOOK, named by the test it ran for."""

    def __init__(self):
        self.files = {str(p): p.name for p in ROOT.glob("*.py")}
        self.calls = collections.defaultdict(set)  # test node id or fixture:name -> calls
        self.current = None
        self.seconds = collections.Counter()
        self.fixtures = {}

    def profile(self, frame, event, arg):
        if event == "call" and self.current is not None:
            name = self.files.get(frame.f_code.co_filename)
            if name:
                self.current.add(f"{name}::{frame.f_code.co_qualname}")

    def recording(self, key: str):
        outer, self.current = self.current, self.calls[key]
        os.environ["MUTATE_TEST"] = key  # what a process started now records for
        return outer

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        outer = self.recording(f"fixture:{fixturedef.argname}")
        try:
            yield
        finally:
            self.current = outer
            if outer is not None:
                os.environ["MUTATE_TEST"] = request.node.nodeid

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.fixtures[item.nodeid] = list(item.fixturenames)
        self.recording(item.nodeid)
        sys.setprofile(self.profile)
        try:
            yield
        finally:
            sys.setprofile(None)
            self.current = None

    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid] += report.duration

    def result(self, subprocess_calls: dict) -> dict:
        for key, calls in subprocess_calls.items():
            self.calls[key] |= calls
        tests = {}
        for nodeid, fixtures in self.fixtures.items():
            calls = set(self.calls[nodeid])
            for name in fixtures:
                calls |= self.calls.get(f"fixture:{name}", set())
            tests[nodeid] = {"seconds": self.seconds[nodeid], "calls": sorted(calls)}
        return tests


# Run at the start of every Python process while the map is made (a .pth file in
# site-packages, as coverage.py measures subprocesses): the scripts a test runs in their own
# interpreter, torchrun's workers, mp.spawn's processes. Forked DataLoader workers end with
# os._exit and record nothing; the process that forked them does.
SUBPROCESS_HOOK = """
import atexit, json, os, sys
_root, _calls = os.environ["MUTATE_ROOT"], set()
def _profile(frame, event, arg):
    path = frame.f_code.co_filename
    if event == "call" and os.path.dirname(path) == _root:
        _calls.add(os.path.basename(path) + "::" + frame.f_code.co_qualname)
@atexit.register
def _write():
    out = os.path.join(os.environ["MUTATE_CALLS"], f"{os.getpid()}.json")
    with open(out, "w") as f:
        json.dump({"test": os.environ.get("MUTATE_TEST", ""), "calls": sorted(_calls)}, f)
sys.setprofile(_profile)
"""


def make_map() -> None:
    plugin = CallMap()
    pth = Path(sysconfig.get_paths()["purelib"]) / "mutate_map_hook.pth"
    with tempfile.TemporaryDirectory() as calls:
        hook = Path(calls) / "hook.py"
        hook.write_text(SUBPROCESS_HOOK, encoding="utf-8")
        os.environ.update(MUTATE_ROOT=str(ROOT), MUTATE_CALLS=calls, MUTATE_HOOK=str(hook))
        pth.write_text(
            "import os; exec(open(os.environ['MUTATE_HOOK']).read(), {}) "
            "if 'MUTATE_HOOK' in os.environ else None\n",
            encoding="utf-8",
        )
        try:
            argv = ["-q", "-p", "no:cacheprovider", str(ROOT / "tests")]
            code = pytest.main(argv, plugins=[plugin])
        finally:
            pth.unlink()
        found = collections.defaultdict(set)
        for record in Path(calls).glob("*.json"):
            data = json.loads(record.read_text(encoding="utf-8"))
            found[data["test"]] |= set(data["calls"])
    if code != 0:
        raise SystemExit(f"the suite fails without any mutant (exit {code}); fix it first")
    STATE.mkdir(exist_ok=True)
    (STATE / "map.json").write_text(json.dumps(plugin.result(found), indent=1), encoding="utf-8")
    print(f"wrote {STATE / 'map.json'}")


# ----------------------------------------------------------------------------- running mutants


def preload() -> None:
    """Import what every test imports and takes seconds to import, before any fork."""
    import matplotlib.figure  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
    import scipy.io  # noqa: F401
    import torch  # noqa: F401
    import torchvision.models.segmentation  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401


def worker_copy(work: Path, i: int, originals: dict) -> Path:
    """A copy of the repository with the modules to mutate as they were read at the start."""
    copy = work / f"w{i}"
    ignore = shutil.ignore_patterns(
        ".git", ".mutate", "__pycache__", "demo", "data", "weights", "outputs"
    )
    shutil.copytree(ROOT, copy, ignore=ignore, symlinks=True)
    for module, source in originals.items():
        (copy / module).write_text(source, encoding="utf-8")
    return copy


def start(copy: Path, module: str, source: str, tests: list) -> int:
    """Fork a process that runs `tests` in `copy` with the mutant `source` as `module`."""
    (copy / module).write_text(source, encoding="utf-8")
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: its own process group, so that a timeout stops what it started too
        os.setpgrp()
        os.chdir(copy)
        # No .pyc: one keyed on a source's size and mtime in seconds would let the next
        # mutant of the same size, written within the same second, run this one's code.
        sys.dont_write_bytecode = True
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # and the scripts the tests start
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        argv = ["-x", "-q", "-p", "no:cacheprovider", f"--basetemp={copy}.tmp", f"--rootdir={copy}"]
        os._exit(pytest.main(argv + tests))
    except BaseException:
        os._exit(3)


def reset(copy: Path, module: str, original: str, listing: set) -> None:
    """The copy as it was: the module restored, anything a mutant wrote at the top removed."""
    (copy / module).write_text(original, encoding="utf-8")
    for name in set(os.listdir(copy)) - listing:
        path = copy / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def tests_for(mapping: dict, module: str, function: str) -> tuple:
    """(the node ids of the tests that call module::function, fastest first; their seconds).
    A function no test calls in-process (it runs only in a subprocess a test starts) gets the
    module's own test file, all of it."""
    key = f"{module}::{function}"
    found = sorted((t["seconds"], nodeid) for nodeid, t in mapping.items() if key in t["calls"])
    if not found:
        own = f"tests/test_{Path(module).stem}.py::"
        found = sorted((t["seconds"], n) for n, t in mapping.items() if n.startswith(own))
    return [nodeid for _, nodeid in found], sum(s for s, _ in found)


def run_mutants(args) -> None:
    mapping = json.loads((STATE / "map.json").read_text(encoding="utf-8"))
    wanted = args.survivors_of.read_text(encoding="utf-8") if args.survivors_of else None
    done = reported(args.not_in.read_text(encoding="utf-8")) if args.not_in else set()
    # The tree as it is now: editing it while the run goes on changes nothing in the run.
    originals = {module: (ROOT / module).read_text(encoding="utf-8") for module in args.modules}
    queue = []
    for module in args.modules:
        for index, function, description, line in mutants(originals[module]):
            name = f"{module}:{function}: {description}"
            if args.function and not set(args.function) & set(function.split(".")):
                continue
            if wanted is not None and f"survived         {name} " not in wanted:
                continue
            if name in done:
                continue
            queue.append(
                Job(module, index, f"{name} (line {line})", *tests_for(mapping, module, function))
            )
    if args.list:
        for job in queue:
            print(f"{job.name}: {len(job.tests)} tests, {job.seconds:.0f} s")
        print(f"{len(queue)} mutants")
        return
    preload()
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        copies = [worker_copy(Path(work), i, originals) for i in range(args.jobs)]
        clean = [
            clean_job(module, [j for j in queue if j.module == module]) for module in args.modules
        ]
        failed = [
            job.name for job, outcome in execute(clean, copies, originals) if outcome != "survived"
        ]
        if failed:
            raise SystemExit(f"the unmutated code fails its tests in a worker copy: {failed}")
        counts = {module: collections.Counter() for module in args.modules}
        for job, outcome in execute(queue, copies, originals):
            counts[job.module][outcome] += 1
            print(f"{outcome:16s} {job.name}", flush=True)
    for module, c in counts.items():
        print(
            f"{module}: {sum(c.values())} mutants, {c['killed'] + c['killed (timeout)']} killed, "
            f"{c['survived']} survived"
        )
    print(f"({(time.perf_counter() - begin) / 60:.1f} min, {args.jobs} jobs)")


def reported(log: str) -> set:
    """The mutants an earlier run's output names, whatever their outcome: each line is
    `outcome (16 columns) module:function: description (line n)`."""
    return {line[17:].rsplit(" (line ", 1)[0] for line in log.splitlines() if " (line " in line}


@dataclasses.dataclass
class Job:
    """One run: `module` mutated by mutation number `index` (None: unmutated), its tests."""

    module: str
    index: int | None
    name: str
    tests: list
    seconds: float


def clean_job(module: str, jobs: list) -> Job:
    """The unmutated module against every test its mutants will get: all must pass, or each
    mutant would count as killed for a reason of its own."""
    tests = sorted({t for job in jobs for t in job.tests})
    return Job(module, None, f"{module} unmutated", tests, sum(job.seconds for job in jobs))


def execute(jobs: list, copies: list, originals: dict):
    """Run the jobs, one per copy at a time; yields (job, outcome) as each ends: survived
    (its tests pass), killed, killed (timeout)."""
    listing, free, running, jobs = set(os.listdir(copies[0])), list(copies), {}, list(jobs)
    while jobs or running:
        while jobs and free:
            job = jobs.pop(0)
            if not job.tests:  # pytest given no test would run the whole suite
                yield job, "no test"
                continue
            copy = free.pop()
            original = originals[job.module]
            source = original if job.index is None else mutated_source(original, job.index)
            pid = start(copy, job.module, source, job.tests)
            running[pid] = (job, copy, time.monotonic() + 2 * job.seconds + 60)
        if not running:
            continue
        pid, outcome = wait_for_one(running)
        job, copy, _ = running.pop(pid)
        reset(copy, job.module, originals[job.module], listing)
        free.append(copy)
        yield job, outcome


def wait_for_one(running: dict) -> tuple:
    """(pid, outcome) of the first process to end, killing any that passes its deadline."""
    while True:
        for pid, (job, copy, deadline) in running.items():
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return pid, "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return pid, "killed (timeout)"
        time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("map", help="record which tests call which function")
    r = sub.add_parser("run", help="plant each mutant and run the tests that reach it")
    r.add_argument("modules", nargs="+", help="root modules, e.g. metrics.py")
    r.add_argument(
        "--function", action="append", help="only the mutants inside this function (repeatable)"
    )
    r.add_argument("--list", action="store_true", help="list the mutants without running them")
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants at a time")
    r.add_argument(
        "--survivors-of",
        type=Path,
        metavar="LOG",
        help="only the mutants this tool's earlier output (LOG) lists as survived",
    )
    r.add_argument(
        "--not-in",
        type=Path,
        metavar="LOG",
        help="only the mutants this tool's earlier, stopped output (LOG) does not list",
    )
    args = p.parse_args()
    make_map() if args.command == "map" else run_mutants(args)


if __name__ == "__main__":
    os.environ.update(THREADS)  # before torch is imported
    main()
