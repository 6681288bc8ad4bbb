"""Step 3: evaluate trained students on VOC 2012 val, and compare the KD methods in one table.

    python test.py --checkpoint weights/student_none.pth
    python test.py --checkpoint weights/student_none.onnx     # the same, through ONNX Runtime
    python test.py --checkpoint weights/student_none.ort      # its mobile format
    python test.py --compare weights/student_none.pth weights/student_response.pth \\
        weights/student_feature.pth weights/student_both.pth
    python test.py --checkpoint weights/student_response.pth --images photos/ me.jpg

Prints the per-class IoU table, mIoU, parameters (the student's own: distillation adapters
are not part of it) and ms/image (batch 1, after warm-up), writes <out-dir>/test_<name>.json
and the best and worst overlays under <out-dir>/overlays/. --compare also writes
<out-dir>/kd_comparison.md and .json, with the teacher's row taken from Step 1's JSON when
present; its ms/image are timed together, interleaved, after every checkpoint is scored.
A checkpoint that cannot be read is listed in the table's notes, and the rest still run.
--images segments your own photos (files, or folders of .jpg/.png) without the dataset:
<out-dir>/photos/<name>_<ext>_mask.png (VOC colours, the photo's size and orientation) and
<name>_<ext>_overlay.png (photo | prediction | legend); _SYNTHETIC before _mask when the
checkpoint was trained on synthetic data.
"""

from cli import UserError, add_eval_args, has_suffix, parser, path_arg, resolve_device, run

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dataset import normalize
from distill import KD_MODES
from files import (
    check_output,
    exclusive,
    read_json,
    write_json,
    write_text,
)
from lab import COMPARISON, OVERLAYS, PHOTOS, RESULT, STEP1_RESULT, save_overlays
from loaders import eval_loader
from metrics import format_report, measure, model_logits, ms_per_image
from model import TEACHER_RESIZE, count_params, load_student
from onnx_model import UNKNOWN_KD, OnnxModel, student_metadata
from visualize import colorize, photo_panel, save_png
from voc import NUM_CLASSES, RANDOM_TEACHER, SYNTHETIC_NOTE, is_synthetic, random_teacher

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SYNTHETIC_TAG = "_SYNTHETIC"  # in own-photo file names when the model never saw VOC
MAX_PHOTO_SIDE = 1024  # own photos are segmented at most this large: bounded memory and time
ONNX_RUNTIME_FILES = (".onnx", ".ort")  # export.py's model and its mobile format
MAX_PHOTO_PIXELS = 60_000_000  # a 9000 x 6000 photo; beyond, a decompression bomb is likelier


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint",
        type=path_arg,
        help="a student checkpoint of train.py (.pth) or export.py (.onnx, .ort)",
    )
    what.add_argument(
        "--compare",
        nargs="+",
        action="extend",
        metavar="CHECKPOINT",
        help="several checkpoints: evaluate each and write the comparison table",
    )
    p.add_argument(
        "--images",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="with --checkpoint: segment these photos or folders instead of a VOC split",
    )
    add_eval_args(p, size=TEACHER_RESIZE)
    args = p.parse_args(argv)
    if args.images and not args.checkpoint:
        p.error("--images goes with --checkpoint")
    return args


def load_model(path: str, device: torch.device) -> tuple:
    """(model ready for inference, {kd, epoch, synthetic, params}, the device it runs on) of a
    .pth, .onnx or .ort file. Eager models run channels_last on the CPU, which benchmark.py
    measures faster there; ONNX Runtime runs on the CPU unless it has a CUDA provider."""
    if has_suffix(path, *ONNX_RUNTIME_FILES):
        model = OnnxModel(path, cuda=device.type == "cuda")
        info = student_metadata(model)
        if model.classes not in (NUM_CLASSES, None):
            raise UserError(f"{path} outputs {model.classes} classes, not VOC's {NUM_CLASSES}")
        if model.device != device:
            print(f"note: ONNX Runtime runs {path} on the {model.device.type}, not {device}")
        return model, info, model.device
    model, ckpt = load_student(path)
    model.to(device, memory_format=torch.channels_last if device.type == "cpu" else None)
    info = {
        "kd": ckpt["args"]["kd"],
        "epoch": ckpt["epoch"],
        "synthetic": ckpt["synthetic"],
        "params": count_params(model),
        "teacher_weights": ckpt["args"].get("teacher_weights"),
    }
    return model, info, device


