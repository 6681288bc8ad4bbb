"""train.txt and test.txt: every command names a script and flags that exist, parsed by the
script's own argument parser, so a renamed flag breaks CI."""

import shlex

import pytest

from conftest import ROOT, load_script


def commands(name: str) -> list:
    lines = (ROOT / name).read_text().splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", ["train.txt", "test.txt"])
def test_every_command_parses_with_its_scripts_own_parser(name):
    found = commands(name)
    assert found, f"{name} holds no command"
    for argv in found:
        assert argv[0] == "python" and argv[1].endswith(".py"), argv
        script = load_script(argv[1].removesuffix(".py"))
        script.parse_args(argv[2:])  # argparse exits (fails the test) on an unknown flag


def test_train_txt_trains_every_kd_mode_into_its_weights_file():
    kds = [load_script("train").parse_args(argv[2:]) for argv in commands("train.txt")]
    assert [(a.kd, a.out) for a in kds] == [
        (kd, f"weights/student_{kd}.pth") for kd in ("none", "response", "feature", "both")
    ]


def test_test_txt_runs_step1_each_student_the_comparison_and_the_report():
    scripts = [argv[1] for argv in commands("test.txt")]
    assert scripts[0] == "test_pretrained.py" and scripts.count("test.py") == 5
    assert "--compare" in commands("test.txt")[5] and "report.py" in scripts


def readme_commands() -> list:
    """The `python <script>.py ...` and `torchrun ... train.py ...` lines of README.md's bash
    blocks, continuation lines joined and comments dropped."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    found = []
    for line in lines:
        argv = shlex.split(line, comments=True)
        if argv and argv[0] == "torchrun":
            argv = argv[next(i for i, a in enumerate(argv) if a.endswith(".py")) - 1 :]
        if len(argv) > 1 and argv[1].endswith(".py"):
            found.append(argv)
    return found


def test_every_readme_example_parses_with_its_scripts_own_parser():
    found = readme_commands()
    assert len(found) >= 18
    for argv in found:
        argv = [a for a in argv if a != "[87654321]"]  # the optional partner, in brackets
        load_script(argv[1].removesuffix(".py")).parse_args(argv[2:])
    assert any("--train-set" in argv for argv in found)  # the train_aug and torchrun examples
