"""Pack the lab submission: <student number>[_<partner's number>].zip, from the repository root.

    python make_submission.py 12345678              # -> 12345678.zip
    python make_submission.py 12345678 87654321     # -> 12345678_87654321.zip
    python make_submission.py 12345678 --strict     # refuse when a deliverable is missing

Packs the code (root *.py, tests/), train.txt, test.txt, README.md, requirements.txt, the
trained weights (weights/student_<kd>.pth; the *_last.pth resume files are left out) and all
of outputs/ (plots, overlays, tables, report). Only those are taken, so the dataset, caches
and version-control folders never enter the zip.
"""

import argparse
import zipfile
from pathlib import Path

TOP_FILES = ("train.txt", "test.txt", "README.md", "requirements.txt", "pyproject.toml")
# What the lab asks for; a missing one is a warning, or an error with --strict.
REQUIRED = (
    "weights/student_none.pth",
    "weights/student_response.pth",
    "weights/student_feature.pth",
    "outputs/student_none_curves.png",
    "outputs/kd_comparison.md",
)


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("students", nargs="+", metavar="STUDENT_NUMBER", help="one or two numbers")
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when a deliverable is missing (default: off)"
    )
    p.add_argument(
        "--root", default=".", help="repository root to pack, also where the zip goes (default: .)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing zip (default: off)"
    )
    args = p.parse_args(argv)
    if len(args.students) > 2:
        p.error("at most two student numbers (you and your partner)")
    for number in args.students:
        if not (number.isascii() and number.isdigit()):
            p.error(f"student number {number!r} must be digits only, e.g. 12345678")
    return args


def submission_files(root: Path) -> list:
    """Paths relative to root, sorted, of everything the zip holds."""
    files = [p for p in root.glob("*.py")]
    files += [root / name for name in TOP_FILES if (root / name).is_file()]
    files += [p for p in (root / "tests").rglob("*.py") if "__pycache__" not in p.parts]
    files += [p for p in (root / "weights").glob("student_*.pth") if not p.stem.endswith("_last")]
    files += [p for p in (root / "outputs").rglob("*") if p.is_file()]
    return sorted(p.relative_to(root) for p in files)


def main(args: argparse.Namespace) -> None:
    root = Path(args.root)
    zip_path = root / ("_".join(args.students) + ".zip")
    missing = [name for name in REQUIRED if not (root / name).exists()]
    for name in missing:
        print(f"warning: missing {name}")
    if missing and args.strict:
        raise SystemExit(
            f"error: {len(missing)} deliverable(s) missing; nothing written (--strict)"
        )
    if zip_path.exists() and not args.overwrite:
        raise SystemExit(f"error: {zip_path} already exists; use --overwrite to replace it")
    files = submission_files(root)
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(root / path, path.as_posix())
            print(f"  {path.as_posix():60s} {(root / path).stat().st_size / 1024:10.1f} KiB")
    tmp.replace(zip_path)
    print(f"wrote {zip_path}: {len(files)} files, {zip_path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main(parse_args())