def evaluate_checkpoint(path: str, loaded: tuple, loader, args, timing=None) -> dict:
    """Evaluate one loaded checkpoint (load_model), print its report, write its JSON and
    overlays; `timing`: its ms/image when timed already (--compare), else it is timed here."""
    model, info, device = loaded
    synthetic = is_synthetic(args.data_root) or bool(info.get("synthetic"))
    params = info.get("params")
    result = measure(model, loader, device, args.size, args.runs, params, timing, True)
    predictions = result.pop("predictions")
    result.update(
        model="student",
        kd=info.get("kd", UNKNOWN_KD),
        checkpoint=str(path),
        epoch=info.get("epoch"),
        split=args.split,
        synthetic=synthetic,
        teacher_weights=info.get("teacher_weights", info.get("args", {}).get("teacher_weights")),
        runtime="onnxruntime" if isinstance(model, OnnxModel) else "pytorch",
    )
    what = f"student {path} (--kd {result['kd']}{random_mark(result)}, {result['runtime']})"
    print(format_report(result, what))
    name, out = result_name(path), Path(args.out_dir)
    write_json(result, out / f"test_{name}.json")
    print(f"wrote {out / f'test_{name}.json'}")
    for p in save_overlays(
        loader.dataset,
        result["per_image_miou"],
        predictions,
        args.num_overlays,
        out / OVERLAYS,
        name,
        what,
        synthetic,
    ):
        print(f"wrote {p}")
    return result


def image_files(paths: list) -> list:
    """The given files, and the .jpg/.jpeg/.png files in the given folders, sorted; anything
    that is not a regular file (a FIFO, a device, a broken link) is reported and skipped."""
    files = []
    for path in map(Path, paths):
        found = sorted(path.iterdir()) if path.is_dir() else [path]
        for p in [p for p in found if path.is_dir() and p.suffix.lower() not in IMAGE_SUFFIXES]:
            print(f"skipped {p}: not a {'/'.join(IMAGE_SUFFIXES)} file", file=sys.stderr)
            found.remove(p)
        for p in found:
            if p.is_file():
                files.append(p)
            else:
                print(
                    f"skipped {p}: {'not a regular file' if p.exists() else 'no such file'}",
                    file=sys.stderr,
                )
    return files


def read_photo(path: Path) -> Image.Image:
    """An RGB photo turned as its EXIF orientation says (as viewers show it), or a UserError."""
    try:
        with Image.open(path) as image:  # reads the header only, so the size is known first
            if image.width * image.height > MAX_PHOTO_PIXELS:
                raise UserError(
                    f"{path}: {image.width}x{image.height} pixels, more than "
                    f"{MAX_PHOTO_PIXELS:,d}; scale it down first"
                )
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I"):  # 16- or 32-bit grey: scaled, not clipped to white
                high = 65535 if image.mode.startswith("I;16") or np.max(image) > 255 else 255
                image = Image.fromarray((np.asarray(image) * (255 / high)).astype(np.uint8))
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: {e}") from None


@torch.inference_mode()
def predict_photo(model, image: Image.Image, device: torch.device) -> np.ndarray:
    """Class ids at the photo's size; the network sees it scaled to at most MAX_PHOTO_SIDE."""
    work = image.copy()
    work.thumbnail((MAX_PHOTO_SIDE, MAX_PHOTO_SIDE))  # keeps the aspect ratio, never enlarges
    x = normalize(torch.from_numpy(np.array(work)).permute(2, 0, 1))[None].to(device)
    pred = model_logits(model.eval(), x).argmax(1)[0].to(torch.uint8).cpu().numpy()
    return np.asarray(Image.fromarray(pred).resize(image.size, Image.NEAREST))


