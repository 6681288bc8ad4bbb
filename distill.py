"""Knowledge-distillation losses (Step 4) and the training loss of every --kd mode.

    from distill import response_kd_loss, cosine_distance, feature_kd_loss, training_loss

Response-based (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network"), per pixel:
    L = alpha * H(y, softmax(z_s)) + beta * tau^2 * H(softmax(z_t / tau), softmax(z_s / tau))
Feature-based, for each pair (student tap, teacher layer) with a trainable 1x1 conv + BN adapter:
    L = H(y, softmax(z_s)) + feat_weight * sum_pairs mean_pixels (1 - cos(adapter(f_s), f_t))
"""

import torch
import torch.nn.functional as F
from torch import nn

from metrics import IGNORE_INDEX
from model import STUDENT_TAPS, TEACHER_TAPS, teacher_features

KD_LABELS = {
    "none": "none (cross-entropy only)",
    "response": "response-based",
    "feature": "feature-based",
    "both": "response + feature",
}
KD_MODES = tuple(KD_LABELS)
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

        L = alpha * H(y, p_s) + beta * tau^2 * H(p_t^tau, p_s^tau)
        p_s = softmax(z_s),  p^tau = softmax(z / tau),  H(p, q) = -sum_c p_c log q_c

    per pixel, each term averaged over the pixels whose label is not 255. The soft term's
    gradient with respect to z_s is (p_s^tau - p_t^tau) / tau, and for large tau the
    difference itself shrinks as 1/tau: the gradient scales as 1/tau^2. The explicit tau^2
    keeps its scale, so changing tau does not silently reweight it against the hard term
    (Hinton et al., 2015, section 2).
    H(p_t, p_s) differs from KL(p_t || p_s) only by the teacher's entropy, a constant for the
    student, so the two give the same gradients.

    student_logits, teacher_logits: N x C x H x W (the teacher's are resized bilinearly to the
    student's size when they differ); target: N x H x W. Returns (L, {"ce": H(y, p_s),
    "soft": tau^2 * H(p_t^tau, p_s^tau)}), the two terms detached for the training log.
    """
    if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
        teacher_logits = F.interpolate(
            teacher_logits, size=student_logits.shape[-2:], mode="bilinear", align_corners=False
        )
    ce = pixel_cross_entropy(student_logits, target)
    p_teacher = F.softmax(teacher_logits.float() / tau, dim=1)
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=1)
    soft = tau**2 * masked_mean(-(p_teacher * log_p_student).sum(1), target != IGNORE_INDEX)
    return alpha * ce + beta * soft, {"ce": ce.detach(), "soft": soft.detach()}


def cosine_distance(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """mean over n, h, w of 1 - <fs[n,:,h,w], ft[n,:,h,w]> / (|fs[n,:,h,w]| |ft[n,:,h,w]|).

    fs, ft: N x C x H x W of the same shape -> scalar in [0, 2]: 0 for identical maps, 2 for
    negated ones, unchanged when either map is scaled by a positive number.
    """
    return (1 - F.cosine_similarity(fs.float(), ft.float(), dim=1, eps=1e-8)).mean()


def build_adapters(pairs: tuple = FEATURE_PAIRS) -> nn.ModuleDict:
    """One 1x1 conv + BN per pair, student channels -> teacher channels. Training only: the
    deployed student neither holds nor counts them."""
    return nn.ModuleDict({
        name: nn.Sequential(
            nn.Conv2d(STUDENT_TAPS[name][0], TEACHER_TAPS[name][1], 1, bias=False),
            nn.BatchNorm2d(TEACHER_TAPS[name][1]),
        )
        for name in pairs
    })  # fmt: skip


def feature_kd_loss(student_feats: dict, teacher_feats: dict, adapters: nn.ModuleDict) -> tuple:
    """sum over pairs of cosine_distance(adapter(f_s), f_t), the teacher map resized
    (bilinear) to the student's size. Returns (sum, {pair: distance, detached})."""
    distances = {}
    for name, adapter in adapters.items():
        fs = adapter(student_feats[name])
        ft = teacher_feats[name]
        if ft.shape[-2:] != fs.shape[-2:]:
            ft = F.interpolate(ft, size=fs.shape[-2:], mode="bilinear", align_corners=False)
        distances[name] = cosine_distance(fs, ft)
    total = torch.stack(list(distances.values())).sum()
    return total, {name: d.detach() for name, d in distances.items()}


def training_loss(
    student: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    kd: str = "none",
    teacher: nn.Module | None = None,
    adapters: nn.ModuleDict | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    tau: float = 2.0,
    feat_weight: float = 1.0,
) -> tuple:
    """Loss of one batch for a --kd mode, and its terms for the log.

    none:     H(y, p_s)
    response: response_kd_loss (alpha, beta, tau)
    feature:  H(y, p_s) + feat_weight * feature_kd_loss
    both:     response_kd_loss + feat_weight * feature_kd_loss
    The teacher runs without gradients on exactly the batch the student sees.
    """
    if kd == "none":
        ce = pixel_cross_entropy(student(images), target)
        return ce, {"ce": ce.detach()}
    with torch.no_grad():  # not inference_mode: its tensors could not enter the loss's graph
        teacher_logits, teacher_feats = teacher_features(teacher, images)
    logits, student_feats = student(images, return_features=True)
    if kd in ("response", "both"):
        loss, terms = response_kd_loss(logits, teacher_logits, target, alpha, beta, tau)
    else:
        loss = pixel_cross_entropy(logits, target)
        terms = {"ce": loss.detach()}
    if kd in ("feature", "both"):
        feat, pairs = feature_kd_loss(student_feats, teacher_feats, adapters)
        loss = loss + feat_weight * feat
        terms.update(feat=feat.detach(), **{f"feat_{name}": d for name, d in pairs.items()})
    return loss, terms
