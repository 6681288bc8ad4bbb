"""Step 1: evaluate torchvision's pretrained FCN-ResNet50 (COCO_WITH_VOC_LABELS_V1) on VOC 2012.

    python test_pretrained.py                       # VOC val; weights go to the torch hub cache
    python test_pretrained.py --weights fcn.pth     # a local state dict (offline machines)

Offline smoke run on SYNTHETIC data with a random teacher (downloads nothing, means nothing):
    python dataset.py --fake-voc data_fake --num-images 8
    python test_pretrained.py --weights none --data-root data_fake --limit 3 --device cpu

Images are resized so their shorter side is 520 and normalised, as the weights' transforms()
document; the logits are upsampled back to each label's original size and scored there, 255
ignored. Prints the per-class IoU table, mIoU, pixel accuracy, parameters and ms/image, and
writes <out-dir>/step1_fcn_resnet50.json and best/worst overlays under <out-dir>/overlays/.
"""

from cli import UserError, add_eval_args, number, parser, resolve_device, run

import argparse
from pathlib import Path

import torch

from files import check_output, exclusive, write_json
from lab import OVERLAYS, STEP1_RESULT, TEACHER_PREFIX, save_overlays
from loaders import eval_loader
from metrics import format_report, measure
from model import TEACHER_RESIZE, build_teacher, count_params
from voc import is_synthetic


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    add_eval_args(p, size=TEACHER_RESIZE)
    p.add_argument(
        "--weights",
        default="default",
        help="default (torchvision's COCO_WITH_VOC_LABELS_V1), a state dict path, or "
        "none (random, smoke tests only)",
    )
    p.add_argument(
        "--batch-size",
        type=number(int, 1, 256),
        default=1,
        help="images per forward pass, zero-padded (see loaders.collate_eval); "
        "reported numbers use 1",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    out = check_output(args.out_dir, folder=True)
    with exclusive([out / STEP1_RESULT, out / OVERLAYS / TEACHER_PREFIX]):
        if (out / STEP1_RESULT).exists() and not args.overwrite:
            raise UserError(f"{out / STEP1_RESULT} already exists; pass --overwrite to replace it")
        evaluate_teacher(args, out)


def evaluate_teacher(args: argparse.Namespace, out: Path) -> None:
    device = resolve_device(args.device)
    loader = eval_loader(
        args.data_root,
        args.split,
        args.batch_size,
        args.num_workers,
        resize=TEACHER_RESIZE,
        limit=args.limit,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(0)  # --weights none: the same random weights at every run
    teacher = build_teacher(args.weights).to(device)
    synthetic = is_synthetic(args.data_root)
    params = count_params(teacher)
    result = measure(teacher, loader, device, args.size, args.runs, params, keep_predictions=True)
    predictions = result.pop("predictions")
    result.update(model="FCN-ResNet50", weights=args.weights, split=args.split, synthetic=synthetic)
    what = f"FCN-ResNet50, {describe_weights(args.weights)}"
    print(format_report(result, f"Step 1: {what}"))
    write_json(result, out / STEP1_RESULT)
    print(f"wrote {out / STEP1_RESULT}")
    overlays = save_overlays(
        loader.dataset,
        result["per_image_miou"],
        predictions,
        args.num_overlays,
        out / OVERLAYS,
        TEACHER_PREFIX,
        what,
        synthetic,
    )
    for path in overlays:
        print(f"wrote {path}")


def describe_weights(weights: str) -> str:
    """--weights as a title says it: what was really evaluated."""
    named = {"default": "pretrained COCO_WITH_VOC_LABELS_V1 weights", "none": "RANDOM weights"}
    return named.get(weights, f"weights {weights}")


if __name__ == "__main__":
    run(main, parse_args)
