"""train.txt and test.txt: every command names a script and flags that exist, parsed by the
script's own argument parser, so a renamed flag breaks CI."""

from cli import UserError

import json
import shlex

import pytest
from PIL import Image

from conftest import RESULT_KEYS, ROOT, load_script, run_python, run_script

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
    found = documented_commands()
    assert len(found) >= 20
    for argv in found:
        load_script(argv[1].removesuffix(".py")).parse_args(argv[2:])
    assert any("--train-set" in argv for argv in found)  # the train_aug and torchrun examples
    assert any("--teacher-cache" in argv for argv in found)


def readme_block(heading: str) -> list:
    """The commands of the first bash block after `heading` in README.md, as argv lists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8").split(heading, 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def demo_commands() -> list:
    return readme_block("## Offline demo on synthetic data")


def run_demo() -> list:
    printed = []
    for argv in demo_commands():
        assert argv[0] == "python", argv
        proc = run_script(argv[1], *argv[2:])
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])
        printed.append(proc.stdout)
    return printed


@pytest.mark.slow
def test_the_offline_demo_runs_twice_as_printed_in_its_own_folder(tmp_path, monkeypatch):
    """Twice in a row, as a user reruns it: both succeed, every output made from the data says
    SYNTHETIC (the benchmark reads none), and nothing lands in the lab's weights/ or outputs/."""
    monkeypatch.chdir(tmp_path)
    run_demo()
    printed = run_demo()
    step1, train, test = printed[1:4]
    from_data = [out for argv, out in zip(demo_commands(), printed) if argv[1] != "benchmark.py"]
    assert len(from_data) == 5 and all("SYNTHETIC" in out for out in from_data)
    assert not (tmp_path / "weights").exists() and not (tmp_path / "outputs").exists()
    assert "SYNTHETIC" in step1.splitlines()[0] and "SYNTHETIC" in test
    for text in ("mIoU", "32,957,013", "ms/image", "RANDOM weights"):  # Step 1's report
        assert text in step1
    epoch_lines = [line for line in train.splitlines() if line.startswith("epoch ")]
    assert epoch_lines and all("SYNTHETIC" in line for line in epoch_lines)
    outputs = tmp_path / "demo" / "outputs"
    for name in ("step1_fcn_resnet50.json", "test_student_response.json"):
        result = json.loads((outputs / name).read_text(encoding="utf-8"))
        assert RESULT_KEYS <= set(result) and result["synthetic"] is True
        assert result["num_images"] == (2 if name.startswith("step1") else 4)
    step1_panels = sorted(p.name.split("_")[2] for p in outputs.glob("overlays/fcn_resnet50_*"))
    assert step1_panels == ["best1", "worst1"]  # --limit 2: one of each
    pictures = [outputs / "student_response_curves.png", *outputs.glob("overlays/*.png")]
    assert len(pictures) > 3
    assert all("SYNTHETIC" in Image.open(p).text["Title"] for p in pictures)
    assert all(
        "RANDOM weights" in Image.open(p).text["Title"]
        for p in outputs.glob("overlays/fcn_resnet50_*")
    )
    report = (outputs / "report.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in report and "RANDOM-weight FCN-ResNet50 on SYNTHETIC data" in report
