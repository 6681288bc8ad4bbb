"""Pack the lab submission: <student number>[_<partner's number>].zip, from the repository root.

    python make_submission.py 12345678              # -> 12345678.zip
    python make_submission.py 12345678 87654321     # -> 12345678_87654321.zip
    python make_submission.py 12345678 --strict     # refuse when a deliverable is missing

Packs what runs and reads on its own: the code (root *.py, tests/, dev/), its documents (README.md,
docs/), train.txt, test.txt, requirements*.txt, pyproject.toml, the trained models
(weights/student_<kd>.pth: weights and run record, no optimizer state; the *_last.pth resume
files are left out) with their .onnx and .ort exports, and outputs/ (plots, panels, results,
the report), but not your own photos' results (outputs/photos/) unless --with-photos. Links,
caches, hidden files and files over MAX_FILE_MB are never packed. A submission with no trained
model, or with SYNTHETIC results only, is refused with --strict and warned about otherwise.
"""

from cli import OUTPUTS_DIR, WEIGHTS_DIR, UserError, parser, path_arg, run

import argparse
import json
import zipfile
from pathlib import Path

from files import atomic_path, exclusive, read_utf8
from lab import COMPARISON, PHOTOS, REPORT, curves_path, student_path

TOP_FILES = ("train.txt", "test.txt", "README.md", "requirements.txt", "requirements-dev.txt")
TOP_FILES += ("pyproject.toml",)
# Far above any model or picture of the lab (a student model is 4 MB): a file this large in
# outputs/ is something else (a video, a dataset) that would make the zip unmailable.
MAX_FILE_MB = 100
# What the lab asks for; a missing one is a warning, or an error with --strict.
REQUIRED = tuple(
    p.as_posix()
    for p in (
        *(student_path(kd) for kd in ("none", "response", "feature")),
        curves_path(student_path("none"), OUTPUTS_DIR),
        Path(OUTPUTS_DIR, f"{COMPARISON}.md"),
        Path(OUTPUTS_DIR, REPORT),
    )
)
MAX_DIGITS = 20  # longer than any student number, short enough for a file name
OWN_PHOTOS = f"{OUTPUTS_DIR}/{PHOTOS}"  # where test.py --images writes


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("students", nargs="+", metavar="STUDENT_NUMBER", help="one or two numbers")
    p.add_argument("--strict", action="store_true", help="exit 1 when a deliverable is missing")
    p.add_argument(
        "--root",
        type=path_arg,
        default=".",
        help="repository root to pack, also where the zip goes",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    p.add_argument(
        "--with-photos",
        action="store_true",
        help=f"also pack your own photos' results ({OWN_PHOTOS}/)",
    )
    args = p.parse_args(argv)
    if len(args.students) > 2:
        p.error("at most two student numbers (you and your partner)")
    if len(set(args.students)) < len(args.students):
        p.error("the same student number twice")
    for number in args.students:
        if not (number.isascii() and number.isdigit() and len(number) <= MAX_DIGITS):
            p.error(
                f"student number {number[:30]!r} must be 1 to {MAX_DIGITS} digits, e.g. 12345678"
            )
    return args


def packable(path: Path, root: Path) -> bool:
    """A regular file, neither a link nor inside one, no cache, nothing hidden ('.name')."""
    parts = path.relative_to(root).parts
    if any(p.startswith(".") or p == "__pycache__" for p in parts):
        return False
    linked = any(root.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts) + 1))
    return not linked and path.is_file() and path.suffix != ".pyc"


def submission_files(root: Path, with_photos: bool = False) -> list:
    """Paths relative to root, sorted, of everything the zip holds. Links are never followed."""
    files = list(root.glob("*.py")) + [root / name for name in TOP_FILES]
    for folder in ("tests", "dev"):
        files += [p for p in (root / folder).rglob("*") if p.suffix in (".py", ".md", ".txt")]
    files += (root / "docs").glob("*.md")
    weights = root / WEIGHTS_DIR
    files += [p for p in weights.glob("student_*.pth") if not p.stem.endswith("_last")]
    files += [*weights.glob("student_*.onnx"), *weights.glob("student_*.ort")]
    files += (root / OUTPUTS_DIR).rglob("*")
    if not with_photos:
        files = [p for p in files if not p.is_relative_to(root / OWN_PHOTOS)]
    for link in sorted({p for p in files if p.is_symlink()}):
        print(f"warning: skipped {link.relative_to(root)}: a symbolic link (never followed)")
    found = sorted({p.relative_to(root) for p in files if packable(p, root)})
    for path in [p for p in found if (root / p).stat().st_size > MAX_FILE_MB * 2**20]:
        size = (root / path).stat().st_size / 2**20
        print(f"warning: skipped {path}: {size:,.0f} MiB, larger than any file of the lab")
        found.remove(path)
    return found


def synthetic_results(root: Path, files: list) -> list:
    """The packed JSON results that say they were measured on SYNTHETIC data."""
    found = []
    for path in (f for f in files if f.suffix == ".json"):
        try:
            if json.loads(read_utf8(root / path)).get("synthetic"):
                found.append(path)
        except (UserError, ValueError, AttributeError):
            continue
    return found


def refuse_or_warn(problem: str, strict: bool) -> None:
    if strict:
        raise UserError(f"{problem}; nothing written (--strict)")
    print(f"warning: {problem}")


def main(args: argparse.Namespace) -> None:
    root = Path(args.root)
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder")
    zip_path = root / ("_".join(args.students) + ".zip")
    with exclusive([zip_path]):
        if zip_path.exists() and not args.overwrite:
            raise UserError(f"{zip_path} already exists; use --overwrite to replace it")
        pack(args, root, zip_path)


def pack(args: argparse.Namespace, root: Path, zip_path: Path) -> None:
    """The checks, then the zip, written whole or not at all."""
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        refuse_or_warn(f"{len(missing)} deliverable(s) missing: {', '.join(missing)}", args.strict)
    files = submission_files(root, args.with_photos)
    if not any(p.parts[0] == WEIGHTS_DIR for p in files):
        refuse_or_warn(f"no trained model in {WEIGHTS_DIR}/ (python run.py train.txt)", args.strict)
    synthetic = synthetic_results(root, files)
    results = [p for p in files if p.suffix == ".json" and p.parts[0] == OUTPUTS_DIR]
    if results and len(synthetic) == len(results):
        refuse_or_warn("every result is SYNTHETIC (dataset.py --fake-voc), none VOC's", args.strict)
    for path in synthetic:
        print(f"note: {path.as_posix()} holds SYNTHETIC results, not VOC ones")
    if (root / OWN_PHOTOS).exists() and not args.with_photos:
        print(f"note: {OWN_PHOTOS}/ (your own photos) is left out; --with-photos packs it")
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(root / path, path.as_posix())
    for path in files:
        print(f"  {path.as_posix():60s} {(root / path).stat().st_size / 1024:10.1f} KiB")
    print(f"wrote {zip_path}: {len(files)} files, {zip_path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    run(main, parse_args)
