"""Plant one-line bugs in a module systematically, one at a time, and run its tests on each:
a mutant the tests pass is a bug they would not catch.

    python tools/mutate.py metrics.py tests/test_metrics.py
    python tools/mutate.py distill.py tests/test_distill.py --function response_kd_loss
    python tools/mutate.py cli.py tests/test_cli.py --list      # the mutants, not run

The mutations, each applied to one place inside a function (never to a docstring):
comparisons turned around (== !=, < >=, <= >, in / not in, is / is not), arithmetic swapped
(+ -, * /), numbers changed (n -> n + 1, 0.5 -> 1.0 ...), True <-> False, `and` <-> `or`,
a statement that only calls something removed, `not` dropped.

Why a tool of our own beside mutmut (requirements-dev.txt, configured in pyproject.toml):
mutmut 3 first runs the whole suite instrumented to learn which tests reach which function,
then runs every such test per mutant; here most functions are reached by the end-to-end tests
(the demo, training runs), so each mutant would cost minutes on a 2-core machine. This tool
runs one module's own fast tests (`-m "not slow"`), stopping at the first failure.
"""

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def docstrings(tree: ast.AST) -> set:
    """ids of the string constants that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                found.add(id(body[0].value))
    return found


def mutations(node: ast.AST) -> list:
    """[(description, function that mutates this node in place)]."""
    found = []
    if isinstance(node, ast.Compare) and type(node.ops[0]) in COMPARE:
        new = COMPARE[type(node.ops[0])]
        found.append(
            (
                f"{type(node.ops[0]).__name__} -> {new.__name__}",
                lambda n: n.ops.__setitem__(0, new()),
            )
        )
    elif isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        new = ARITHMETIC[type(node.op)]
        found.append(
            (f"{type(node.op).__name__} -> {new.__name__}", lambda n: setattr(n, "op", new()))
        )
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        found.append(
            (f"{type(node.op).__name__} -> {new.__name__}", lambda n: setattr(n, "op", new()))
        )
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        found.append(
            (f"{node.value} -> {not node.value}", lambda n: setattr(n, "value", not n.value))
        )
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        new = node.value + 1 if isinstance(node.value, int) else (node.value * 2 or 1.0)
        found.append((f"{node.value!r} -> {new!r}", lambda n: setattr(n, "value", new)))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        found.append(("not dropped", None))  # handled by the parent rewrite below
    return found


class Planter(ast.NodeTransformer):
    """Applies mutation number `target` (in walk order) and nothing else."""

    def __init__(self, target: int, skip: set, function: str | None):
        self.target, self.skip, self.function, self.count = target, skip, function, 0
        self.applied = None
        self.inside = []

    def visit_FunctionDef(self, node):
        self.inside.append(node.name)
        self.generic_visit(node)
        self.inside.pop()
        return node

    def visit_Expr(self, node):
        self.generic_visit(node)
        if self.active() and isinstance(node.value, ast.Call) and id(node.value) not in self.skip:
            if self.hit("call removed: " + ast.unparse(node.value)[:60]):
                return ast.Pass()
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if self.active() and isinstance(node.op, ast.Not) and self.hit("not dropped"):
            return node.operand
        return node

    def generic_visit(self, node):
        super().generic_visit(node)
        if self.active() and id(node) not in self.skip:
            for description, mutate in mutations(node):
                if mutate is not None and self.hit(description):
                    mutate(node)
        return node

    def active(self) -> bool:
        if not self.inside:
            return False
        return self.function is None or self.function in self.inside

    def hit(self, description: str) -> bool:
        self.count += 1
        if self.count - 1 == self.target:
            self.applied = f"{'.'.join(self.inside)}: {description}"
            return True
        return False


def mutant(source: str, target: int, function: str | None) -> tuple:
    """(mutated source or None when `target` is past the last mutation, description)."""
    tree = ast.parse(source)
    planter = Planter(target, docstrings(tree), function)
    new = planter.visit(tree)
    if planter.applied is None:
        return None, None
    return ast.unparse(ast.fix_missing_locations(new)), planter.applied


def run_tests(tests: list, timeout: float, slow: bool) -> str:
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    marks = [] if slow else ["-m", "not slow"]
    try:
        proc = subprocess.run(
            [*pytest, *marks, *tests], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "killed (timeout)"
    return "survived" if proc.returncode == 0 else "killed"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("module", type=Path)
    p.add_argument("tests", nargs="+")
    p.add_argument("--function", help="only the mutations inside this function")
    p.add_argument("--list", action="store_true", help="list the mutants without running them")
    p.add_argument("--timeout", type=float, default=300, help="seconds a test run may take")
    p.add_argument("--slow", action="store_true", help="also run the tests marked slow")
    p.add_argument(
        "--survivors-of",
        type=Path,
        metavar="LOG",
        help="only the mutants this tool's earlier output (LOG) lists as survived",
    )
    args = p.parse_args()
    path = ROOT / args.module
    original = path.read_text()
    results, target, start = [], 0, time.perf_counter()
    wanted = args.survivors_of.read_text().splitlines() if args.survivors_of else []
    try:
        while True:
            source, description = mutant(original, target, args.function)
            if source is None:
                break
            if args.survivors_of and f"survived         {description}" not in wanted:
                target += 1
                continue
            if args.list:
                outcome = "-"
            else:
                path.write_text(source)
                outcome = run_tests(args.tests, args.timeout, args.slow)
            results.append(outcome)
            print(f"{outcome:16s} {description}", flush=True)
            target += 1
    finally:
        path.write_text(original)
    if args.list:
        print(f"{args.module}: {len(results)} mutants")
        return
    killed = sum(o.startswith("killed") for o in results)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"{args.module}: {len(results)} mutants, {killed} killed, "
        f"{len(results) - killed} survived ({minutes:.1f} min)"
    )


if __name__ == "__main__":
    main()
