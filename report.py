"""Draft the lab report from what the runs left in outputs/ and weights/: every section the lab
asks for, in its order, with every number read from a file a command wrote.

    python report.py               # writes outputs/report.md
    python report.py --overwrite   # writes it again, keeping what you wrote in sections 6 and 7

Sections 1-5 are made from the code (the architecture, the losses) and the results (Step 1's
JSON, test.py's per checkpoint, the checkpoints' flags and histories, benchmark.json, the
curves and panels); missing or unusable inputs are listed at the top instead of stopping the
draft. Sections 6 (discussion) and 7 (use of LLMs) are yours: between their markers, your text
survives a rerun. Open the file in PyCharm's Markdown preview (or any): the pictures are linked
relative to it.
"""

from cli import OUTPUTS_DIR, WEIGHTS_DIR, UserError, add_overwrite, parser, path_arg, run

import argparse
import datetime
import re
from pathlib import Path

import torch
from PIL import Image

import files
from checkpoints import read_checkpoint
from distill import FEATURE_PAIRS, KD_MODES
from files import check_output, exclusive, write_text
from lab import (
    BENCHMARK,
    BENCHMARK_RESULT,
    OVERLAYS,
    REPORT,
    RESULT,
    STEP1_RESULT,
    TEACHER_PREFIX,
    OptimConfig,
    curves_path,
    student_path,
)
from model import (
    BN_MOMENTUM,
    STUDENT_TAPS,
    TEACHER_TAPS,
    StudentConfig,
    build_student,
    count_params,
    describe_layers,
)
from voc import RANDOM_TEACHER, VOC_CLASSES, random_teacher

# The training flags the report's table shows, in this order (paths and devices apart).
HYPER_PARAMETERS = (
    "train_set epochs batch_size crop_size optimizer lr weight_decay warmup_epochs "
    "pretrained_backbone seed alpha beta tau feat_weight teacher_weights teacher_cache "
    "limit_train limit_val"
).split()
PANELS = 2  # of the best and of the worst, per model: the draft's qualitative section
YOURS = {"discussion": "6. Discussion", "llm": "7. Use of LLMs"}  # sections the student writes
REFERENCES = [
    "Chen, Papandreou, Schroff, Adam (2017). Rethinking Atrous Convolution for Semantic Image "
    "Segmentation. arXiv:1706.05587 (DeepLabV3, the ASPP).",
    "Chen, Zhu, Papandreou, Schroff, Adam (2018). Encoder-Decoder with Atrous Separable "
    "Convolution for Semantic Image Segmentation. ECCV (DeepLabV3+, the decoder).",
    "Hinton, Vinyals, Dean (2015). Distilling the Knowledge in a Neural Network. "
    "arXiv:1503.02531 (response-based distillation, the temperature, tau^2).",
    "Howard et al. (2019). Searching for MobileNetV3. ICCV (the encoder).",
    "Long, Shelhamer, Darrell (2015). Fully Convolutional Networks for Semantic Segmentation. "
    "CVPR (FCN, the teacher's head); He et al. (2016), Deep Residual Learning, CVPR (ResNet-50).",
    "Romero et al. (2015). FitNets: Hints for Thin Deep Nets. ICLR (feature-based distillation "
    "through a trained adapter, the 'regressor').",
    "Everingham et al. (2010). The PASCAL Visual Object Classes (VOC) Challenge. IJCV.",
]


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument(
        "--out-dir", type=path_arg, default=OUTPUTS_DIR, help=f"folder of the results and {REPORT}"
    )
    p.add_argument(
        "--weights-dir", type=path_arg, default=WEIGHTS_DIR, help="folder of the trained models"
    )
    add_overwrite(p, f"an existing {REPORT} (your sections 6 and 7 are kept)")
    return p.parse_args(argv)


