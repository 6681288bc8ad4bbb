"""Step 1: evaluate torchvision's pretrained FCN-ResNet50 (COCO_WITH_VOC_LABELS_V1) on VOC 2012.

    python test_pretrained.py                       # VOC val; weights go to the torch hub cache
    python test_pretrained.py --weights fcn.pth     # a local state dict (offline machines)

Offline smoke run on SYNTHETIC data with a random teacher (downloads nothing, means nothing):
    python dataset.py --fake-voc data_fake --num-images 8
    python test_pretrained.py --weights none --data-root data_fake --limit 3 --device cpu

Images are resized so their shorter side is 520 and normalised, as the weights' transforms()
document; the logits are upsampled back to each label's original size and scored there, 255
ignored. Prints the per-class IoU table, mIoU, pixel accuracy, parameters and ms/image, and
writes <out>/step1_fcn_resnet50.json and best/worst overlays under <out>/overlays/.
"""

import argparse
from pathlib import Path

from dataset import eval_loader, is_synthetic, save_overlays
from metrics import add_eval_args, format_report, measure, positive_int, write_json
from model import TEACHER_RESIZE, build_teacher, resolve_device

RESULT_NAME = "step1_fcn_resnet50.json"  # test.py --compare reads the teacher's row from it


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_eval_args(p)
    p.add_argument(
        "--weights",
        default="default",
        help="default (torchvision's COCO_WITH_VOC_LABELS_V1), a state dict path, or "
        "none (random, smoke tests only) (default: default)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="images per forward pass, zero-padded (see dataset.collate_eval); "
        "reported numbers use 1 (default: 1)",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    loader = eval_loader(
        args.data_root,
        args.split,
        args.batch_size,
        args.num_workers,
        resize=TEACHER_RESIZE,
        limit=args.limit,
    )
    teacher = build_teacher(args.weights).to(device)
    result = measure(teacher, loader, device, args.size, args.runs)
    result.update(
        model="FCN-ResNet50",
        weights=args.weights,
        split=args.split,
        synthetic=is_synthetic(args.data_root),
    )
    print(format_report(result, f"Step 1: FCN-ResNet50 ({args.weights} weights)"))
    out = Path(args.out)
    write_json(result, out / RESULT_NAME)
    overlays = save_overlays(
        teacher,
        loader.dataset,
        result["per_image_miou"],
        args.num_overlays,
        out / "overlays",
        "fcn_resnet50",
        device,
    )
    print(f"wrote {out / RESULT_NAME} and {len(overlays)} overlays in {out / 'overlays'}")


if __name__ == "__main__":
    main(parse_args())
