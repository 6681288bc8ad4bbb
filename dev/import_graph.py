"""Print the import graph of the root modules (module -> project modules it imports, counting
imports inside functions) and fail on a cycle or on a module that imports a lab script.

    python dev/import_graph.py
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train", "test", "test_pretrained", "report", "benchmark", "make_submission", "run"}


def graph() -> dict:
    """{module: sorted project modules it imports anywhere in its body}."""
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    edges = {}
    for name, path in sorted(modules.items()):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
        edges[name] = sorted((found & set(modules)) - {name})
    return edges


def cycle(edges: dict) -> list | None:
    """One cycle as [a, b, ..., a], or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for node in edges:
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def problems(edges: dict) -> list:
    found = [
        f"{m} imports the lab script {s}" for m, deps in edges.items() for s in deps if s in SCRIPTS
    ]
    loop = cycle(edges)
    return found + ([f"import cycle: {' -> '.join(loop)}"] if loop else [])


if __name__ == "__main__":
    edges = graph()
    for module, deps in edges.items():
        print(f"{module:16s} -> {', '.join(deps) or '-'}")
    bad = problems(edges)
    print("\n".join(bad) or "no cycle; no module imports a lab script")
    sys.exit(1 if bad else 0)
