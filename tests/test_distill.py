import copy

import numpy as np
import pytest
import torch

from dataset import train_transforms, voc_dataset
from distill import (
    KDConfig,
    Trainee,
    build_adapters,
    cosine_distance,
    feature_kd_loss,
    masked_mean,
    response_kd_loss,
    teacher_outputs,
    training_loss,
)
from model import build_student, build_teacher, teacher_features


def hand_response_loss(zs, zt, y, alpha, beta, tau):
    """The lab's formula, one pixel at a time, in float64 numpy."""
    zs, zt, y = zs.double().numpy(), zt.double().numpy(), y.numpy()
    ce, soft, count = 0.0, 0.0, 0
    n, c, h, w = zs.shape
    for i in range(n):
        for r in range(h):
            for k in range(w):
                if y[i, r, k] == 255:
                    continue
                s, t = zs[i, :, r, k], zt[i, :, r, k]
                log_p = s - np.log(np.exp(s).sum())
                log_p_tau = s / tau - np.log(np.exp(s / tau).sum())
                log_p_t_tau = t / tau - np.log(np.exp(t / tau).sum())
                ce += -log_p[y[i, r, k]]
                soft += (np.exp(log_p_t_tau) * (log_p_t_tau - log_p_tau)).sum()  # KL(p_t || p_s)
                count += 1
    ce, soft = ce / count, tau**2 * soft / count
    return alpha * ce + beta * soft, ce, soft


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 5, 3, 4, generator=g) * 3, torch.randn(2, 5, 3, 4, generator=g) * 3
    y = torch.randint(0, 5, (2, 3, 4), generator=g)
    y[0, 0, :] = 255
    y[1, 2, 1] = 255
    return zs, zt, y


@pytest.mark.parametrize("alpha, beta, tau", [(1.0, 1.0, 1.0), (0.3, 0.7, 4.0), (0.5, 2.0, 2.5)])
def test_response_loss_equals_the_hand_computation(logits, alpha, beta, tau):
    loss, terms = response_kd_loss(*logits, alpha=alpha, beta=beta, tau=tau)
    total, ce, soft = hand_response_loss(*logits, alpha, beta, tau)
    assert loss.item() == pytest.approx(total, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["kl"].item() == pytest.approx(soft, rel=1e-5)


def test_soft_term_carries_the_tau_squared_factor(logits):
    zs, zt, y = logits
    for tau in (1.0, 3.0):
        _, terms = response_kd_loss(zs, zt, y, alpha=0.0, beta=1.0, tau=tau)
        p_t = torch.softmax(zt / tau, 1)
        kl = (p_t * (p_t.log() - torch.log_softmax(zs / tau, 1))).sum(1)[y != 255].mean()
        assert terms["kl"].item() == pytest.approx(tau**2 * kl.item(), rel=1e-5)


def test_the_logged_soft_term_is_zero_when_the_student_matches_the_teacher(logits):
    """KL, not the soft cross-entropy, whose floor is the teacher's entropy (> 0 here)."""
    _, zt, y = logits
    _, terms = response_kd_loss(zt.clone(), zt, y, alpha=1.0, beta=1.0, tau=2.0)
    assert terms["kl"].item() == pytest.approx(0.0, abs=1e-6)


def test_soft_gradient_vanishes_when_student_equals_teacher(logits):
    _, zt, y = logits
    zs = zt.clone().requires_grad_(True)
    loss, _ = response_kd_loss(zs, zt, y, alpha=0.0, beta=1.0, tau=4.0)
    loss.backward()
    assert zs.grad.abs().max() < 1e-6
    zs_other = (zt + torch.randn_like(zt)).requires_grad_(True)
    response_kd_loss(zs_other, zt, y, alpha=0.0, beta=1.0, tau=4.0)[0].backward()
    assert zs_other.grad.abs().max() > 1e-3  # and it does not vanish otherwise


def test_ignored_pixels_do_not_move_the_loss(logits):
    zs, zt, y = logits
    before = response_kd_loss(zs, zt, y, 1.0, 1.0, 2.0)[0]
    zs2, zt2 = zs.clone(), zt.clone()
    zs2[0, :, 0, :] += 100  # row 0 of image 0 is all 255
    zt2[0, :, 0, :] -= 100
    assert response_kd_loss(zs2, zt2, y, 1.0, 1.0, 2.0)[0].item() == pytest.approx(before.item())


def test_teacher_logits_are_resized_bilinearly_to_the_student_size(logits):
    zs, zt, y = logits
    small_teacher = zt[:, :, ::3, ::2]
    loss, _ = response_kd_loss(zs, small_teacher, y, 1.0, 1.0, 2.0)
    resized = torch.nn.functional.interpolate(
        small_teacher, size=zs.shape[-2:], mode="bilinear", align_corners=False
    )
    assert loss.item() == pytest.approx(response_kd_loss(zs, resized, y, 1.0, 1.0, 2.0)[0].item())
    assert loss.item() != pytest.approx(response_kd_loss(zs, zt, y, 1.0, 1.0, 2.0)[0].item())


def test_cosine_distance_properties():
    g = torch.Generator().manual_seed(0)
    f, other = torch.randn(2, 8, 5, 6, generator=g), torch.randn(2, 8, 5, 6, generator=g)
    assert cosine_distance(f, f).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_distance(f, -f).item() == pytest.approx(2.0, abs=1e-6)
    d = cosine_distance(f, other).item()
    assert cosine_distance(3.5 * f, other).item() == pytest.approx(d, rel=1e-5)
    assert cosine_distance(f, 0.01 * other).item() == pytest.approx(d, rel=1e-5)
    assert 0.5 < d < 1.5  # unrelated random maps sit near 1


def test_cosine_distance_is_taken_along_the_channels_at_each_position():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 8, 5, 6, generator=g)
    flipped = f.clone()
    flipped[1, :, 2, 3] *= -1  # one position of 2 x 5 x 6 points the other way
    assert cosine_distance(f, flipped).item() == pytest.approx(2 / 60, abs=1e-6)
    valid = torch.ones(2, 5, 6, dtype=torch.bool)
    valid[1, 2, 3] = False  # masked out, that position no longer counts
    assert cosine_distance(f, flipped, valid).item() == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def batch(fake_voc):
    torch.manual_seed(0)
    data = voc_dataset(fake_voc, "train", train_transforms(64))
    images, masks = zip(*(data[i] for i in range(4)))
    return torch.stack(images), torch.stack(masks).long()


