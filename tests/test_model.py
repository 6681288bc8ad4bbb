from cli import UserError

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from checkpoints import save_file
from conftest import checkpoint_of
from model import (
    STUDENT_TAPS,
    TEACHER_RESIZE,
    TEACHER_TAPS,
    TEACHER_WEIGHTS,
    Decoder,
    build_student,
    build_teacher,
    count_params,
    describe_layers,
    load_student,
    teacher_features,
    with_decoder_bn_folded,
)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student().eval()


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher("none")


@pytest.mark.parametrize("h, w", [(64, 64), (65, 97), (33, 17), (101, 50)])
def test_student_logits_have_the_input_size_for_any_size(student, h, w):
    with torch.inference_mode():
        assert student(torch.randn(2, 3, h, w)).shape == (2, 21, h, w)


def test_student_taps_have_the_documented_channels_and_strides(student):
    with torch.inference_mode():
        _, feats = student(torch.randn(1, 3, 320, 320), return_features=True)
    assert set(feats) == set(STUDENT_TAPS)
    for name, (channels, stride) in STUDENT_TAPS.items():
        assert feats[name].shape == (1, channels, 320 // stride, 320 // stride)


def test_decoder_equals_its_docstring_formula_upsample_then_concatenate():
    torch.manual_seed(0)
    decoder = Decoder(deep=12, skip=5, cout=8).eval()
    for bn in (m for m in decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        for t in (bn.weight, bn.bias, bn.running_mean):  # not the identity of a fresh BN
            t.data.normal_()
        bn.running_var.data.uniform_(0.5, 2)
    deep, skip = torch.randn(2, 12, 9, 7), torch.randn(2, 5, 33, 26)
    fuse, block = decoder[0], decoder[1]
    up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
    with torch.inference_mode():
        want = block(fuse(torch.cat([up, skip], dim=1)))
        assert torch.allclose(decoder(deep, skip), want, atol=1e-5)


def test_folding_the_decoder_batchnorm_keeps_the_logits_and_leaves_the_student_alone():
    torch.manual_seed(0)
    student = build_student()
    for bn in (m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        for t in (bn.weight, bn.bias, bn.running_mean):  # not the identity of a fresh BN
            t.data.normal_(0, 0.3)
        bn.running_var.data.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    folded = with_decoder_bn_folded(student)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.decoder[0])
    x = torch.randn(1, 3, 97, 65)
    with torch.inference_mode():
        assert torch.allclose(folded(x), student.eval()(x), atol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_teacher_taps_have_the_documented_channels_and_strides(teacher):
    with torch.inference_mode():
        _, feats = teacher_features(teacher, torch.randn(1, 3, 64, 64))
    for name, (_, channels, stride) in TEACHER_TAPS.items():
        assert feats[name].shape == (1, channels, 64 // stride, 64 // stride)


def test_student_parameters_are_within_the_target(student):
    assert count_params(student) <= 1_200_000
    assert sum(row[3] for row in describe_layers(student, size=64)) == count_params(student)


def test_teacher_features_logits_equal_the_teacher_output(teacher):
    x = torch.randn(1, 3, 72, 88)
    with torch.inference_mode():
        logits, _ = teacher_features(teacher, x)
        assert torch.allclose(logits, teacher(x)["out"])


def test_teacher_is_frozen_and_has_no_auxiliary_head(teacher):
    assert not teacher.training and teacher.aux_classifier is None
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_resize_is_the_one_its_weights_document():
    assert TEACHER_WEIGHTS.transforms().resize_size == [TEACHER_RESIZE]


def test_random_models_touch_no_network(monkeypatch):
    """torchvision's weights call the load_state_dict_from_url that torchvision.models._api
    imported (patching torch.hub's would miss it): patched there, random models never call it,
    and the pretrained backbone does, which shows the patch is live."""
    calls = []

    def no_download(url, *args, **kwargs):
        calls.append(url)
        raise OSError("offline (test)")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    build_student(pretrained_backbone=False)
    build_teacher("none")
    assert calls == []
    with pytest.raises(UserError, match="could not download torchvision.s weights"):
        build_student(pretrained_backbone=True)
    assert len(calls) == 1 and "mobilenet_v3_small" in calls[0]


def test_the_network_guard_refuses_anything_beyond_localhost():
    import netguard

    with pytest.raises(netguard.NetworkBlocked):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1, never routed
    with pytest.raises(netguard.NetworkBlocked):
        socket.getaddrinfo("download.pytorch.org", 443)


def offline(monkeypatch):
    """A machine without network: connections fail with an OSError, as they really do."""

    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_pretrained_backbone_offline_names_the_flag_to_turn_it_off(monkeypatch):
    offline(monkeypatch)
    with pytest.raises(UserError) as e:
        build_student(pretrained_backbone=True)
    hub = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    assert f"at {hub / 'mobilenet_v3_small-047dcff4.pth'}, or" in str(e.value)
    assert "pass --no-pretrained-backbone" in str(e.value)


def test_default_teacher_offline_names_the_alternatives(monkeypatch):
    offline(monkeypatch)
    with pytest.raises(UserError) as e:
        build_teacher("default")
    assert "fcn_resnet50_coco-1167a1af.pth, or pass the path of a local state dict" in str(e.value)


def test_teacher_loads_a_local_state_dict_with_or_without_aux_head(tmp_path, teacher):
    from torchvision.models.segmentation import fcn_resnet50

    full = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(full.state_dict(), tmp_path / "fcn.pth")
    loaded = build_teacher(str(tmp_path / "fcn.pth"))
    assert torch.equal(loaded.classifier[4].weight, full.classifier[4].weight)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="as an FCN-ResNet50 state dict does not fit"):
        build_teacher(str(tmp_path / "other.pth"))


def test_checkpoints_are_written_atomically_and_load_back(tmp_path, student):
    save_file(checkpoint_of(student, seed=3), tmp_path / "s.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["s.pth"]  # no temporary file left
    loaded, ckpt = load_student(tmp_path / "s.pth")
    assert ckpt["args"] == {"kd": "none", "epochs": 2, "seed": 3}
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), student.state_dict().values())
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "corrupt or not a PyTorch file"),
        ({**checkpoint_of(build_student()), "model": {"fc.weight": torch.zeros(2)}}, "different"),
        ({"weights": 1}, "not a checkpoint of train.py"),
        ([1, 2, 3], "holds a list"),
    ],
)
def test_bad_checkpoints_give_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UserError) as e:
        load_student(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        load_student(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    "entry, value",
    [("args", ["kd"]), ("history", {"epoch": 1}), ("epoch", "2"), ("history", [1, 2])],
)
def test_a_checkpoint_entry_of_the_wrong_type_is_one_error_naming_it(tmp_path, entry, value):
    path = tmp_path / "c.pth"
    torch.save({**checkpoint_of(build_student()), entry: value}, path)
    with pytest.raises(UserError, match=f"{path} is not a checkpoint .* \\(entry '{entry}'"):
        load_student(path)


def test_the_student_has_the_documented_dilations_and_final_upsampling(student):
    """Student's docstring: the ASPP's 3x3s at rates 6, 12, 18, the decoder's 3x3 undilated,
    the logits the classifier's stride-4 map upsampled bilinearly (align_corners=False)."""
    aspp = [branch[0][0].dilation for branch in student.aspp.branches[1:]]
    assert aspp == [(6, 6), (12, 12), (18, 18)]
    assert student.decoder[1][0][0].dilation == (1, 1)
    stride4 = []
    hook = student.classifier.register_forward_hook(lambda m, i, out: stride4.append(out))
    x = torch.randn(1, 3, 70, 90)
    with torch.inference_mode():
        logits = student(x)
    hook.remove()
    up = F.interpolate(stride4[0], size=(70, 90), mode="bilinear", align_corners=False)
    assert stride4[0].shape[-2:] == (18, 23) and torch.equal(logits, up)


def test_the_pretrained_encoder_is_dilated_like_the_random_one(monkeypatch):
    """ImageNet's weights (a random MobileNetV3-Small's here, served instead of a download)
    go into the dilated encoder: the deepest tap stays at stride 16."""
    weights = torchvision.models.mobilenet_v3_small().state_dict()
    monkeypatch.setattr(
        torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: weights
    )
    student = build_student(pretrained_backbone=True).eval()
    assert torch.equal(student.low[0][0].weight, weights["features.0.0.weight"])
    with torch.inference_mode():
        _, feats = student(torch.randn(1, 3, 64, 64), return_features=True)
    assert feats["high"].shape[-2:] == (64 // STUDENT_TAPS["high"][1],) * 2


class Payload:
    """A pickle that makes a folder when it is loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "the_payload_ran"
    torch.save({"model": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="corrupt or not a PyTorch file"):
        load_student(tmp_path / "evil.pth")
    assert not marker.exists()


def test_the_layer_table_gives_each_part_its_output_as_channels_by_height_by_width(student):
    rows = {name: (kind, shape) for name, kind, shape, _ in describe_layers(student, size=64)}
    assert rows["low.0"] == ("Conv2dNormActivation", (16, 32, 32))
    assert rows["aspp"] == ("ASPP", (128, 4, 4)) and rows["classifier"][1] == (21, 16, 16)
