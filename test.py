"""Step 3: evaluate trained students on VOC 2012 val, and compare the KD methods in one table.

    python test.py --checkpoint weights/student_none.pth
    python test.py --compare weights/student_none.pth weights/student_response.pth \\
        weights/student_feature.pth weights/student_both.pth

Prints the per-class IoU table, mIoU, parameters (the student's own: distillation adapters
are not part of it) and ms/image (batch 1, after warm-up), writes <out>/test_<name>.json and
the best and worst overlays under <out>/overlays/. --compare also writes
<out>/kd_comparison.md and .json, with the teacher's row taken from Step 1's JSON when present.
"""

import argparse
import json
from pathlib import Path

from dataset import eval_loader, is_synthetic, save_overlays
from metrics import format_report, measure, write_json
from model import load_student, resolve_device
from test_pretrained import RESULT_NAME as TEACHER_RESULT

KD_LABELS = {"none": "none (cross-entropy only)", "response": "response-based",
             "feature": "feature-based", "both": "response + feature"}


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="a student checkpoint written by train.py")
    what.add_argument("--compare", nargs="+", metavar="CHECKPOINT",
                      help="several checkpoints: evaluate each and write the comparison table")
    p.add_argument("--data-root", default="data", help="folder holding VOCdevkit/ (default: data)")
    p.add_argument("--split", default="val", choices=("train", "val"), help="(default: val)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate the first N images only (default: all)")
    p.add_argument("--num-overlays", type=int, default=3,
                   help="best and worst overlays to save, each (default: 3)")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes (default: 2)")
    p.add_argument("--size", type=int, default=520,
                   help="side of the square input timed for ms/image (default: 520)")
    p.add_argument("--runs", type=int, default=20, help="timed forward passes (default: 20)")
    p.add_argument("--out", default="outputs", help="folder for JSON, tables and overlays "
                                                    "(default: outputs)")
    args = p.parse_args(argv)
    for name in ("limit", "size", "runs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def evaluate_checkpoint(path: str, loader, device, args: argparse.Namespace) -> dict:
    """Evaluate one checkpoint, print its report, write its JSON and overlays."""
    student, ckpt = load_student(path)
    student.to(device)
    kd = ckpt.get("args", {}).get("kd", "?")
    result = measure(student, loader, device, args.size, args.runs)
    result.update(model="student", kd=kd, checkpoint=str(path), epoch=ckpt.get("epoch"),
                  split=args.split,
                  synthetic=is_synthetic(args.data_root) or bool(ckpt.get("synthetic")))
    print(format_report(result, f"student {path} (--kd {kd})"))
    name = Path(path).stem
    out = Path(args.out)
    write_json(result, out / f"test_{name}.json")
    save_overlays(student, loader.dataset, result["per_image_miou"], args.num_overlays,
                  out / "overlays", name, device)
    return result


def comparison_markdown(results: list, teacher: dict | None) -> str:
    """The report's table: KD method | mIoU | parameters | ms/image, one row per run."""
    rows = [(f"{KD_LABELS.get(r['kd'], r['kd'])}", r) for r in results]
    if teacher is not None:
        rows.append(("FCN-ResNet50 teacher (Step 1, reference)", teacher))
    synthetic = any(r.get("synthetic") for _, r in rows)
    lines = [
        "# Knowledge distillation: comparison" + (" -- SYNTHETIC data, not VOC results"
                                                   if synthetic else ""),
        "",
        f"mIoU on VOC 2012 {results[0]['split']} ({results[0]['num_images']} images) at each "
        "label's original resolution; ms/image: batch 1, median after warm-up, on the input "
        "size and device of each row.",
        "",
        "| KD method | mIoU (%) | # parameters | ms/image | input | device | source |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for label, r in rows:
        source = r.get("checkpoint", TEACHER_RESULT)
        lines.append(f"| {label} | {100 * r['miou']:.2f} | {r['params']:,d} | "
                     f"{r['ms_per_image']:.1f} | {r['input_size']}x{r['input_size']} | "
                     f"{r['device_name']} | {source} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    loader = eval_loader(args.data_root, args.split, num_workers=args.num_workers,
                         limit=args.limit)
    if args.checkpoint:
        evaluate_checkpoint(args.checkpoint, loader, device, args)
        return
    results = [evaluate_checkpoint(path, loader, device, args) for path in args.compare]
    out = Path(args.out)
    teacher_json = out / TEACHER_RESULT
    teacher = json.loads(teacher_json.read_text()) if teacher_json.exists() else None
    table = comparison_markdown(results, teacher)
    (out / "kd_comparison.md").write_text(table)
    keep = ("kd", "checkpoint", "miou", "params", "ms_per_image", "input_size", "device",
            "device_name", "split", "num_images", "synthetic", "date")
    write_json({"students": [{k: r.get(k) for k in keep} for r in results],
                "teacher": {k: teacher.get(k) for k in keep} if teacher else None},
               out / "kd_comparison.json")
    print("\n" + table + f"\nwrote {out / 'kd_comparison.md'} and {out / 'kd_comparison.json'}")


if __name__ == "__main__":
    main(parse_args())