class Inputs:
    """What the draft reads, each checked where it is read; `missing` lists what was not there
    or could not be used, and why."""

    def __init__(self, outputs: Path, weights: Path):
        self.outputs, self.missing = outputs, []
        self.step1 = self.json(STEP1_RESULT, RESULT, "python test_pretrained.py")
        self.bench = self.json(BENCHMARK_RESULT, BENCHMARK, "python benchmark.py")
        self.runs, self.results = {}, {}
        for kd in KD_MODES:
            path = student_path(kd, weights)
            if not path.exists():
                self.missing.append(f"`{path}` (python train.py --kd {kd})")
                continue
            try:
                self.runs[kd] = read_checkpoint(path)
            except UserError as e:
                self.missing.append(f"`{path}`: unusable ({e})")
            self.results[kd] = self.json(f"test_student_{kd}.json", RESULT, "test.py")
        self.deployed = {}  # test.py's results of the .onnx and .ort files
        for path in sorted(outputs.glob("test_*_onnx.json")) + sorted(
            outputs.glob("test_*_ort.json")
        ):
            self.deployed[path.stem.removeprefix("test_")] = self.json(path.name, RESULT, "")

    def json(self, name: str, schema: dict, command: str) -> dict | None:
        path = self.outputs / name
        if path.is_symlink() or not path.exists():
            why = "a link, not followed" if path.is_symlink() else f"missing ({command})"
            self.missing.append(f"`{path}`: {why}")
            return None
        try:
            return files.read_json(path, schema)
        except UserError as e:
            self.missing.append(f"`{path}`{str(e).removeprefix(str(path))}")
            return None

    def synthetic(self) -> bool:
        found = [self.step1, *self.runs.values(), *self.results.values(), *self.deployed.values()]
        return any(d and d.get("synthetic") for d in found)


def table(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""]


