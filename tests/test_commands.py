"""train.txt and test.txt: every command names a script and flags that exist, parsed by the
script's own argument parser, so a renamed flag breaks CI."""

from cli import UserError

import re
import shlex
import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, demo_commands, load_script, run_all, run_python

runner = load_script("run")


def commands(name: str) -> list:
    """The argv of each command of a .txt file, as run.py reads them."""
    return [argv for _, argv in runner.commands(ROOT / name)]


@pytest.mark.parametrize("name", ["train.txt", "test.txt"])
def test_every_command_parses_with_its_scripts_own_parser(name):
    found = commands(name)
    assert found, f"{name} holds no command"
    for argv in found:
        script = load_script(argv[1].removesuffix(".py"))
        script.parse_args(argv[2:])  # argparse exits (fails the test) on an unknown flag


@pytest.mark.parametrize(
    "line",
    [
        "set -e",
        "python a.py --x 1 && python b.py",
        "python a.py --x 1 \\",
        "python a.py --data-root $HOME/data",
        "python a.py | head",
        "python a.py --data-root C:\\data",
        "bash train.txt",
    ],
)
def test_a_line_that_is_not_a_plain_python_command_is_refused_naming_it(tmp_path, line):
    """What pastes into bash, zsh and PowerShell alike: `python x.py` and its flags, nothing
    any of them reads as syntax (PowerShell 5.1 has no &&, its continuation is the backtick,
    `set -e` sets a variable there)."""
    (tmp_path / "c.txt").write_text(f"# a comment\n\npython ok.py\n{line}\n", encoding="utf-8")
    with pytest.raises(UserError, match="c.txt, line 4 "):
        runner.commands(tmp_path / "c.txt")


STEP = "import sys\nprint('ran', sys.argv[1:])\nsys.exit(int(sys.argv[1]))\n"


@pytest.mark.slow
def test_run_py_runs_each_command_with_its_python_and_stops_at_the_first_failure(tmp_path):
    (tmp_path / "step.py").write_text(STEP, encoding="utf-8")
    (tmp_path / "c.txt").write_text(
        "python step.py 0\n# fails:\npython step.py 3\npython step.py 0\n", encoding="utf-8"
    )
    proc = run_python(ROOT / "run.py", "c.txt", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout.count("ran") == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: command 2 (c.txt, line 3) failed with exit code 3; fix what its error says, "
        "then continue with: python run.py c.txt --from 2"
    )
    proc = run_python(ROOT / "run.py", "c.txt", "--from", 3, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.count("ran") == 1
    assert "all 1 commands succeeded" in proc.stdout


def test_train_txt_downloads_then_trains_every_kd_mode_into_its_weights_file():
    found = commands("train.txt")
    assert found[0][1:] == ["dataset.py", "--download", "--data-root", "data"]
    train = load_script("train")
    kds = [train.parse_args(argv[2:]) for argv in found[1:]]
    assert [(a.kd, a.out) for a in kds] == [
        (kd, f"weights/student_{kd}.pth") for kd in ("none", "response", "feature", "both")
    ]


def test_test_txt_runs_step1_first_then_every_student_the_export_the_report_and_the_zip():
    """In the lab's order, and rerunnable: every command that makes a result replaces it."""
    found = commands("test.txt")
    scripts = [argv[1] for argv in found]
    assert scripts[0] == "test_pretrained.py" and "--compare" in found[1]
    assert scripts[-3:] == ["benchmark.py", "report.py", "make_submission.py"]
    assert all("--overwrite" in argv for argv in found)


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands() -> list:
    """The `python <script>.py ...` and `torchrun ... train.py ...` lines of the bash blocks
    of README.md and docs/*.md, continuation lines joined and comments dropped."""
    found = []
    for doc in DOCS:
        blocks = [
            b.split("```", 1)[0] for b in doc.read_text(encoding="utf-8").split("```bash\n")[1:]
        ]
        for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "torchrun":
                argv = argv[next(i for i, a in enumerate(argv) if a.endswith(".py")) - 1 :]
            if len(argv) > 1 and argv[1].endswith(".py") and not argv[1].startswith("dev/"):
                found.append(argv)
    return found


def test_every_documented_example_parses_with_its_scripts_own_parser():
    found = documented_commands() + commands("demo.txt")
    assert len(found) >= 25
    for argv in found:
        load_script(argv[1].removesuffix(".py")).parse_args(argv[2:])
    assert any("--train-set" in argv for argv in found)  # the train_aug and torchrun examples
    assert any("--teacher-cache" in argv for argv in found)


def test_the_demo_runs_test_txt_in_its_order_with_its_flags():
    """The demo rehearses test.txt: its later commands are test.txt's, in order, each with
    every flag of test.txt's line (and those that point it at demo/)."""
    _, rehearsed = demo_commands()
    lab = commands("test.txt")
    assert [argv[1] for argv in rehearsed] == [argv[1] for argv in lab]
    for ours, theirs in zip(rehearsed, lab):
        assert {a for a in theirs if a.startswith("--")} <= set(ours), theirs[1]


def local_links(markdown: Path) -> list:
    """The targets of a Markdown file's links and pictures that are files beside it."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown.read_text(encoding="utf-8"))
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t)]


@pytest.mark.slow
def test_the_demo_trains_then_remakes_every_result_twice_and_its_zip_stands_alone(
    lab_demo, tmp_path, monkeypatch
):
    """What a student does after a retrain: test.txt's commands, twice (the demo's, on
    SYNTHETIC data). The second run makes every result, the report and the zip again, each
    says SYNTHETIC, and keeps the exported files, made from the same checkpoint; the zip,
    unpacked elsewhere, collects its tests and its links resolve."""
    shutil.copytree(lab_demo["demo"], tmp_path / "demo")  # other tests read the demo's
    monkeypatch.chdir(tmp_path)
    demo = tmp_path / "demo"
    trained = {*demo.glob("weights/*.pth"), *demo.glob("outputs/student_*_[lc]*")}
    exported = {*demo.glob("weights/*.onnx"), *demo.glob("weights/*.ort")}
    made = {
        p: p.stat().st_mtime_ns
        for p in demo.rglob("*")
        if p.is_file() and p not in trained and "data" not in p.parts and p.name[0] != "."
    }
    _, rehearsed = demo_commands()
    printed = [proc.stdout for proc in run_all(rehearsed)]
    assert {p for p, when in made.items() if p.stat().st_mtime_ns == when} == exported
    by_script = {argv[1]: out for argv, out in zip(rehearsed, printed)}
    assert len(exported) == 4 and "up to date" in by_script["export.py"]
    assert len(made) > 20 and demo / "12345678.zip" in made
    from_data = [out for argv, out in zip(rehearsed, printed) if argv[1] != "benchmark.py"]
    assert all("SYNTHETIC" in out for out in from_data)
    report = (demo / "outputs" / "report.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in report and "RANDOM teacher" in report
    missing = [m for m in report.split("## 1.")[0].splitlines() if m.startswith("- ")]
    assert len(missing) == 2 and all("feature" in m or "both" in m for m in missing)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(demo / "12345678.zip").extractall(unpacked)
    assert (unpacked / "weights" / "student_response_int8.ort").is_file()
    docs = [unpacked / "README.md", *unpacked.glob("docs/*.md"), unpacked / "outputs/report.md"]
    for doc in docs:
        for target in local_links(doc):
            assert (doc.parent / target).exists(), (doc.name, target)
    collected = run_python(
        "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", cwd=unpacked
    )
    assert collected.returncode == 0 and "tests collected" in collected.stdout, collected.stdout