@pytest.mark.parametrize("kd", ["response", "feature", "both"])
def test_a_kd_step_trains_student_and_adapters_and_leaves_the_teacher_bit_identical(batch, kd):
    torch.manual_seed(0)
    trainee, teacher = Trainee(build_student(), KDConfig(kd)).train(), build_teacher("none")
    student, adapters = trainee.student, trainee.adapters or build_adapters()
    teacher_before = copy.deepcopy(teacher.state_dict())  # parameters and BatchNorm buffers
    student_before = copy.deepcopy(student.state_dict())
    adapters_before = copy.deepcopy(adapters.state_dict())
    optimizer = torch.optim.SGD(trainee.parameters(), lr=0.1)
    images, masks = batch
    loss, terms = trainee(images, masks, teacher_outputs(teacher, images))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())
    if kd != "response":
        assert {"ce", "feat", "feat_low", "feat_mid", "feat_high"} <= set(terms)
        assert all(
            not torch.equal(v, adapters.state_dict()[k])
            for k, v in adapters_before.items()
            if k.endswith("weight")
        )
    if kd != "feature":
        assert {"ce", "kl"} <= set(terms)


def agreement(student, teacher, images) -> float:
    """Pixels where the student's and the teacher's argmax agree. The student stays in train
    mode (its BatchNorm running statistics lag behind 40 steps) with a fixed dropout draw."""
    torch.manual_seed(123)
    with torch.no_grad():
        same = student(images).argmax(1) == teacher_features(teacher, images)[0].argmax(1)
    return same.float().mean().item()


