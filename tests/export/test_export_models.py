"""ONNX export of the real registered models (MSA-UNet, U-Net, Ref-Net) and of the shipped demo checkpoint.

Each model is exported once (dynamic batch and H/W, opset 18) at a small size so the file runs on 2 CPU
cores; the graph must pass ``onnx.checker``, hold only ops TensorRT's ONNX parser supports, and reproduce
PyTorch (reference path, fp32) through onnxruntime to max |Δ probability| ≤ 1e-4 on random inputs and on
real COVID-SemiSeg slices (prepared exactly as for inference: grey in [0, 1] → prepare_input).
"""
import dataclasses
import os
import re

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from covseg_fast.cli.main import main as cli_main
from covseg_fast.data.slices import natural_key, read_grey
from covseg_fast.export import (OnnxRuntimeRunner, export_onnx, min_tensorrt_for_opset, reference_modules,
                                unsupported_nodes, verify_onnx)
from covseg_fast.export.trt_supported_ops import MUST_BE_CONSTANT, MUST_BE_INITIALIZER, SHAPE_INPUTS, tensor_kinds
from covseg_fast.models import get_model, get_spec, load_model, prepare_input

PROBABILITY_TOLERANCE = 1e-4
SIZE = 64  # export / check size (H = W); a multiple of every model's size_multiple (16, 32)
DEMO_CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "..", "covseg_fast", "assets", "demo_checkpoint.pt")

# (registry name, config): the real models at small widths; Ref-Net with its default Res2Net-50 backbone.
MODELS = {
    "msa_unet": ("msa_unet", {"base": 8}),
    "unet": ("unet", {"base": 8}),
    # Res2Net-50 export + onnxruntime checks take ~30 s on 2 cores.
    "refnet": pytest.param(("refnet", {}), marks=pytest.mark.slow, id="refnet"),
}


def real_slices(shared_data: str, model_name: str, size: int, count: int = 3) -> torch.Tensor:
    """``count`` COVID-SemiSeg training slices as the model's input (count, C, size, size)."""
    folder = os.path.join(shared_data, "covid-semiseg", "train", "Imgs")
    if not os.path.isdir(folder):
        pytest.skip(f"COVID-SemiSeg training images not found at {folder} "
                    "(set COVSEG_SHARED_DATA or put ../shared beside the checkout)")
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".png"))),
                   key=lambda n: natural_key(os.path.splitext(n)[0]))[:count]
    grey = []
    for name in names:
        image = Image.fromarray(read_grey(os.path.join(folder, name))).resize((size, size), Image.BILINEAR)
        grey.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
    return prepare_input(torch.stack(grey)[:, None], get_spec(model_name))


@pytest.fixture(scope="module", params=list(MODELS.values()), ids=list(MODELS))
def exported(request, tmp_path_factory):
    name, config = request.param
    torch.manual_seed(0)
    model = get_model(name, **config).eval()
    path = str(tmp_path_factory.mktemp("onnx") / f"{name}.onnx")
    return model, export_onnx(model, path, size=(SIZE, SIZE))


def test_export_passes_checker_and_tensorrt_op_list(exported):
    model, report = exported
    proto = onnx.load(report.path)
    onnx.checker.check_model(proto, full_check=True)
    assert report.tensorrt_unsupported == [], report.tensorrt_unsupported
    assert unsupported_nodes(proto) == []
    assert not any(n.domain.startswith("covseg") for n in proto.graph.node)
    assert "Conv" in report.op_types
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["covseg_model"] == model.covseg_name


# Ops in each graph that the TensorRT rules of trt_supported_ops.py constrain (so the check below is not vacuous).
RULED_OPS = {"msa_unet": {"ReduceMean", "ReduceMax", "Unsqueeze"}, "unet": {"MaxPool"},
             "refnet": {"Resize", "Reshape", "Squeeze", "MaxPool", "AveragePool"}}


