"""Pack the lab submission: <student number>[_<partner's number>].zip, from the repository root.

    python make_submission.py 12345678              # -> 12345678.zip
    python make_submission.py 12345678 87654321     # -> 12345678_87654321.zip
    python make_submission.py 12345678 --strict     # refuse when a deliverable is missing

Packs the code (root *.py, tests/), train.txt, test.txt, README.md, requirements.txt, the
trained weights (weights/student_<kd>.pth and any exported .onnx; the *_last.pth resume files
are left out) and outputs/ (plots, overlays, tables, report), but not your own photos'
results (outputs/photos/) unless --with-photos. Links, caches and hidden files are never
packed; SYNTHETIC results get a warning. Only those are taken, so the dataset, caches
and version-control folders never enter the zip.
"""

from cli import OUTPUTS_DIR, WEIGHTS_DIR, UserError, parser, path_arg, run

import argparse
import json
import zipfile
from pathlib import Path

from files import atomic_path
from lab import COMPARISON, PHOTOS, curves_path, student_path

TOP_FILES = ("train.txt", "test.txt", "README.md", "requirements.txt", "pyproject.toml")
# What the lab asks for; a missing one is a warning, or an error with --strict.
REQUIRED = tuple(
    p.as_posix()
    for p in (
        *(student_path(kd) for kd in ("none", "response", "feature")),
        curves_path(student_path("none"), OUTPUTS_DIR),
        Path(OUTPUTS_DIR, f"{COMPARISON}.md"),
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
    files = list(root.glob("*.py"))
    files += [root / name for name in TOP_FILES]
    files += (root / "tests").rglob("*.py")
    weights = root / WEIGHTS_DIR
    files += [p for p in weights.glob("student_*.pth") if not p.stem.endswith("_last")]
    files += weights.glob("student_*.onnx")
    files += (root / OUTPUTS_DIR).rglob("*")
    if not with_photos:
        files = [p for p in files if not p.is_relative_to(root / OWN_PHOTOS)]
    for link in sorted({p for p in files if p.is_symlink()}):
        print(f"warning: skipped {link.relative_to(root)}: a symbolic link (never followed)")
    return sorted({p.relative_to(root) for p in files if packable(p, root)})


def synthetic_results(root: Path, files: list) -> list:
    """The packed JSON results that say they were measured on SYNTHETIC data."""
    found = []
    for path in (f for f in files if f.suffix == ".json"):
        try:
            if json.loads((root / path).read_text(encoding="utf-8")).get("synthetic"):
                found.append(path)
        except (OSError, ValueError, AttributeError):
            continue
    return found


def main(args: argparse.Namespace) -> None:
    root = Path(args.root)
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder")
    zip_path = root / ("_".join(args.students) + ".zip")
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    for name in missing:
        print(f"warning: missing {name}")
    if missing and args.strict:
        raise UserError(f"{len(missing)} deliverable(s) missing; nothing written (--strict)")
    if zip_path.exists() and not args.overwrite:
        raise UserError(f"{zip_path} already exists; use --overwrite to replace it")
    files = submission_files(root, args.with_photos)
    if (root / OWN_PHOTOS).exists() and not args.with_photos:
        print(f"note: {OWN_PHOTOS}/ (your own photos) is left out; --with-photos packs it")
    for path in synthetic_results(root, files):
        print(f"warning: {path} holds SYNTHETIC results, not VOC ones")
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(root / path, path.as_posix())
            print(f"  {path.as_posix():60s} {(root / path).stat().st_size / 1024:10.1f} KiB")
    print(f"wrote {zip_path}: {len(files)} files, {zip_path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    run(main, parse_args)