@pytest.mark.slow
def test_the_soft_term_alone_teaches_the_teachers_answers(batch):
    """Against a fixed random teacher on SYNTHETIC images: says nothing about VOC."""
    torch.manual_seed(1)
    images, masks = batch
    student, teacher = build_student().train(), build_teacher("none")
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    start = agreement(student, teacher, images)
    config = KDConfig("response", alpha=0.0, beta=1.0, tau=1.0)
    answers = teacher_outputs(teacher, images)  # frozen, in eval mode: the same at every step
    for _ in range(40):
        loss, _ = training_loss(student, None, images, masks, answers, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert agreement(student, teacher, images) > start + 0.2


@pytest.mark.slow  # 30 optimizer steps of the student and the adapters
def test_the_feature_term_alone_lowers_the_cosine_distance(batch):
    torch.manual_seed(2)
    images, masks = batch
    student, teacher, adapters = build_student().train(), build_teacher("none"), build_adapters()
    optimizer = torch.optim.Adam([*student.parameters(), *adapters.parameters()], lr=1e-3)
    with torch.no_grad():
        _, teacher_feats = teacher_features(teacher, images)

    def distance():
        feats = student(images, return_features=True)[1]
        return feature_kd_loss(feats, teacher_feats, adapters, masks)[0]

    start = distance().item()
    for _ in range(30):
        loss = distance()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert distance().item() < 0.7 * start


def test_feature_distances_ignore_positions_labelled_void(batch):
    """Padding and void edges (255) weigh nothing: changing the teacher's maps there changes
    nothing, changing them elsewhere does."""
    images, masks = batch
    masks = masks.clone()
    masks[:, :, : masks.shape[-1] // 2] = 255  # the left half is void
    torch.manual_seed(0)
    student, adapters = build_student().eval(), build_adapters().eval()
    with torch.no_grad():
        feats = student(images, return_features=True)[1]
        teacher = {
            name: torch.randn(f.shape[0], adapters[name][0].out_channels, *f.shape[-2:])
            for name, f in feats.items()
        }
        base = feature_kd_loss(feats, teacher, adapters, masks)[0]
        for side, changes in ((slice(0, 2), False), (slice(-2, None), True)):
            moved = {name: t.clone() for name, t in teacher.items()}
            for t in moved.values():
                t[..., side] = -t[..., side]  # the leftmost or rightmost two columns
            loss = feature_kd_loss(feats, moved, adapters, masks)[0]
            assert (loss.item() != pytest.approx(base.item(), abs=1e-6)) == changes


def test_a_mean_over_one_valid_pixel_is_that_pixel():
    values = torch.tensor([[[3.0, 7.0], [5.0, 9.0]]])
    valid = torch.tensor([[[False, True], [False, False]]])
    assert masked_mean(values, valid).item() == 7.0
    assert masked_mean(values, torch.zeros_like(valid)).item() == 0.0  # none valid: 0


@pytest.mark.parametrize("kd", ["none", "response", "feature", "both"])
def test_the_training_loss_is_the_weighted_sum_of_its_terms(batch, kd):
    """L = alpha CE + beta tau^2 KL + feat_weight sum of distances, with weights other than 1
    so that a product turned into a quotient, or a sum into a difference, shows."""
    torch.manual_seed(0)
    images, masks = batch[0][:2], batch[1][:2]
    config = KDConfig(kd, alpha=0.7, beta=1.9, tau=3.0, feat_weight=2.3)
    trainee = Trainee(build_student(), config).eval()
    teacher_out = teacher_outputs(build_teacher("none"), images)
    loss, terms = trainee(images, masks, teacher_out)
    expected = 0.7 * terms["ce"]
    if kd in ("response", "both"):
        expected = expected + 1.9 * terms["kl"]
    if kd in ("feature", "both"):
        expected = expected + 2.3 * terms["feat"]
        parts = sum(terms[f"feat_{name}"] for name in ("low", "mid", "high"))
        assert terms["feat"].item() == pytest.approx(parts.item(), rel=1e-6)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_teacher_map_of_another_size_is_resized_bilinearly_without_aligned_corners():
    """The high pair: the teacher's stride-8 map is resized to the student's stride 16."""
    g = torch.Generator().manual_seed(0)
    adapters = build_adapters(("high",))
    fs = torch.randn(1, 96, 4, 5, generator=g)
    ft = torch.randn(1, 2048, 8, 10, generator=g)
    target = torch.zeros(1, 4, 5, dtype=torch.long)
    total, _ = feature_kd_loss({"high": fs}, {"high": ft}, adapters, target)
    resized = torch.nn.functional.interpolate(ft, size=(4, 5), mode="bilinear", align_corners=False)
    assert total.item() == pytest.approx(cosine_distance(adapters["high"](fs), resized).item())