def segment_images(model, paths: list, device, out: Path, checkpoint: str, synthetic: bool) -> int:
    """Write <name>_<ext>_mask.png and _overlay.png for each photo (the extension in the name,
    so that a.jpg and a.png never overwrite each other; a name met again, from another folder
    or as x.JPG beside x.jpg, gets _2, _3, ...); report and skip unreadable ones, and those
    in `out` (its own outputs).
    Returns how many were segmented."""
    done, taken = 0, set()
    for path in image_files(paths):
        if path.resolve().is_relative_to(out.resolve()):  # a rerun would segment its own masks
            print(f"skipped {path}: written by test.py into {out}", file=sys.stderr)
            continue
        try:
            image = read_photo(path)
        except UserError as e:
            print(f"skipped {e}", file=sys.stderr)
            continue
        pred = predict_photo(model, image, device)
        name = unique(f"{path.stem}_{path.suffix.lstrip('.').lower()}", taken)
        stem = out / f"{name}{SYNTHETIC_TAG * synthetic}"
        with_mask, with_overlay = Path(f"{stem}_mask.png"), Path(f"{stem}_overlay.png")
        title = f"{path.name} segmented by {checkpoint}" + (
            f" (trained on {SYNTHETIC_NOTE})" if synthetic else ""
        )
        save_png(colorize(pred), with_mask, title)
        save_png(photo_panel(image, pred, title), with_overlay, title)
        print(f"{path} -> {with_mask}, {with_overlay.name}")
        done += 1
    return done


def unique(name: str, taken: set) -> str:
    """`name`, or name_2, name_3, ... the first not in `taken` (case-insensitively, as some
    file systems compare names); added to `taken`."""
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate.lower())
    return candidate


def random_mark(result: dict) -> str:
    """', RANDOM teacher ...' for a student distilled from a teacher with random weights."""
    return f", {RANDOM_TEACHER}" if random_teacher(result) else ""


