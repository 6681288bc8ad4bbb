"""The modules form layers: no import cycle (imports inside functions count), no module
imports a lab script, drawing knows nothing of models, data or metrics."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "dev"))
import import_graph  # noqa: E402


def test_the_import_graph_has_no_cycle_and_no_module_imports_a_lab_script():
    edges = import_graph.graph()
    assert import_graph.problems(edges) == []
    assert set(edges["voc"]) <= {"cli"} and edges["cli"] == [] and edges["distributed"] == ["cli"]
    assert edges["files"] == ["cli"]  # every room can write files; files knows no model
    assert edges["checkpoints"] == ["cli", "files", "voc"]
    assert not {"metrics", "model", "dataset"} & set(edges["visualize"])
    assert "dataset" not in edges["model"] and "model" not in edges["metrics"]


def test_the_checker_finds_a_cycle_and_a_script_import():
    edges = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["train"], "train": []}
    found = import_graph.problems(edges)
    assert "d imports the lab script train" in found
    [cycle] = [p for p in found if p.startswith("import cycle: ")]
    assert set(cycle.removeprefix("import cycle: ").split(" -> ")) == {"a", "b", "c"}


def reached(edges: dict, module: str) -> set:
    """Every module `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_importing_the_model_loads_no_dataset_code():
    """model.py is what test.py, export.py and the report load; the datasets (torchvision's
    dataset classes, scipy) are for the scripts that read data."""
    assert not {"dataset", "loaders"} & reached(import_graph.graph(), "model")


PRODUCT = sorted(p for p in ROOT.glob("*.py"))


def test_each_job_lives_in_its_own_module():
    """Files are read and written in files.py only (model.py and cli.py hold no torch.save,
    torch.load or os.replace), torchrun is called from distributed.py only, and train.py
    names the teacher cache only where it opens it."""
    for name in ("model.py", "cli.py"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert not any(call in text for call in ("torch.save", "torch.load", "os.replace")), name
    users = [p.name for p in PRODUCT if "torch.distributed" in p.read_text(encoding="utf-8")]
    assert users == ["distributed.py"]
    train = (ROOT / "train.py").read_text(encoding="utf-8")
    assert [line.strip() for line in train.splitlines() if "TeacherCache" in line] == [
        "from teacher_cache import TeacherCache, image_files, with_crop_boxes",
        "cache = TeacherCache.open_or_build(",
    ]


def test_train_py_reaches_its_epoch_loop_in_its_first_third_and_no_module_is_long():
    lines = (ROOT / "train.py").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def train_one_epoch"))
    assert start < len(lines) / 3 and len(lines) < 450
    assert all(len(p.read_text(encoding="utf-8").splitlines()) <= 450 for p in PRODUCT)
