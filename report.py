"""Draft the lab report from what the runs left in outputs/ and weights/.

    python report.py               # writes outputs/report.md
    python report.py --overwrite   # replaces it (it may hold your own writing: keep a copy)

Every number in the draft is read from a file a command wrote (Step 1's JSON, the
checkpoints' saved arguments and logs, the comparison table, benchmark.json) or computed from
the code itself (the architecture table, the loss formulas). Missing inputs are listed at the
top instead of stopping the draft. The discussion and the LLM-use sections are headings with
guiding questions: those are the student's to write.
"""

from cli import OUTPUTS_DIR, WEIGHTS_DIR, UserError, parser, path_arg, run

import argparse
import datetime
import inspect
from pathlib import Path

import torch

import distill
import files
import model
from checkpoints import read_checkpoint
from distill import KD_MODES
from files import (
    AMOUNT,
    COUNT,
    FRACTION,
    ListOf,
    Maybe,
    Number,
    check_output,
    exclusive,
    write_text,
)
from lab import (
    BENCHMARK_RESULT,
    COMPARISON,
    OVERLAYS,
    REPORT,
    STEP1_RESULT,
    TEACHER_PREFIX,
    curves_path,
    last_path,
    student_path,
)
from model import build_student, count_params, describe_layers
from voc import NUM_CLASSES, VOC_CLASSES

# The training flags the report's table shows, in this order.
HYPER_PARAMETERS = (
    "train_set epochs batch_size crop_size optimizer lr weight_decay warmup_epochs "
    "pretrained_backbone seed alpha beta tau feat_weight teacher_weights limit_train"
).split()


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument(
        "--out-dir",
        type=path_arg,
        default=OUTPUTS_DIR,
        help=f"folder the runs wrote to, and where {REPORT} goes",
    )
    p.add_argument(
        "--weights-dir",
        type=path_arg,
        default=WEIGHTS_DIR,
        help="folder of the trained checkpoints",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing report.md, which you may have edited",
    )
    return p.parse_args(argv)


STEP1_KEYS = {
    "miou": FRACTION,
    "iou": ListOf(Maybe(FRACTION), NUM_CLASSES),
    "params": COUNT,
    "ms_per_image": AMOUNT,
    "pixel_acc": FRACTION,
    "input_size": COUNT,
    "device_name": str,
    "num_images": COUNT,
    "split": str,
    "date": str,
}
BENCH_MODEL_KEYS = {
    "model": str,
    "runtime": str,
    "params": COUNT,
    "gflops": AMOUNT,
    "ms_per_image": AMOUNT,
    "times_student": AMOUNT,
    "mb": AMOUNT,
}
BENCH_STEP_KEYS = {"kd": str, "ms_per_step": AMOUNT, "overhead_vs_none": Number(-1)}
BENCH_KEYS = {
    "models": ListOf(BENCH_MODEL_KEYS, min_length=1),
    "train_steps": ListOf(BENCH_STEP_KEYS, min_length=1),
    "device_name": str,
    "torch": str,
    "date": str,
    "size": COUNT,
    "batch_size": COUNT,
    "crop_size": COUNT,
}


def own_file(path: Path, outputs: Path, missing: list) -> bool:
    """`path` exists and is a file of this tree: a link is never followed (it could point at
    any file of the machine, which the report and the zip would then copy)."""
    if path.is_symlink() or not path.resolve().is_relative_to(outputs.resolve()):
        missing.append(f"`{path}`: a link, not followed")
        return False
    return path.is_file()


def read_json(path: Path, schema: dict, missing: list) -> dict | None:
    """The JSON object at `path` matching `schema` (files.read_json); else None, with the
    reason added to `missing` (absent, a link, unreadable, or not what a command of the lab
    writes)."""
    if not own_file(path, path.parent, missing):
        if not path.is_symlink():
            missing.append(f"`{path}`")
        return None
    try:
        return files.read_json(path, schema)
    except UserError as e:
        missing.append(f"`{path}`{str(e).removeprefix(str(path))}")
        return None


def read_runs(weights: Path, missing: list) -> dict:
    """{kd: checkpoint dict} of the trained students found in weights/: the best checkpoint,
    with the full history of its _last twin when there is one (the best one's history stops
    at the best epoch)."""
    runs = {}
    for kd in KD_MODES:
        path = student_path(kd, weights)
        if not path.exists():
            missing.append(f"`{path}` (python train.py --kd {kd})")
            continue
        try:
            ckpt = read_checkpoint(path)
            if last_path(path).exists():
                ckpt["history"] = read_checkpoint(last_path(path))["history"]
        except UserError as e:
            missing.append(f"`{path}`: unreadable ({e})")
            continue
        runs[kd] = ckpt
    return runs