def comparison_markdown(results: list, teacher: dict | None, failures: list) -> str:
    """The report's table: KD method | mIoU | parameters | ms/image, one row per run."""
    rows = [
        (f"{KD_MODES[r['kd']].label if r['kd'] in KD_MODES else r['kd']}{random_mark(r)}", r)
        for r in results
    ]
    if teacher is not None:
        weights, images = teacher.get("weights", "default"), teacher.get("num_images")
        note = {"default": "", "none": ", RANDOM weights"}.get(weights, f", weights: {weights}")
        note += "" if images in (None, results[0]["num_images"]) else f", {images} images"
        rows.append((f"FCN-ResNet50 teacher (Step 1, reference{note})", teacher))
    synthetic = any(r.get("synthetic") for _, r in rows)
    lines = [
        "# Knowledge distillation: comparison"
        + (" -- SYNTHETIC data, not VOC results" if synthetic else ""),
        "",
        f"mIoU on {'SYNTHETIC' if synthetic else 'VOC 2012'} {results[0]['split']} "
        f"({results[0]['num_images']} images) at each label's original resolution, of each "
        "run's last epoch. ms/image: batch 1, the median of the timed passes after warm-up and "
        "in brackets their quartiles (half the passes between them), on an input of the size "
        "given (times at different sizes do not compare). The students of one architecture "
        "are one network (other weights, the same work): it was timed once for all, the ONNX "
        "files each, interleaved in one process; the teacher's row comes from Step 1's own run.",
        "",
        "| KD method | mIoU (%) | # parameters | ms/image (quartiles) | input | device | source |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for label, r in rows:
        low, high = r.get("ms_quartiles", [r["ms_per_image"]] * 2)
        lines.append(
            f"| {label} | {100 * r['miou']:.2f} | {r['params']:,d} | {r['ms_per_image']:.1f} "
            f"({low:.1f}-{high:.1f}) | {r['input_size']}x{r['input_size']} | {r['device_name']}"
            f" | {r.get('checkpoint', STEP1_RESULT)} |"
        )
    if failures:
        lines += ["", "Not in the table (could not be read):"] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"


def read_teacher(path: Path) -> tuple:
    """(Step 1's result or None, [a note when it exists but cannot be used])."""
    if not path.exists():
        return None, []
    try:
        return read_json(path, RESULT), []
    except UserError as e:
        return None, [str(e)]


def compare(args: argparse.Namespace, loader, device: torch.device) -> None:
    """Time every readable checkpoint together, interleaved, then score each (its report and
    JSON carry that time) and write the table; the unreadable ones are listed under it."""
    loaded, failures = {}, []
    for path in args.compare:
        try:
            loaded[path] = load_model(path, device)
        except UserError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            failures.append(f"{path}: {e}")
    if not loaded:
        raise UserError("none of the --compare checkpoints could be read")
    # One network, one time: the .pth students share an architecture (the same network with
    # other weights), so one of them is timed for all; each ONNX file is its own graph.
    networks = {network(path, model): model for path, (model, _, _) in loaded.items()}
    times = ms_per_image(networks, device, args.size, args.runs)
    results = [
        evaluate_checkpoint(path, pair, loader, args, times[network(path, pair[0])])
        for path, pair in loaded.items()
    ]
    out = Path(args.out_dir)
    teacher, notes = read_teacher(out / STEP1_RESULT)
    table = comparison_markdown(results, teacher, failures + notes)
    md, js = out / f"{COMPARISON}.md", out / f"{COMPARISON}.json"
    write_text(table, md)
    keep = (
        "kd",
        "checkpoint",
        "miou",
        "params",
        "ms_per_image",
        "ms_quartiles",
        "input_size",
        "device",
        "device_name",
        "split",
        "num_images",
        "synthetic",
        "date",
        "weights",
        "teacher_weights",
        "runtime",
        "load",
    )
    write_json(
        {
            "students": [{k: r.get(k) for k in keep} for r in results],
            "teacher": {k: teacher.get(k) for k in keep} if teacher else None,
            "unreadable": failures + notes,
        },
        js,
    )
    print("\n" + table + f"\nwrote {md}\nwrote {js}")


def network(path: str, model) -> tuple:
    """What decides a model's speed: its architecture for PyTorch, its graph for a file that
    ONNX Runtime runs."""
    if isinstance(model, OnnxModel):
        return ("onnxruntime", str(path))
    return ("pytorch", type(model).__name__, count_params(model))


def result_name(path: str | Path) -> str:
    """The name of a checkpoint's results: its stem, with the runtime's suffix for an ONNX
    file (student.pth, student.onnx and student.ort: three results, three names)."""
    path = Path(path)
    onnx = has_suffix(path, *ONNX_RUNTIME_FILES)
    return path.stem + ("_" + path.suffix[1:].lower() if onnx else "")


def outputs_of(args: argparse.Namespace, out: Path) -> list:
    """Every result file this run writes (the JSON of each checkpoint, the comparison), then
    each checkpoint's panel set; refused when two checkpoints would share their results."""
    paths = [args.checkpoint] if args.checkpoint else args.compare
    names = {}
    for path in paths:
        other = names.setdefault(result_name(path), path)
        if other != path:
            raise UserError(
                f"{other} and {path} would both write {out / f'test_{result_name(path)}.json'}; "
                "give one of them another file name"
            )
    results = [out / f"test_{name}.json" for name in names]
    if args.compare:
        results += [out / f"{COMPARISON}.md", out / f"{COMPARISON}.json"]
    return results + [out / OVERLAYS / name for name in names]


def main(args: argparse.Namespace) -> None:
    out = check_output(args.out_dir, folder=True)
    device = resolve_device(args.device)
    if args.images:
        with exclusive([out / PHOTOS]):
            segment(args, out, device)
        return
    outputs = outputs_of(args, out)
    with exclusive(outputs):  # two runs into one folder would mix their results
        found = [str(p) for p in outputs if p.suffix in (".json", ".md") and p.exists()]
        if found and not args.overwrite:
            raise UserError(f"{', '.join(found)} already exist(s); pass --overwrite to replace")
        # The checkpoint first: a missing one is not reported as missing data.
        loaded = load_model(args.checkpoint, device) if args.checkpoint else None
        loader = eval_loader(
            args.data_root, args.split, num_workers=args.num_workers, limit=args.limit
        )
        if loaded:
            evaluate_checkpoint(args.checkpoint, loaded, loader, args)
        else:
            compare(args, loader, device)


def segment(args: argparse.Namespace, out: Path, device: torch.device) -> None:
    """--images: the checkpoint's masks and panels of the photos, under <out-dir>/photos/."""
    model, info, device = load_model(args.checkpoint, device)
    photos = check_output(out / PHOTOS, folder=True)
    synthetic = bool(info.get("synthetic"))
    if segment_images(model, args.images, device, photos, args.checkpoint, synthetic) == 0:
        raise UserError("none of the --images could be read")


if __name__ == "__main__":
    run(main, parse_args)