def test_graph_is_opset_18_and_meets_the_tensorrt_10_rules(exported):
    model, report = exported
    proto = onnx.load(report.path)
    opsets = {o.domain: o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
    assert list(opsets.values()) == [18] == [report.opset]
    assert min_tensorrt_for_opset(18) == "10.0"  # TensorRT 8.6 parses up to opset 17 only
    ops = {n.op_type for n in proto.graph.node}
    assert RULED_OPS[model.covseg_name] <= ops
    assert unsupported_nodes(proto) == []
    initializers = {t.name for t in proto.graph.initializer}
    kinds = tensor_kinds(proto.graph.node, initializers)
    checked = 0
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if (node.op_type, i) in MUST_BE_INITIALIZER or (node.op_type, i) in MUST_BE_CONSTANT:
                assert kinds.get(name) == "const", (node.name, name)
                checked += 1
            if name and (node.op_type, i) in SHAPE_INPUTS:
                assert kinds.get(name) in ("const", "shape"), (node.name, name)
                checked += 1
    if model.covseg_name != "unet":
        assert checked > 0
    if model.covseg_name == "refnet":
        # with dynamic H/W the Resize sizes are computed from the input's shape, not constants
        sizes = [n.input[3] for n in proto.graph.node if n.op_type == "Resize" and len(n.input) > 3]
        assert sizes and {kinds[s] for s in sizes} == {"shape"}


def test_onnxruntime_matches_pytorch_on_random_inputs(exported):
    _, report = exported
    assert report.max_abs_error_probability is not None
    assert report.max_abs_error_probability <= PROBABILITY_TOLERANCE, report.summary()
    # traced batch, another batch and another spatial size were all compared
    assert {s[0] for s in report.checked_shapes} >= {1, 2, 3}
    assert len({s[2] for s in report.checked_shapes}) == 2


@pytest.mark.data
def test_onnxruntime_matches_pytorch_on_real_slices(exported, shared_data):
    model, report = exported
    x = real_slices(shared_data, model.covseg_name, SIZE)
    check = dataclasses.replace(report, checked_shapes=[], max_abs_error_probability=None,
                                max_abs_error_logits=None)
    verify_onnx(model, check, extra_inputs=[x])
    assert tuple(x.shape) in check.checked_shapes
    assert check.max_abs_error_probability <= PROBABILITY_TOLERANCE, check.summary()
    # and the real batch alone, elementwise
    with reference_modules(model), torch.no_grad():
        expected = torch.sigmoid(model(x))
    got = torch.sigmoid(OnnxRuntimeRunner(report.path)(x))
    torch.testing.assert_close(got, expected, atol=PROBABILITY_TOLERANCE, rtol=0)


def test_demo_checkpoint_exports_through_the_cli(tmp_path, capsys):
    out = str(tmp_path / "demo.onnx")
    assert cli_main(["export", "--checkpoint", DEMO_CHECKPOINT, "--model", "msa_unet", "--size", "128", "128",
                     "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "max |Δ probability|" in printed and "all ops supported" in printed
    assert "opset 18: TensorRT ≥ 10.0" in printed
    # parity on real input: slices of the packaged demo CT, prepared as `covseg screen` does
    real = re.search(r"on 8 slices of demo_ct\.nii\.gz \(8, 3, 128, 128\): max \|Δ probability\| = (\S+), "
                     r"max \|Δ logit\| = (\S+)", printed)
    assert real, printed
    assert float(real.group(1)) <= PROBABILITY_TOLERANCE
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert unsupported_nodes(proto) == []
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["covseg_model"] == "msa_unet" and '"base": 16' in meta["covseg_config"]
    # the trained weights give the same probabilities through onnxruntime (random inputs at 128 and 64)
    model = load_model(DEMO_CHECKPOINT).eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    runner = OnnxRuntimeRunner(out)
    with reference_modules(model), torch.no_grad():
        for inp in (x, x[:1, :, :64, :64]):
            torch.testing.assert_close(torch.sigmoid(runner(inp)), torch.sigmoid(model(inp)),
                                       atol=PROBABILITY_TOLERANCE, rtol=0)


@pytest.mark.data
def test_demo_checkpoint_onnx_matches_on_real_slices(tmp_path, shared_data):
    model = load_model(DEMO_CHECKPOINT, expect="msa_unet").eval()
    x = real_slices(shared_data, "msa_unet", 128, count=4)
    report = export_onnx(model, str(tmp_path / "demo.onnx"), size=(128, 128), extra_inputs=[x])
    assert report.tensorrt_unsupported == []
    assert tuple(x.shape) in report.checked_shapes
    assert report.max_abs_error_probability <= PROBABILITY_TOLERANCE, report.summary()