def md_table(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def step1_section(step1: dict | None) -> list:
    if step1 is None:
        return ["## 1. Step 1: FCN-ResNet50", "", "*Missing: run `python test_pretrained.py`.*", ""]
    weights = {"default": "pretrained", "none": "RANDOM-weight"}.get(step1.get("weights"), "")
    data = "SYNTHETIC data" if step1.get("synthetic") else "VOC 2012"
    lines = [
        f"## 1. Step 1: {weights} FCN-ResNet50 on {data} {step1['split']}".replace("  ", " "),
        "",
    ]
    lines += [
        f"Weights: `{step1.get('weights')}`. mIoU **{100 * step1['miou']:.2f} %**, pixel accuracy "
        f"{100 * step1['pixel_acc']:.2f} %, {step1['params']:,d} parameters (without the "
        f"training-only auxiliary head), {step1['ms_per_image']:.1f} ms/image (batch 1, "
        f"{step1['input_size']}x{step1['input_size']}, {step1['device_name']}), "
        f"{step1['num_images']} images of {step1['split']}, measured {step1['date']}.",
        "",
    ]
    rows = [
        (name, "-" if iou is None else f"{100 * iou:.2f}")
        for name, iou in zip(VOC_CLASSES, step1["iou"])
    ]
    return lines + md_table(["class", "IoU (%)"], rows) + [""]


def architecture_section() -> list:
    student = build_student()
    rows = [
        (f"`{name}`", kind, "x".join(map(str, shape)), f"{params:,d}")
        for name, kind, shape, params in describe_layers(student)
    ]
    return [
        "## 2. The student network",
        "",
        "```",
        inspect.getdoc(model.Student),
        "```",
        "",
        "Layer by layer, for a 520x520 input (output shape C x H x W; parameters counted from "
        "the model):",
        "",
        *md_table(["block", "type", "output", "parameters"], rows),
        "",
        f"Total: **{count_params(student):,d} parameters**.",
        "",
    ]


def distillation_section() -> list:
    return [
        "## 3. Knowledge distillation as implemented",
        "",
        "From the docstrings of `distill.py`, the code that computes the losses:",
        "",
        "```",
        inspect.getdoc(distill),
        "```",
        "",
        "`response_kd_loss`:",
        "",
        "```",
        inspect.getdoc(distill.response_kd_loss),
        "```",
        "",
        "`cosine_distance`:",
        "",
        "```",
        inspect.getdoc(distill.cosine_distance),
        "```",
        "",
        "Distilled feature pairs (student tap <-> teacher layer): "
        + ", ".join(f"`{name}`" for name in distill.FEATURE_PAIRS)
        + ", each through a 1x1 conv + BN adapter that exists only during training.",
        "",
    ]


def training_section(runs: dict, outputs: Path, missing: list) -> list:
    lines = ["## 4. Training", ""]
    if not runs:
        return lines + ["*No trained checkpoint found.*", ""]
    header = ["hyper-parameter"] + [f"--kd {kd}" for kd in runs]
    rows = [
        [name] + [ckpt["args"].get(name, "-") for ckpt in runs.values()]
        for name in HYPER_PARAMETERS
    ]
    lines += md_table(header, rows) + [
        "",
        "Training time (sum of the logged epoch times, validation and teacher included):",
        "",
    ]
    rows = []
    for kd, ckpt in runs.items():
        times = [row["epoch_time_s"] for row in ckpt["history"]]
        rows.append(
            (
                f"--kd {kd}",
                len(times),
                f"{sum(times) / 60:.1f} min",
                f"{sum(times) / len(times):.1f} s",
                f"{100 * ckpt['best_miou']:.2f}",
            )
        )
    lines += md_table(["run", "epochs", "total", "per epoch", "best val mIoU (%)"], rows) + [""]
    for kd in runs:
        plot = curves_path(student_path(kd), outputs)
        if own_file(plot, outputs, missing):
            lines += [f"![loss and mIoU curves, --kd {kd}]({plot.name})", ""]
        elif not plot.is_symlink():
            missing.append(f"`{plot}`")
    return lines


def results_section(outputs: Path, bench: dict | None, missing: list) -> list:
    lines = ["## 5. Results", ""]
    table = outputs / f"{COMPARISON}.md"
    if own_file(table, outputs, missing):
        try:
            text = files.read_utf8(table, "the comparison table")
        except UserError as e:
            missing.append(f"`{table}`: unreadable ({e})")
        else:
            lines += text.replace("# Knowledge", "### Knowledge").splitlines() + [""]
    elif not table.is_symlink():
        missing.append(f"`{table}` (python test.py --compare ...)")
    if bench is not None:
        lines += [
            f"### Speed and size, one process ({bench['device_name']}, torch "
            f"{bench['torch']}, {bench['date']}, `python benchmark.py`)",
            "",
        ]
        rows = [
            (
                r["model"],
                r.get("runtime", "eager"),
                f"{r['params']:,d}",
                f"{r['gflops']:.2f}",
                f"{r['ms_per_image']:.1f}",
                f"{r['times_student']:.2f}x",
                f"{r.get('mb', 0):.2f}",
            )
            for r in bench["models"]
        ]
        header = [
            "model",
            "runtime",
            "parameters",
            "GFLOPs",
            f"ms/image ({bench['size']}px)",
            "time vs eager student",
            "MB",
        ]
        lines += md_table(header, rows) + [""]
        rows = [
            (f"--kd {r['kd']}", f"{r['ms_per_step']:.1f}", f"+{r['overhead_vs_none']:.0%}")
            for r in bench["train_steps"]
        ]
        lines += md_table(
            [
                f"training step (batch {bench['batch_size']}, crop {bench['crop_size']})",
                "ms",
                "over --kd none",
            ],
            rows,
        ) + [""]
    return lines


def qualitative_section(outputs: Path, runs: dict, missing: list) -> list:
    lines = [
        "## 6. Qualitative results",
        "",
        "Each panel: image | ground truth | prediction, the labels in opaque VOC class colours "
        "(the legend's), void (255, not scored) in cream.",
        "",
    ]
    for prefix, title in [(TEACHER_PREFIX, "FCN-ResNet50 (Step 1)")] + [
        (f"student_{kd}", f"student, --kd {kd}") for kd in runs
    ]:
        found = [
            p
            for p in sorted((outputs / OVERLAYS).glob(f"{prefix}_*.png"))
            if own_file(p, outputs, missing)
        ]
        if not found:
            missing.append(f"overlays `{outputs / OVERLAYS / prefix}_*.png`")
            continue
        lines += [f"### {title}", ""]
        lines += [f"![{p.stem}]({OVERLAYS}/{p.name})" for p in found] + [""]
    return lines


STUDENT_SECTIONS = [
    "## 7. Discussion (write this yourself)",
    "",
    "- Which KD method helped, by how much, and is the difference larger than the run-to-run "
    "spread you would expect from another seed?",
    "- Where does the student fail (see the worst overlays)? Small objects, thin structures, "
    "rare classes (see the per-class IoU)?",
    "- What did distillation cost in training time, and what does it cost at inference?",
    "- What would you change next (temperature, feature pairs, training set, schedule)?",
    "",
    "## 8. Use of LLMs (write this yourself)",
    "",
    "- Which tools did you use, for which parts, and how did you check what they produced?",
    "",
]


def build_report(outputs: Path, weights: Path) -> tuple:
    """(the draft's text, whether any of its inputs was measured on SYNTHETIC data)."""
    missing = []
    step1 = read_json(outputs / STEP1_RESULT, STEP1_KEYS, missing)
    bench = read_json(outputs / BENCHMARK_RESULT, BENCH_KEYS, missing)
    runs = read_runs(weights, missing)
    body = (
        step1_section(step1)
        + architecture_section()
        + distillation_section()
        + training_section(runs, outputs, missing)
        + results_section(outputs, bench, missing)
        + qualitative_section(outputs, runs, missing)
        + STUDENT_SECTIONS
    )
    synthetic = any(d and d.get("synthetic") for d in [step1, *runs.values()])
    head = [
        "# Lab report draft: compact segmentation with knowledge distillation",
        "",
        f"Generated by `python report.py` on {datetime.date.today().isoformat()} "
        f"(torch {torch.__version__}).",
        "",
    ]
    if synthetic:
        head += [
            "> **SYNTHETIC data**: some inputs were measured on `dataset.py --fake-voc` "
            "data. None of their numbers is a VOC result.",
            "",
        ]
    if missing:
        head += ["**Missing inputs** (the sections that need them are incomplete):", ""]
        head += [f"- {item}" for item in missing] + [""]
    methods = ", ".join(KD_MODES[kd].label for kd in runs) or "none yet"
    head += [f"Trained runs found: {methods}.", ""]
    return "\n".join(head + body), synthetic


def main(args: argparse.Namespace) -> None:
    outputs = check_output(args.out_dir, folder=True)
    path = outputs / REPORT
    with exclusive([path]):
        if path.exists() and not args.overwrite:
            raise UserError(
                f"{path} exists and may hold your own writing; move it away or pass --overwrite"
            )
        text, synthetic = build_report(outputs, Path(args.weights_dir))
        write_text(text, path)
    print(f"wrote {path}{' (from SYNTHETIC inputs: no VOC result)' if synthetic else ''}")


if __name__ == "__main__":
    run(main, parse_args)
