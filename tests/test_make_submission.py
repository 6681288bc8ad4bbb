import zipfile

import pytest

from conftest import run_script


@pytest.fixture
def repo(tmp_path):
    """A repository-shaped folder with deliverables and things that must stay out."""
    for name in [
        "train.py",
        "model.py",
        "train.txt",
        "test.txt",
        "README.md",
        "requirements.txt",
        "tests/test_model.py",
        "dev/README.md",
        "docs/design.md",
        "weights/student_none.pth",
        "weights/student_response.pth",
        "weights/student_feature.pth",
        "weights/student_response.ort",
        "weights/student_none_last.pth",
        "outputs/student_none_curves.png",
        "outputs/kd_comparison.md",
        "outputs/report.md",
        "outputs/overlays/a.png",
        "data/VOCdevkit/x.jpg",
        ".git/config",
        "__pycache__/model.cpython-311.pyc",
        "old.zip",
        ".pytest_cache/v",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name, encoding="utf-8")
    return tmp_path


def test_the_zip_holds_the_deliverables_and_nothing_else(repo):
    proc = run_script("make_submission.py", "12345678", "87654321", "--root", repo)
    assert proc.returncode == 0, proc.stderr
    names = set(zipfile.ZipFile(repo / "12345678_87654321.zip").namelist())
    assert names == {
        "train.py",
        "model.py",
        "train.txt",
        "test.txt",
        "README.md",
        "requirements.txt",
        "tests/test_model.py",
        "dev/README.md",
        "docs/design.md",
        "weights/student_none.pth",
        "weights/student_response.pth",
        "weights/student_feature.pth",
        "weights/student_response.ort",
        "outputs/student_none_curves.png",
        "outputs/kd_comparison.md",
        "outputs/report.md",
        "outputs/overlays/a.png",
    }
    assert "MiB" in proc.stdout and "warning" not in proc.stdout


def test_a_single_student_number_names_the_zip(repo):
    assert run_script("make_submission.py", "12345678", "--root", repo).returncode == 0
    assert (repo / "12345678.zip").exists()
    again = run_script("make_submission.py", "12345678", "--root", repo)
    assert again.returncode != 0 and "--overwrite" in again.stderr


def test_missing_deliverables_warn_and_fail_with_strict(repo):
    (repo / "weights/student_feature.pth").unlink()
    (repo / "outputs/kd_comparison.md").unlink()
    loose = run_script("make_submission.py", "12345678", "--root", repo)
    assert loose.returncode == 0 and "warning: 2 deliverable(s) missing" in loose.stdout
    (repo / "12345678.zip").unlink()
    strict = run_script("make_submission.py", "12345678", "--strict", "--root", repo)
    assert strict.returncode == 1 and "missing" in strict.stderr
    assert not (repo / "12345678.zip").exists()


@pytest.mark.parametrize(
    "numbers, message",
    [
        (["s1234567"], "must be 1 to 20 digits"),
        (["1234-5678"], "must be 1 to 20 digits"),
        (["１２３"], "must be 1 to 20 digits"),
        (["1" * 300], "must be 1 to 20 digits"),
        (["12345678", "12345678"], "the same student number twice"),
    ],
)
def test_a_bad_student_number_is_refused(repo, numbers, message):
    proc = run_script("make_submission.py", *numbers, "--root", repo)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not list(repo.glob("*.zip.tmp"))


def test_links_caches_hidden_files_and_own_photos_stay_out(repo, tmp_path_factory):
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.txt"
    secret.write_text("not yours to pack", encoding="utf-8")
    (repo / "outputs/link.txt").symlink_to(secret)
    (repo / "outputs/linked_dir").symlink_to(secret.parent, target_is_directory=True)
    for name in (
        "tests/__pycache__/x.cpython-311.pyc",
        "outputs/.DS_Store",
        "outputs/photos/me_jpg_mask.png",
        "weights/student_none.onnx",
    ):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(name, encoding="utf-8")
    (repo / "outputs/test_student_none.json").write_text('{"synthetic": true}', encoding="utf-8")
    proc = run_script("make_submission.py", "12345678", "--root", repo)
    assert proc.returncode == 0, proc.stderr
    names = set(zipfile.ZipFile(repo / "12345678.zip").namelist())
    assert "weights/student_none.onnx" in names and "outputs/test_student_none.json" in names
    left_out = {
        "outputs/link.txt",
        "outputs/linked_dir/secret.txt",
        "outputs/.DS_Store",
        "tests/__pycache__/x.cpython-311.pyc",
        "outputs/photos/me_jpg_mask.png",
    }
    assert not left_out & names
    assert "skipped outputs/link.txt: a symbolic link" in proc.stdout
    assert "outputs/photos/ (your own photos) is left out" in proc.stdout
    assert "test_student_none.json holds SYNTHETIC results" in proc.stdout
    assert "warning: every result is SYNTHETIC" in proc.stdout
    strict = run_script("make_submission.py", "1", "--root", repo, "--strict")
    assert strict.returncode == 1 and "every result is SYNTHETIC" in strict.stderr


def test_an_empty_submission_or_a_file_far_too_large_is_not_packed_without_a_word(repo):
    for path in (repo / "weights").iterdir():
        path.unlink()
    with open(repo / "outputs" / "video.mp4", "wb") as f:
        f.truncate(101 * 2**20)  # sparse: no disk used
    strict = run_script("make_submission.py", "12345678", "--root", repo, "--strict")
    assert strict.returncode == 1 and "3 deliverable(s) missing: weights/" in strict.stderr
    loose = run_script("make_submission.py", "12345678", "--root", repo)
    assert loose.returncode == 0 and "warning: no trained model" in loose.stdout
    assert "skipped outputs/video.mp4: 101 MiB" in loose.stdout
    assert "outputs/video.mp4" not in zipfile.ZipFile(repo / "12345678.zip").namelist()
