"""The compact student (MobileNetV3-Small + ASPP + skip decoder), the frozen FCN-ResNet50
teacher, and their builders (from torchvision's weights, a state dict or a checkpoint).

    from model import build_student, build_teacher, teacher_features, load_student
    python model.py   # prints the student layer by layer with parameter counts

The student follows DeepLabV3+ (Chen et al., 2018) on a MobileNetV3-Small encoder (Howard et
al., 2019); its layout is in the docstring of `Student`.
"""

from cli import UserError

import copy
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small
from torchvision.models.segmentation import FCN_ResNet50_Weights, fcn_resnet50

from checkpoints import load_file, load_state, read_checkpoint
from voc import NUM_CLASSES

# name: (channels, stride) as measured on torchvision's MobileNetV3-Small with dilated=True.
STUDENT_TAPS = {"low": (16, 4), "mid": (24, 8), "high": (96, 16)}
# name: (ResNet-50 layer, channels, stride) in torchvision's FCN-ResNet50 (layers 3-4 dilated).
TEACHER_TAPS = {"low": ("layer1", 256, 4), "mid": ("layer2", 512, 8), "high": ("layer4", 2048, 8)}
TEACHER_WEIGHTS = FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
TEACHER_RESIZE = 520  # shorter side that TEACHER_WEIGHTS.transforms() resizes images to
# torchvision's MobileNetV3 sets BatchNorm momentum 0.01 (TensorFlow's 0.99 decay): its running
# statistics then trail a fresh head by hundreds of steps, and a short run evaluates (eval mode)
# with statistics of its first steps. 0.1, PyTorch's default, tracks within a few dozen steps.
BN_MOMENTUM = 0.1


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """The student's widths, written once (see Student)."""

    num_classes: int = NUM_CLASSES
    aspp_channels: int = 128  # the ASPP's output, at stride 16
    skip_channels: int = 32  # the stride-4 skip, projected from `low`'s 16 channels
    decoder_channels: int = 64  # the decoder at stride 4, where the largest maps are
    rates: tuple = (6, 12, 18)  # ASPP dilation rates (DeepLabV3, output stride 16)
    dropout: float = 0.5


