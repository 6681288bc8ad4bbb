"""Knowledge-distillation losses (Step 4) and the training loss of every --kd mode.

    from distill import KD_MODES, KDConfig, Trainee, response_kd_loss, cosine_distance

Response-based (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network"), per pixel:
    L = alpha * H(y, softmax(z_s)) + beta * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau))
Feature-based, for each pair (student tap, teacher layer) with a trainable 1x1 conv + BN adapter:
    L = alpha * H(y, softmax(z_s)) + feat_weight * sum_pairs mean (1 - cos(adapter(f_s), f_t))
Both: the sum of the three terms. Every mean runs over the pixels whose label is not 255.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from model import STUDENT_TAPS, TEACHER_TAPS, teacher_features
from voc import IGNORE_INDEX


@dataclasses.dataclass(frozen=True)
class KDMode:
    """What a --kd mode takes from the teacher: its logits (soft targets), its features."""

    label: str
    soft: bool
    features: bool


# Keyed by voc.KD_METHODS, in its order (the modules below this one know the names only).
KD_MODES = {
    "none": KDMode("none (cross-entropy only)", soft=False, features=False),
    "response": KDMode("response-based", soft=True, features=False),
    "feature": KDMode("feature-based", soft=False, features=True),
    "both": KDMode("response + feature", soft=True, features=True),
}


@dataclasses.dataclass(frozen=True)
class KDConfig:
    """The --kd mode and the weights of the loss's terms (train.py's flags of the same names)."""

    kd: str = "none"
    alpha: float = 1.0
    beta: float = 1.0
    tau: float = 2.0
    feat_weight: float = 1.0

    @property
    def mode(self) -> KDMode:
        return KD_MODES[self.kd]


# Distilled pairs, student tap <-> teacher layer, matched by stride where they can be:
# low (16 ch, /4) <-> layer1 (256 ch, /4): edges and textures, at the same resolution;
# mid (24 ch, /8) <-> layer2 (512 ch, /8): parts, at the same resolution;
# high (96 ch, /16) <-> layer4 (2048 ch, /8): the classifier's input, the most semantic map;
# the teacher map is averaged down to /16 (bilinear by 2), as the student has no /8 detail there.
FEATURE_PAIRS = ("low", "mid", "high")


def masked_mean(per_pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of an N x H x W map over the valid pixels (0 when there are none)."""
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """H(y, softmax(z)) averaged over the pixels whose label is not 255.
    logits N x C x H x W, target N x H x W (int64)."""
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    return masked_mean(per_pixel, target != IGNORE_INDEX)


def response_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    tau: float,
) -> tuple:
    """The lab's response-based loss, with Hinton's tau^2 written out:

        L = alpha * H(y, p_s) + beta * tau^2 * KL(p_t^tau || p_s^tau)
        p_s = softmax(z_s),  p^tau = softmax(z / tau),  H(p, q) = -sum_c p_c log q_c,
        KL(p || q) = sum_c p_c (log p_c - log q_c) = H(p, q) - H(p, p)

    per pixel, each term averaged over the pixels whose label is not 255. The soft term's
    gradient with respect to z_s is (p_s^tau - p_t^tau) / tau, and for large tau the
    difference itself shrinks as 1/tau: the gradient scales as 1/tau^2. The explicit tau^2
    keeps its scale, so changing tau does not silently reweight it against the hard term
    (Hinton et al., 2015, section 2). KL and Hinton's soft cross-entropy H(p_t^tau, p_s^tau)
    differ by the teacher's entropy, a constant for the student: the gradients are the same,
    and KL is 0 exactly when the student matches the teacher, so its logged value shows how
    far the student is from the teacher (the cross-entropy never falls below that entropy).

    student_logits, teacher_logits: N x C x H x W (the teacher's are resized bilinearly to the
    student's size when they differ); target: N x H x W. Returns (L, {"ce": H(y, p_s),
    "kl": tau^2 * KL(p_t^tau || p_s^tau)}), the two terms detached for the training log.
    """
    if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
        teacher_logits = F.interpolate(
            teacher_logits.float(),
            size=student_logits.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
    ce = pixel_cross_entropy(student_logits, target)
    valid = target != IGNORE_INDEX
    with torch.no_grad():  # the teacher's side is a constant: no graph, computed once
        log_p_teacher = F.log_softmax(teacher_logits.float() / tau, dim=1)
        p_teacher = log_p_teacher.exp()
        neg_entropy = (p_teacher * log_p_teacher).sum(1)
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=1)
    kl = tau**2 * masked_mean(neg_entropy - (p_teacher * log_p_student).sum(1), valid)
    return alpha * ce + beta * kl, {"ce": ce.detach(), "kl": kl.detach()}


