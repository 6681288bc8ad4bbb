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


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("students", nargs="+", metavar="STUDENT_NUMBER", help="one or two numbers")
    p.add_argument("--strict", action="store_true", help="exit 1 when a deliverable is missing")
    p.add_argument(
        "--root",
        type=path_arg,
        default=".",
        help="repository root, whose code and documents are packed",
    )
    p.add_argument(
        "--weights-dir", type=path_arg, help=f"the trained models; none: ROOT/{WEIGHTS_DIR}"
    )
    p.add_argument("--out-dir", type=path_arg, help=f"the results; none: ROOT/{OUTPUTS_DIR}")
    p.add_argument("--zip-dir", type=path_arg, help="where the zip goes; none: ROOT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    p.add_argument(
        "--with-photos",
        action="store_true",
        help=f"also pack your own photos' results ({OUTPUTS_DIR}/{PHOTOS}/)",
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


def packable(path: Path, base: Path) -> bool:
    """A regular file, neither a link nor inside one (below `base`), no cache, nothing hidden
    ('.name')."""
    parts = path.relative_to(base).parts
    if any(p.startswith(".") or p == "__pycache__" for p in parts):
        return False
    linked = any(base.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts) + 1))
    return not linked and path.is_file() and path.suffix != ".pyc"


def submission_files(root: Path, weights: Path, outputs: Path, with_photos: bool = False) -> dict:
    """{name in the zip: the file} of everything the zip holds, sorted: the code and documents
    from `root`, the models from `weights` as weights/..., the results from `outputs` as
    outputs/.... Links are never followed; a file larger than MAX_FILE_MB is left out."""
    found = {}

    def take(paths, base: Path, prefix: str = "") -> None:
        for path in paths:
            name = prefix + path.relative_to(base).as_posix()
            if path.is_symlink():
                print(f"warning: skipped {name}: a symbolic link (never followed)")
            elif packable(path, base):
                found[name] = path

    take([*root.glob("*.py"), *(root / name for name in TOP_FILES)], root)
    for folder in ("tests", "dev"):
        take([p for p in (root / folder).rglob("*") if p.suffix in (".py", ".md", ".txt")], root)
    take((root / "docs").glob("*.md"), root)
    models = [p for p in weights.glob("student_*.pth") if not p.stem.endswith("_last")]
    take(
        [*models, *weights.glob("student_*.onnx"), *weights.glob("student_*.ort")],
        weights,
        f"{WEIGHTS_DIR}/",
    )
    photos = outputs / PHOTOS
    take(
        [p for p in outputs.rglob("*") if with_photos or not p.is_relative_to(photos)],
        outputs,
        f"{OUTPUTS_DIR}/",
    )
    for name, path in list(found.items()):
        if path.stat().st_size > MAX_FILE_MB * 2**20:
            size = path.stat().st_size / 2**20
            print(f"warning: skipped {name}: {size:,.0f} MiB, larger than any file of the lab")
            del found[name]
    return dict(sorted(found.items()))


def synthetic_results(files: dict) -> list:
    """The names of the packed JSON results that say they were measured on SYNTHETIC data."""
    found = []
    for name, path in files.items():
        try:
            if name.endswith(".json") and json.loads(read_utf8(path)).get("synthetic"):
                found.append(name)
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
    zip_path = Path(args.zip_dir or root) / ("_".join(args.students) + ".zip")
    with exclusive([zip_path]):
        if zip_path.exists() and not args.overwrite:
            raise UserError(f"{zip_path} already exists; use --overwrite to replace it")
        pack(args, root, zip_path)


def pack(args: argparse.Namespace, root: Path, zip_path: Path) -> None:
    """The checks, then the zip, written whole or not at all."""
    weights, outputs = (
        Path(args.weights_dir or root / WEIGHTS_DIR),
        Path(args.out_dir or root / OUTPUTS_DIR),
    )
    files = submission_files(root, weights, outputs, args.with_photos)
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        refuse_or_warn(f"{len(missing)} deliverable(s) missing: {', '.join(missing)}", args.strict)
    if not any(name.startswith(f"{WEIGHTS_DIR}/") for name in files):
        refuse_or_warn(f"no trained model in {weights}/ (python run.py train.txt)", args.strict)
    synthetic = synthetic_results(files)
    results = [n for n in files if n.endswith(".json") and n.startswith(f"{OUTPUTS_DIR}/")]
    if results and len(synthetic) == len(results):
        refuse_or_warn("every result is SYNTHETIC (dataset.py --fake-voc), none VOC's", args.strict)
    for name in synthetic:
        print(f"note: {name} holds SYNTHETIC results, not VOC ones")
    if (outputs / PHOTOS).exists() and not args.with_photos:
        print(f"note: {outputs / PHOTOS}/ (your own photos) is left out; --with-photos packs it")
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in files.items():
            zf.write(path, name)
    for name, path in files.items():
        print(f"  {name:60s} {path.stat().st_size / 1024:10.1f} KiB")
    print(f"wrote {zip_path}: {len(files)} files, {zip_path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    run(main, parse_args)