def conv_bn_relu(
    cin: int, cout: int, kernel: int = 1, dilation: int = 1, groups: int = 1
) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def separable(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1: about 9x fewer weights and FLOPs than a dense 3x3,
    which is what keeps the ASPP and the decoder small next to the encoder (DeepLabV3+)."""
    return nn.Sequential(conv_bn_relu(cin, cin, 3, dilation, groups=cin), conv_bn_relu(cin, cout))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: N x cin x h x w -> N x cout x h x w."""

    def __init__(self, cin: int, cout: int, rates: tuple):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout)])
        self.branches.extend(separable(cin, cout, rate) for rate in rates)
        # No BatchNorm after global pooling: a 1 x 1 map in a batch of 1 has no statistics.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU())
        self.project = conv_bn_relu(cout * (len(rates) + 2), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class Decoder(nn.Sequential):
    """DeepLabV3+'s decoder: deep N x cd x h x w and skip N x cs x H x W -> N x cout x H x W,

        fuse(cat[up(deep), skip]),  fuse = 1x1 conv W = [W_d | W_s], BatchNorm, ReLU,

    followed by a 3x3 separable block; up is bilinear (align_corners=False) to H x W. The 1x1
    convolution mixes channels and the upsampling mixes pixels, both linearly, so they commute:
    W [up(deep); skip] = up(W_d deep) + W_s skip. Computing the right-hand side upsamples cout
    channels instead of cd, applies W_d at stride 16 instead of 4 and drops the stride-4
    concatenation, where the head's maps are largest: the same function and the same weights
    (keys as in nn.Sequential), in less time in eager PyTorch and in ONNX Runtime alike.
    """

    def __init__(self, deep: int, skip: int, cout: int):
        super().__init__(conv_bn_relu(deep + skip, cout), separable(cout, cout))

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        fuse, block = self[0], self[1]
        w_deep, w_skip = fuse[0].weight.split([deep.shape[1], skip.shape[1]], dim=1)
        y = F.interpolate(
            F.conv2d(deep, w_deep), size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        # fuse[0] has a bias only once its BatchNorm is folded (with_decoder_bn_folded)
        return block(fuse[2](fuse[1](y + F.conv2d(skip, w_skip, fuse[0].bias))))


class Student(nn.Module):
    """DeepLabV3+ (Chen et al., 2018) on MobileNetV3-Small (Howard et al., 2019), the
    encoder's last stage dilated so the deepest features stay at output stride 16:

        x: 3 x H x W
        low  = encoder[0:2]   16 ch, stride 4   \\  the taps feature distillation reads;
        mid  = encoder[2:4]   24 ch, stride 8    } encoder = torchvision's MobileNetV3-Small
        high = encoder[4:12]  96 ch, stride 16  /  features, dilated=True
        ASPP(high) (Chen et al., 2017): 1x1 | 3x3 separable at rates 6, 12, 18 | image pooling,
            concatenated, 1x1 -> 128 ch
        decoder: upsample to stride 4, concat with low projected to 32 ch, 1x1 -> 64 ch,
            3x3 separable -> 64 ch (computed in an equal, cheaper order: see Decoder)
        dropout 0.5, 1x1 classifier -> 21 ch, bilinear upsampling to H x W

    The handout's tap numbers are approximate; the ones above are read off torchvision's network
    and a test checks them with a real forward pass.
    """

    def __init__(
        self, config: StudentConfig = StudentConfig(), encoder: nn.Sequential | None = None
    ):
        super().__init__()
        encoder = encoder if encoder is not None else mobilenet_v3_small(dilated=True).features
        self.low, self.mid = encoder[0:2], encoder[2:4]
        # encoder[12], the 96 -> 576 expansion, exists for ImageNet's classifier; the ASPP's own
        # 1x1 convolutions do that job here, for 56 k fewer parameters.
        self.high = encoder[4:12]
        c = config
        self.aspp = ASPP(STUDENT_TAPS["high"][0], c.aspp_channels, c.rates)
        self.skip = conv_bn_relu(STUDENT_TAPS["low"][0], c.skip_channels)
        # Stride 4 holds the largest maps of the head: reducing 160 -> 64 channels with a 1x1
        # before the only 3x3 keeps the work at that resolution small.
        self.decoder = Decoder(c.aspp_channels, c.skip_channels, c.decoder_channels)
        self.classifier = nn.Sequential(
            nn.Dropout(c.dropout), nn.Conv2d(c.decoder_channels, c.num_classes, 1)
        )
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = BN_MOMENTUM

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x: N x 3 x H x W (any H, W) -> logits N x num_classes x H x W, and with
        return_features also {"low", "mid", "high"} encoder maps (see STUDENT_TAPS)."""
        low = self.low(x)
        mid = self.mid(low)
        high = self.high(mid)
        y = self.classifier(self.decoder(self.aspp(high), self.skip(low)))
        logits = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (logits, {"low": low, "mid": mid, "high": high}) if return_features else logits


def with_decoder_bn_folded(student: Student) -> Student:
    """A copy of `student` in eval mode with the decoder's BatchNorm folded into its 1x1
    convolution, for deployment: BN(z) = s z + t, s = gamma / sqrt(var + eps),
    t = beta - s mean, and z = up(W_d deep) + W_s skip, so BN(z) = up(s W_d deep) +
    (s W_s skip + t) (bilinear upsampling keeps constants). ONNX Runtime folds a BatchNorm
    into the convolution before it, but this one follows the decoder's sum; the same logits
    then cost one stride-4 operation fewer, and in int8 two conversions fewer."""
    folded = copy.deepcopy(student).eval()
    fuse = folded.decoder[0]
    fuse[0], fuse[1] = fuse_conv_bn_eval(fuse[0], fuse[1]), nn.Identity()
    return folded


def torchvision_download(builder, weights, way_out: str, **kwargs) -> nn.Module:
    """builder(weights=weights), with a UserError saying, when offline, where a file downloaded
    by hand goes (torchvision looks there first) and `way_out`."""
    try:
        return builder(weights=weights, **kwargs)
    except OSError as e:  # urllib's URLError, refused connections and timeouts are OSErrors
        place = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise UserError(
            f"could not download torchvision's weights {weights} ({e}); put {weights.url}, "
            f"downloaded elsewhere, at {place}, or {way_out}"
        ) from None


def build_student(
    config: StudentConfig = StudentConfig(), pretrained_backbone: bool = False
) -> Student:
    """The student; pretrained_backbone loads torchvision's ImageNet MobileNetV3-Small weights
    (downloaded to the torch hub cache on first use)."""
    encoder = None
    if pretrained_backbone:
        encoder = torchvision_download(
            mobilenet_v3_small,
            MobileNet_V3_Small_Weights.IMAGENET1K_V1,
            "pass --no-pretrained-backbone (the encoder then starts from random weights)",
            dilated=True,
        ).features
    return Student(config, encoder)


def build_teacher(weights: str = "default") -> nn.Module:
    """torchvision's FCN-ResNet50, frozen: eval mode, no gradients, no auxiliary head.

    weights: "default" (COCO_WITH_VOC_LABELS_V1, downloaded to the torch hub cache), a path to
    a state dict, or "none" (random, for offline smoke tests; downloads nothing at all).
    The auxiliary FCN head on layer3 only serves training, so it is dropped: it would cost
    time at inference and its 2.4 M parameters would inflate the count.
    """
    if weights == "default":
        model = torchvision_download(
            fcn_resnet50, TEACHER_WEIGHTS, "pass the path of a local state dict as the weights"
        )
        model.aux_classifier = None
    else:
        model = fcn_resnet50(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False
        )
        if weights != "none":
            state = load_file(weights, "teacher weights")
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
            load_state(model, state, f"{weights} as an FCN-ResNet50 state dict")
    return model.eval().requires_grad_(False)


def teacher_features(teacher: nn.Module, x: torch.Tensor) -> tuple:
    """The teacher's forward pass written out, so its intermediate maps come out with it.

    x: N x 3 x H x W -> (logits N x 21 x H x W, {"low", "mid", "high"} per TEACHER_TAPS);
    the logits equal teacher(x)["out"], which a test checks.
    """
    b = teacher.backbone
    low = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
    mid = b.layer2(low)
    high = b.layer4(b.layer3(mid))
    logits = F.interpolate(
        teacher.classifier(high), size=x.shape[-2:], mode="bilinear", align_corners=False
    )
    return logits, {"low": low, "mid": mid, "high": high}


def load_student(path: str | Path) -> tuple:
    """(student in eval mode, checkpoint dict) from a checkpoint written by train.py."""
    ckpt = read_checkpoint(path)
    student = build_student()
    load_state(student, ckpt["model"], f"checkpoint {path}")
    return student.eval(), ckpt


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_layers(model: Student, size: int = TEACHER_RESIZE) -> list:
    """[(name, module type, output shape C x H x W, parameters)] for each part of the student,
    each MobileNetV3 block of the encoder on its own row, measured on a 1 x 3 x size x size
    input."""
    parts = []
    for name, child in model.named_children():
        if name in STUDENT_TAPS:  # an encoder stage: one row per block
            parts += [(f"{name}.{i}", block) for i, block in child.named_children()]
        else:
            parts.append((name, child))
    rows = []

    def record(name: str):
        return lambda m, _, out: rows.append(
            (name, type(m).__name__, tuple(out.shape[1:]), count_params(m))
        )

    hooks = [module.register_forward_hook(record(name)) for name, module in parts]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return rows


if __name__ == "__main__":  # no flags, no errors to print: a plain script
    student = build_student()
    for name, kind, shape, params in describe_layers(student):
        print(f"{name:14s} {kind:22s} {str(shape):18s} {params:>9,d}")
    print(f"total parameters: {count_params(student):,d}")