def percent(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def ms(result: dict) -> str:
    low, high = result["ms_quartiles"]
    return f"{result['ms_per_image']:.1f} ({low:.1f}-{high:.1f})"


def load(result: dict) -> str:
    """The machine's 1-minute load average when a time was measured ("?" where unknown)."""
    value = result.get("load")
    return f"{value:.2f}" if isinstance(value, (int, float)) else "?"


# ----------------------------------------------------------------------------- sections


def architecture_section() -> list:
    c, student = StudentConfig(), build_student()
    blocks = {}  # part -> (its output: its last layer's, its parameters)
    for name, _, shape, params in describe_layers(student):
        part = name.split(".")[0]
        blocks[part] = (shape, blocks.get(part, (None, 0))[1] + params)
    rows = [
        (f"`{part}`", "x".join(map(str, shape)), f"{n:,d}") for part, (shape, n) in blocks.items()
    ]
    taps = ", ".join(f"`{k}` {ch} channels at stride {s}" for k, (ch, s) in STUDENT_TAPS.items())
    return [
        "## 1. Architecture",
        "",
        "**The student** follows DeepLabV3+ [2] on a MobileNetV3-Small encoder [4] (torchvision's,"
        " ImageNet weights, its last stage dilated so that the deepest map stays at output stride"
        f" 16). The encoder's blocks 0-1, 2-3 and 4-11 give three maps: {taps}; block 12 (the"
        " 96 -> 576 expansion for ImageNet's classifier) is dropped. On the deepest map, an ASPP"
        f" [1]: a 1x1 convolution, three depthwise-separable 3x3 convolutions at rates"
        f" {', '.join(map(str, c.rates))} and image-level pooling (global average, 1x1), each"
        f" {c.aspp_channels} channels, concatenated and projected by a 1x1 to"
        f" {c.aspp_channels}. The decoder [2] upsamples it bilinearly to stride 4, concatenates"
        f" the stride-4 map projected to {c.skip_channels} channels, and fuses them with a 1x1 to"
        f" {c.decoder_channels} channels and a depthwise-separable 3x3; dropout {c.dropout}, a"
        f" 1x1 classifier to {c.num_classes} classes, and bilinear upsampling to the input's"
        " size give the logits. Every convolution is followed by BatchNorm (momentum"
        f" {BN_MOMENTUM}) and"
        " ReLU, but the pooling branch's and the classifier.",
        "",
        "Block by block, for a 520x520 input (output C x H x W; parameters counted on the model):",
        "",
        *table(["block", "output", "parameters"], rows),
        f"Total: **{count_params(student):,d} parameters**, all of them trained.",
        "",
        "**The teacher** is torchvision's FCN-ResNet50 [5] with its COCO_WITH_VOC_LABELS_V1 "
        "weights: a ResNet-50 whose layers 3 and 4 are dilated (output stride 8) and an FCN head"
        " (3x3 conv, BN, ReLU, dropout, 1x1 to 21 classes), the auxiliary head dropped. It is "
        "frozen: evaluation mode, no gradients, never saved with the student.",
        "",
    ]


def distillation_section() -> list:
    pairs = ", ".join(
        f"`{k}` -> {TEACHER_TAPS[k][0]} ({TEACHER_TAPS[k][1]} ch, stride {TEACHER_TAPS[k][2]})"
        for k in FEATURE_PAIRS
    )
    return [
        "## 2. Knowledge distillation, step by step",
        "",
        "1. Each training batch (a square crop of the image rescaled so its shorter side is 0.5 to "
        "2 crops, flipped at random) goes through the frozen teacher and the student alike.",
        "2. **Response-based** [3]: at each pixel whose label y is not 255 (void), with logits "
        "z_s (student) and z_t (teacher), p^tau = softmax(z / tau):",
        "",
        "   `L = alpha * H(y, softmax(z_s)) + beta * tau^2 * KL(p_t^tau || p_s^tau)`",
        "",
        "   each term averaged over the labelled pixels. The soft term's gradient scales as "
        "1/tau^2; the factor tau^2 keeps its weight against the hard term when tau changes.",
        f"3. **Feature-based** [6]: three pairs, student map -> teacher layer: {pairs}. Each "
        "student map goes through a trained 1x1 convolution + BatchNorm adapter to the "
        "teacher's channels, the teacher's map is resized to the student's (bilinear), and",
        "",
        "   `L = alpha * H(y, softmax(z_s))"
        " + feat_weight * sum over pairs of mean(1 - cos(a(f_s), f_t))`",
        "",
        "   the cosine taken along the channels at each labelled position (0 for identical "
        "maps, 2 for opposite ones). The adapters exist only during training.",
        "4. **Both**: the sum of the three terms. The weights used are in section 3.",
        "",
    ]  # fmt: skip


def training_section(inputs: Inputs) -> list:
    lines = ["## 3. Training", ""]
    if not inputs.runs:
        return lines + ["*No trained model found (python train.py).*", ""]
    runs = inputs.runs
    header = ["hyper-parameter"] + [f"--kd {kd}" for kd in runs]
    rows = [
        [name] + [ck["args"].get(name, "-") for ck in runs.values()] for name in HYPER_PARAMETERS
    ]
    momentum = OptimConfig().momentum  # not a flag: SGD's, written once in lab.py
    rows.append(
        ["momentum"]
        + [momentum if ck["args"].get("optimizer") == "sgd" else "-" for ck in runs.values()]
    )
    lines += table(header, rows)
    lines += [
        "Every run starts from the same seed; the learning rate rises linearly over the warm-up,"
        " then decays as (1 - step/total)^0.9. **The model reported is each run's last epoch**:"
        " val mIoU is logged every epoch to watch the run, never used to pick an epoch (which"
        " would choose the model on the split it is scored on).",
        "",
    ]
    rows = []
    for kd, ck in runs.items():
        times = [row["epoch_time_s"] for row in ck["history"]]
        hardware = ", ".join(sorted({row.get("device", "?") for row in ck["history"]}))
        rows.append(
            (
                f"--kd {kd}",
                len(times),
                f"{sum(times) / 60:.1f} min",
                f"{sum(times) / len(times):.1f} s",
                hardware,
            )
        )
    lines += ["Training time (validation, and the teacher for KD, included):", ""]
    lines += table(["run", "epochs", "total", "per epoch", "hardware"], rows)
    for kd in runs:
        plot = curves_path(student_path(kd), inputs.outputs)
        if plot.is_file():
            lines += [f"![Loss and val mIoU per epoch, --kd {kd}]({plot.name})", ""]
        else:
            inputs.missing.append(f"`{plot}`")
    return lines


def results_section(inputs: Inputs) -> list:
    lines = ["## 4. Results", ""]
    students = {kd: r for kd, r in inputs.results.items() if r is not None}
    rows = []
    if inputs.step1:
        weights = ", RANDOM weights" if inputs.step1.get("weights") == "none" else ""
        rows.append([f"FCN-ResNet50 teacher (Step 1{weights})", inputs.step1])
    for kd, r in students.items():
        random = kd in inputs.runs and random_teacher(inputs.runs[kd]["args"])
        mark = f", {RANDOM_TEACHER}" if random else ""
        rows.append([f"student, {KD_MODES[kd].label}{mark}", r])
    rows += [
        [f"`{Path(r['checkpoint']).name}` (ONNX Runtime)", r] for r in inputs.deployed.values() if r
    ]
    if rows:
        data = "SYNTHETIC" if inputs.synthetic() else "VOC 2012"
        lines += [
            f"mIoU on {data} {rows[0][1]['split']}, each label at its original resolution, void "
            "pixels ignored. ms/image: batch 1, the median of the timed passes and their "
            "quartiles, on the hardware named; the students of one architecture were timed "
            "once for all (test.py --compare).",
            "",
        ]
        header = ["model", "mIoU (%)", "images", "parameters", "ms/image (quartiles)", "input"]
        lines += table(
            header + ["hardware"],
            [
                [label, percent(r["miou"]), r["num_images"], f"{r['params']:,d}", ms(r),
                 f"{r['input_size']}x{r['input_size']}", r["device_name"]]
                for label, r in rows
            ],
        )  # fmt: skip
        lines += ["Per-class IoU (%):", ""]
        columns = [("teacher", inputs.step1)] if inputs.step1 else []
        columns += [(f"--kd {kd}", r) for kd, r in students.items()]
        lines += table(
            ["class"] + [name for name, _ in columns],
            [[c] + [percent(r["iou"][i]) for _, r in columns] for i, c in enumerate(VOC_CLASSES)],
        )
    bench = inputs.bench
    if bench:
        lines += [
            f"Speed and size on one machine ({bench['device_name']}, load {load(bench)}, "
            f"torch {bench['torch']}, {bench['date']}; `python benchmark.py`, random weights):",
            "",
        ]
        header = ["model", "runtime", "parameters", "GFLOPs", f"ms/image at {bench['size']}px"]
        lines += table(
            header + ["MB"],
            [
                [r["model"], r["runtime"], f"{r['params']:,d}", f"{r['gflops']:.2f}", ms(r),
                 f"{r['mb']:.2f}"]
                for r in bench["models"]
            ],
        )  # fmt: skip
    return lines


def caption(path: Path) -> str:
    """The panel's title, as save_png stored it in the PNG."""
    try:
        with Image.open(path) as image:
            return str(image.text.get("Title", path.stem))
    except (OSError, ValueError):
        return path.stem


def qualitative_section(inputs: Inputs) -> list:
    lines = [
        "## 5. Qualitative results",
        "",
        f"For each model, its {PANELS} best and {PANELS} worst val images by per-image mIoU: "
        "image | ground truth | prediction, in the VOC colours of the legend, void in cream.",
        "",
    ]
    models = [(TEACHER_PREFIX, "FCN-ResNet50 teacher")]
    models += [(f"student_{kd}", f"student, --kd {kd}") for kd in inputs.runs]
    for prefix, title in models:
        found = []
        for kind in ("best", "worst"):
            for rank in range(1, PANELS + 1):
                panel = re.compile(rf"{re.escape(prefix)}_{kind}{rank}_.+\.png")
                found += [
                    p for p in sorted((inputs.outputs / OVERLAYS).glob(f"{prefix}_{kind}{rank}_*"))
                    if panel.fullmatch(p.name) and not p.is_symlink()
                ]  # fmt: skip
        if not found:
            inputs.missing.append(f"panels `{inputs.outputs / OVERLAYS / prefix}_*.png`")
            continue
        lines += [f"### {title}", ""]
        for p in found:
            lines += [f"![{caption(p)}]({OVERLAYS}/{p.name})", "", f"*{caption(p)}*", ""]
    return lines


def yours(key: str, kept: dict) -> list:
    """A section the student writes, between markers that carry it over a rerun."""
    guide = {
        "discussion": [
            "- Which KD method helped, by how much, and is that more than another seed would "
            "move the mIoU?",
            "- Where does the student fail (section 5, the per-class table): small objects, "
            "thin structures, rare classes?",
            "- What did distillation cost in training time, and what does it cost at inference?",
            "- What would you change next (temperature, feature pairs, training set, schedule)?",
        ],
        "llm": ["- Which tools did you use, for which parts, and how did you check their output?"],
    }[key]
    text = kept.get(key) or "\n".join(["*To write.*", "", *guide])
    return [f"## {YOURS[key]}", "", f"<!-- yours: {key} -->", text, f"<!-- end: {key} -->", ""]


def kept_sections(path: Path) -> dict:
    """{key: the text between a section's markers} of an existing draft."""
    if not path.is_file():
        return {}
    text = files.read_utf8(path, "report draft")
    found = re.findall(r"<!-- yours: (\w+) -->\n(.*?)\n<!-- end: \1 -->", text, flags=re.S)
    return {key: body for key, body in found if key in YOURS}


def build_report(outputs: Path, weights: Path, kept: dict | None = None) -> tuple:
    """(the draft's text, whether any input was measured on SYNTHETIC data)."""
    inputs = Inputs(outputs, weights)
    body = (
        architecture_section()
        + distillation_section()
        + training_section(inputs)
        + results_section(inputs)
        + qualitative_section(inputs)
        + yours("discussion", kept or {})
        + yours("llm", kept or {})
        + ["## References", ""]
        + [f"{i}. {ref}" for i, ref in enumerate(REFERENCES, 1)]
    )
    synthetic = inputs.synthetic()
    head = [
        "# Compact semantic segmentation with knowledge distillation",
        "",
        f"Draft made by `python report.py` on {datetime.date.today().isoformat()} (torch "
        f"{torch.__version__}) from the lab's results; sections 6 and 7 are yours to write.",
        "",
    ]
    if synthetic:
        head += ["> **SYNTHETIC data**: some results were measured on `dataset.py --fake-voc` "
                 "data. None of their numbers is a VOC result.", ""]  # fmt: skip
    if any(random_teacher(ck["args"]) for ck in inputs.runs.values()):
        head += [f"> **{RANDOM_TEACHER}**: a student was distilled from a teacher with random "
                 "weights; its distillation means nothing.", ""]  # fmt: skip
    if inputs.missing:
        head += ["**Missing inputs** (the sections that need them are incomplete):", ""]
        head += [f"- {item}" for item in inputs.missing] + [""]
    return "\n".join(head + body) + "\n", synthetic


def main(args: argparse.Namespace) -> None:
    outputs = check_output(args.out_dir, folder=True)
    path = outputs / REPORT
    with exclusive([path]):
        if path.exists() and not args.overwrite:
            raise UserError(
                f"{path} exists and holds your writing; pass --overwrite to make it again "
                "(what you wrote in sections 6 and 7 is kept)"
            )
        text, synthetic = build_report(outputs, Path(args.weights_dir), kept_sections(path))
        write_text(text, path)
    print(f"wrote {path}{' (from SYNTHETIC inputs: no VOC result)' if synthetic else ''}")


if __name__ == "__main__":
    run(main, parse_args)
