"""The modules form layers: no import cycle (imports inside functions count), no module
imports a lab script, drawing knows nothing of models, data or metrics."""

import sys

import pytest

from conftest import ROOT, run_python

sys.path.insert(0, str(ROOT / "dev"))
import import_graph  # noqa: E402


def test_the_import_graph_has_no_cycle_and_no_module_imports_a_lab_script():
    edges = import_graph.graph()
    assert import_graph.problems(edges) == []
    assert set(edges["voc"]) <= {"cli"} and edges["cli"] == []
    assert not {"metrics", "model", "dataset"} & set(edges["visualize"])
    assert "dataset" not in edges["model"] and "model" not in edges["metrics"]


def test_the_checker_finds_a_cycle_and_a_script_import():
    edges = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["train"], "train": []}
    found = import_graph.problems(edges)
    assert "d imports the lab script train" in found
    [cycle] = [p for p in found if p.startswith("import cycle: ")]
    assert set(cycle.removeprefix("import cycle: ").split(" -> ")) == {"a", "b", "c"}


@pytest.mark.slow
def test_importing_the_model_loads_no_dataset_code():
    proc = run_python("-c", "import sys, model; assert 'dataset' not in sys.modules, 'dataset'")
    assert proc.returncode == 0, proc.stderr
