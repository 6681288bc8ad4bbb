"""An exported student (export.py's .onnx or .ort file) as ONNX Runtime runs it, checked as
it loads: its input and output names, types and axes, its logits' size, and the run's metadata.

    from onnx_model import OnnxModel, student_metadata
    model = OnnxModel("weights/student_response.onnx")   # model(images) -> logits, as PyTorch

What the file format holds is written here once: the input and output names, and the metadata
entry export.py writes the run's record into.
"""

from cli import UserError

import importlib
import json
from pathlib import Path

import torch

from distill import KD_MODES
from files import check_input

INPUT, OUTPUT = "image", "logits"
METADATA_KEY = "student"  # metadata_props entry holding export_onnx's metadata as JSON
UNKNOWN_KD = "?"  # the kd of a checkpoint that does not record its training flags


def require(name: str):
    """Import an optional deployment package, or a UserError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(
            f"the deployment path needs the package {name}: pip install -r requirements.txt"
        ) from None


class OnnxModel:
    """An .onnx segmentation model run by ONNX Runtime behind the interface evaluate() uses:
    model(images N x 3 x H x W tensor) -> logits tensor on images' device; eval() and to()
    do nothing, so the evaluation code path is the same as for PyTorch."""

    def __init__(self, path: str | Path, cuda: bool = False):
        check_input(path, "model")
        ort = require("onnxruntime")
        providers = ["CUDAExecutionProvider"] if cuda else []
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the CPU share PyTorch takes
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers + ["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            raise UserError(
                f"cannot load {path} as an ONNX model: {str(e).splitlines()[0][:300]}"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT] or OUTPUT not in [o.name for o in outputs]:
            raise UserError(
                f"{path} is not a segmentation model of export.py (its input is not "
                f"{INPUT!r} or it has no {OUTPUT!r} output)"
            )
        image = inputs[0]
        if image.type != "tensor(float)":
            raise UserError(f"{path}: its {INPUT!r} input is a {image.type}, not float32")
        c, h, w = image.shape[1:] if len(image.shape) == 4 else (0, 0, 0)
        if isinstance(c, int) and c != 3 or isinstance(h, int) or isinstance(w, int):
            raise UserError(
                f"{path}: its {INPUT!r} input is {image.shape}, not N x 3 x H x W with H and W "
                "free (export.py's dynamic axes): it cannot take images of every size"
            )
        shape = next(o.shape for o in outputs if o.name == OUTPUT)  # [] when the file is silent
        if shape and len(shape) != 4:
            raise UserError(f"{path}: its {OUTPUT!r} output has {len(shape)} dimensions, not 4")
        # N x C x H x W with C fixed when the file says it; None when it does not
        self.classes = shape[1] if shape and isinstance(shape[1], int) else None
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.metadata = json.loads(props.get(METADATA_KEY, "{}"))
        except ValueError:
            raise UserError(f"{path}: its {METADATA_KEY!r} metadata is not JSON") from None
        if not isinstance(self.metadata, dict):
            raise UserError(f"{path}: its {METADATA_KEY!r} metadata is not a JSON object")
        self.path = Path(path)
        # Where ONNX Runtime really runs it: PyPI's onnxruntime has no CUDA provider
        cuda = "CUDAExecutionProvider" in self.session.get_providers()
        self.device = torch.device("cuda" if cuda else "cpu")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W -> N x C x H x W logits; a UserError for logits of another size."""
        try:
            logits = self.session.run([OUTPUT], {INPUT: images.float().cpu().numpy()})[0]
        except Exception as e:  # ORT raises its own InvalidArgument/Fail/... types
            raise UserError(f"{self.path} fails: {str(e).splitlines()[0][:300]}") from None
        n_hw = (len(images), *images.shape[2:])  # what the logits' N, H, W must be
        if logits.ndim != 4 or (logits.shape[0], *logits.shape[2:]) != n_hw:
            raise UserError(
                f"{self.path}: for a {tuple(images.shape)} input its logits are "
                f"{logits.shape}, not N x C x H x W at the input's size"
            )
        return torch.from_numpy(logits).to(images.device)

    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self


def student_metadata(model: OnnxModel) -> dict:
    """The metadata export_onnx wrote into the file (kd one of KD_MODES or UNKNOWN_KD, params
    a count, synthetic a bool when present), or a UserError: a foreign file's claims are never
    reported as a student's."""
    info, path = model.metadata, model.path
    params = info.get("params")
    if not isinstance(params, int) or isinstance(params, bool) or params < 0:
        raise UserError(f"{path}: no student metadata (kd, params): not written by export.py")
    if info.get("kd") not in (*KD_MODES, UNKNOWN_KD):
        raise UserError(f"{path}: its metadata names --kd {info.get('kd')!r}, not one of the lab's")
    if not isinstance(info.get("synthetic", False), bool):
        raise UserError(f"{path}: its metadata's 'synthetic' is not true or false")
    return info
