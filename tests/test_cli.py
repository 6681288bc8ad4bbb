"""cli.py: the entry point's one-line errors and exit codes, argument ranges, atomic writes."""

import argparse
import json
import math

import pytest
import torch

import cli
from cli import UserError, atomic_path, check_output, number, write_json
from model import save_file


def run_main(main) -> tuple:
    with pytest.raises(SystemExit) as e:
        cli.run(main, lambda: None)
    return e.value.code


def test_a_user_error_is_one_line_and_exit_1(capsys):
    def main(args):
        raise UserError("the thing is wrong; do this")

    assert run_main(main) == 1
    assert capsys.readouterr().err == "error: the thing is wrong; do this\n"


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    def main(args):
        raise KeyboardInterrupt("saved x.pth")

    assert run_main(main) == 130
    assert capsys.readouterr().err.strip() == "interrupted: saved x.pth"


def test_an_error_raised_in_a_dataloader_worker_keeps_its_one_line(capsys):
    def load(i):
        raise UserError(f"image {i} is damaged")

    loader = torch.utils.data.DataLoader(range(2), num_workers=1, collate_fn=load)
    batches = iter(loader)

    def main(args):
        next(batches)

    assert run_main(main) == 1
    assert capsys.readouterr().err == "error: image [0] is damaged\n"
    batches._shutdown_workers()  # now, not in a 5 s wait when the session ends


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "-1", "1e300", "many"])
def test_numbers_outside_their_range_or_not_finite_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        number(float, 0, 100)(text)
    if text != "1e300":  # with no upper bound, 1e300 is a number like another
        with pytest.raises(argparse.ArgumentTypeError):
            number(float, 0)(text)


def test_numbers_in_range_are_parsed():
    assert number(int, 1, 10)("10") == 10 and number(float, 0, strict=True)("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="above 0"):
        number(float, 0, strict=True)("0")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """A full disk in the middle of torch.save: the previous checkpoint is untouched."""
    path = tmp_path / "s.pth"
    save_file({"epoch": 1}, path)
    before = path.read_bytes()

    def half_written(obj, f):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(UserError, match="cannot write .*s.pth: No space left on device"):
        save_file({"epoch": 2}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["s.pth"]


def test_ctrl_c_while_writing_leaves_no_temporary(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "r.json") as tmp:
        tmp.write_text("{")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_json_writes_nan_and_infinities_as_null(tmp_path):
    write_json({"iou": [0.5, math.nan, math.inf]}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"iou": [0.5, None, None]}


def test_output_paths_of_the_wrong_kind_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file; give the path of a folder"):
        check_output(tmp_path / "file", folder=True)
    with pytest.raises(UserError, match="is a folder; give the path of a file"):
        check_output(tmp_path, folder=False)
    with pytest.raises(UserError, match="cannot create the folder"):
        check_output(tmp_path / "file" / "below" / "out.json")
