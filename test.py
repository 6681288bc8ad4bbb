"""Step 3: evaluate trained students on VOC 2012 val, and compare the KD methods in one table.

    python test.py --checkpoint weights/student_none.pth
    python test.py --compare weights/student_none.pth weights/student_response.pth \\
        weights/student_feature.pth weights/student_both.pth
    python test.py --checkpoint weights/student_response.pth --images photos/ me.jpg

Prints the per-class IoU table, mIoU, parameters (the student's own: distillation adapters
are not part of it) and ms/image (batch 1, after warm-up), writes <out>/test_<name>.json and
the best and worst overlays under <out>/overlays/. --compare also writes
<out>/kd_comparison.md and .json, with the teacher's row taken from Step 1's JSON when present.
--images segments your own photos (files, or folders of .jpg/.png) without the dataset:
<out>/<name>_mask.png (VOC colours) and <name>_overlay.png (blended, with a class legend).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from dataset import (
    OVERLAY_ALPHA,
    colorize,
    eval_loader,
    is_synthetic,
    legend,
    normalize,
    save_overlays,
    side_by_side,
)
from distill import KD_LABELS
from metrics import add_eval_args, format_report, measure, model_logits, write_json
from model import load_student, resolve_device
from test_pretrained import RESULT_NAME as TEACHER_RESULT

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint",
        help="a student checkpoint written by train.py (this or --compare is required)",
    )
    what.add_argument(
        "--compare",
        nargs="+",
        metavar="CHECKPOINT",
        help="several checkpoints: evaluate each and write the comparison table (default: off)",
    )
    p.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="with --checkpoint: segment these photos or folders instead of a VOC split "
        "(default: off)",
    )
    add_eval_args(p)
    args = p.parse_args(argv)
    if args.images and not args.checkpoint:
        p.error("--images goes with --checkpoint")
    return args


def evaluate_checkpoint(path: str, loader, device, args: argparse.Namespace) -> dict:
    """Evaluate one checkpoint, print its report, write its JSON and overlays."""
    student, ckpt = load_student(path)
    student.to(device)
    kd = ckpt.get("args", {}).get("kd", "?")
    result = measure(student, loader, device, args.size, args.runs)
    result.update(
        model="student",
        kd=kd,
        checkpoint=str(path),
        epoch=ckpt.get("epoch"),
        split=args.split,
        synthetic=is_synthetic(args.data_root) or bool(ckpt.get("synthetic")),
    )
    print(format_report(result, f"student {path} (--kd {kd})"))
    name = Path(path).stem
    out = Path(args.out)
    write_json(result, out / f"test_{name}.json")
    save_overlays(
        student,
        loader.dataset,
        result["per_image_miou"],
        args.num_overlays,
        out / "overlays",
        name,
        device,
    )
    return result


def image_files(paths: list) -> list:
    """The given files, and the .jpg/.jpeg/.png files in the given folders, sorted."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def segment_images(student: torch.nn.Module, paths: list, device, out: Path) -> int:
    """Write <name>_mask.png and <name>_overlay.png (with a legend) for each image; report and
    skip the unreadable ones. Returns how many were segmented."""
    out.mkdir(parents=True, exist_ok=True)
    done = 0
    for path in image_files(paths):
        try:
            image = Image.open(path).convert("RGB")
        except (OSError, ValueError) as e:  # missing, unreadable or not an image
            print(f"skipped {path}: {e}", file=sys.stderr)
            continue
        with torch.inference_mode():
            x = normalize(TF.to_image(image))[None].to(device)
            pred = model_logits(student.eval(), x).argmax(1)[0].cpu().numpy()
        mask = colorize(pred)
        mask.save(out / f"{path.stem}_mask.png")
        blended = Image.blend(image, mask, OVERLAY_ALPHA)
        side_by_side([blended, legend(sorted(set(pred.flat)))]).save(
            out / f"{path.stem}_overlay.png"
        )
        print(f"{path} -> {out / path.stem}_{{mask,overlay}}.png")
        done += 1
    return done


def comparison_markdown(results: list, teacher: dict | None) -> str:
    """The report's table: KD method | mIoU | parameters | ms/image, one row per run."""
    rows = [(f"{KD_LABELS.get(r['kd'], r['kd'])}", r) for r in results]
    if teacher is not None:
        weights, images = teacher.get("weights", "default"), teacher.get("num_images")
        note = "" if weights == "default" else f", weights: {weights}"
        note += "" if images in (None, results[0]["num_images"]) else f", {images} images"
        rows.append((f"FCN-ResNet50 teacher (Step 1, reference{note})", teacher))
    synthetic = any(r.get("synthetic") for _, r in rows)
    lines = [
        "# Knowledge distillation: comparison"
        + (" -- SYNTHETIC data, not VOC results" if synthetic else ""),
        "",
        f"mIoU on {'SYNTHETIC' if synthetic else 'VOC 2012'} {results[0]['split']} "
        f"({results[0]['num_images']} images) at each "
        "label's original resolution; ms/image: batch 1, median after warm-up, on the input "
        "size and device of each row.",
        "",
        "| KD method | mIoU (%) | # parameters | ms/image | input | device | source |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for label, r in rows:
        source = r.get("checkpoint", TEACHER_RESULT)
        lines.append(
            f"| {label} | {100 * r['miou']:.2f} | {r['params']:,d} | "
            f"{r['ms_per_image']:.1f} | {r['input_size']}x{r['input_size']} | "
            f"{r['device_name']} | {source} |"
        )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if args.images:
        student, _ = load_student(args.checkpoint)
        if segment_images(student.to(device), args.images, device, Path(args.out)) == 0:
            raise SystemExit("error: none of the --images could be read")
        return
    loader = eval_loader(args.data_root, args.split, num_workers=args.num_workers, limit=args.limit)
    if args.checkpoint:
        evaluate_checkpoint(args.checkpoint, loader, device, args)
        return
    results = [evaluate_checkpoint(path, loader, device, args) for path in args.compare]
    out = Path(args.out)
    teacher_json = out / TEACHER_RESULT
    teacher = json.loads(teacher_json.read_text()) if teacher_json.exists() else None
    table = comparison_markdown(results, teacher)
    (out / "kd_comparison.md").write_text(table)
    keep = (
        "kd",
        "checkpoint",
        "miou",
        "params",
        "ms_per_image",
        "input_size",
        "device",
        "device_name",
        "split",
        "num_images",
        "synthetic",
        "date",
        "weights",
    )
    write_json(
        {
            "students": [{k: r.get(k) for k in keep} for r in results],
            "teacher": {k: teacher.get(k) for k in keep} if teacher else None,
        },
        out / "kd_comparison.json",
    )
    print("\n" + table + f"\nwrote {out / 'kd_comparison.md'} and {out / 'kd_comparison.json'}")


if __name__ == "__main__":
    main(parse_args())