def cosine_distance(fs: torch.Tensor, ft: torch.Tensor, valid: torch.Tensor | None = None):
    """mean over n, h, w of 1 - <fs[n,:,h,w], ft[n,:,h,w]> / (|fs[n,:,h,w]| |ft[n,:,h,w]|),
    the cosine taken along the channels; with `valid` (N x H x W, bool), the mean runs over
    the valid positions only.

    fs, ft: N x C x H x W of the same shape -> scalar in [0, 2]: 0 for identical maps, 2 for
    negated ones, unchanged when either map is scaled by a positive number.
    """
    distance = 1 - F.cosine_similarity(fs.float(), ft.float(), dim=1, eps=1e-8)
    return distance.mean() if valid is None else masked_mean(distance, valid)


def build_adapters(pairs: tuple = FEATURE_PAIRS) -> nn.ModuleDict:
    """One 1x1 conv + BN per pair, student channels -> teacher channels. Training only: the
    deployed student neither holds nor counts them."""
    return nn.ModuleDict(
        {
            name: nn.Sequential(
                nn.Conv2d(STUDENT_TAPS[name][0], TEACHER_TAPS[name][1], 1, bias=False),
                nn.BatchNorm2d(TEACHER_TAPS[name][1]),
            )
            for name in pairs
        }
    )


def feature_kd_loss(
    student_feats: dict, teacher_feats: dict, adapters: nn.ModuleDict, target: torch.Tensor
) -> tuple:
    """sum over pairs of cosine_distance(adapter(f_s), f_t) over the positions whose label
    (target N x H x W, sampled nearest at each map's size) is not 255: the padding of small
    crops and VOC's void edges weigh nothing, as in the response term. The teacher map is
    resized (bilinear) to the student's size. Returns (sum, {pair: distance, detached})."""
    distances = {}
    for name, adapter in adapters.items():
        fs = adapter(student_feats[name])
        ft = teacher_feats[name]
        if ft.shape[-2:] != fs.shape[-2:]:
            ft = F.interpolate(ft, size=fs.shape[-2:], mode="bilinear", align_corners=False)
        labels = F.interpolate(target[:, None].float(), size=fs.shape[-2:], mode="nearest")[:, 0]
        distances[name] = cosine_distance(fs, ft, labels != IGNORE_INDEX)
    total = torch.stack(list(distances.values())).sum()
    return total, {name: d.detach() for name, d in distances.items()}


@torch.no_grad()  # not inference_mode: its tensors could not enter the loss's graph
def teacher_outputs(teacher: nn.Module | None, images: torch.Tensor) -> tuple | None:
    """(logits, features) of the frozen teacher (teacher_features), or None without one."""
    return None if teacher is None else teacher_features(teacher, images)


def training_loss(
    student: nn.Module,
    adapters: nn.ModuleDict | None,
    images: torch.Tensor,
    target: torch.Tensor,
    teacher_out: tuple | None,
    config: KDConfig,
) -> tuple:
    """Loss of one batch for config.kd, and its terms (detached) for the log:

        L = alpha * H(y, p_s)
            + beta * tau^2 * KL(p_t^tau || p_s^tau)   (response, both: response_kd_loss)
            + feat_weight * sum_pairs cosine distance  (feature, both: feature_kd_loss)

    teacher_out: teacher_outputs() of exactly this batch, None for --kd none.
    """
    mode, c = config.mode, config
    logits, student_feats = student(images, return_features=True)
    if mode.soft:
        loss, terms = response_kd_loss(logits, teacher_out[0], target, c.alpha, c.beta, c.tau)
    else:
        ce = pixel_cross_entropy(logits, target)
        loss, terms = c.alpha * ce, {"ce": ce.detach()}
    if mode.features:
        feat, pairs = feature_kd_loss(student_feats, teacher_out[1], adapters, target)
        loss = loss + c.feat_weight * feat
        terms.update(feat=feat.detach(), **{f"feat_{name}": d for name, d in pairs.items()})
    return loss, terms


class Trainee(nn.Module):
    """What trains: the student and, for feature KD, its adapters, as one module, so that
    DistributedDataParallel wraps both and averages all their gradients. The teacher stays
    outside: it is frozen and never wrapped.

    forward(images N x 3 x H x W, target N x H x W, teacher_out) -> (loss, terms).
    """

    def __init__(self, student: nn.Module, config: KDConfig):
        super().__init__()
        self.student, self.config = student, config
        self.adapters = build_adapters() if config.mode.features else None

    def forward(self, images: torch.Tensor, target: torch.Tensor, teacher_out=None) -> tuple:
        return training_loss(self.student, self.adapters, images, target, teacher_out, self.config)
