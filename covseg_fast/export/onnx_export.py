"""Export an eval model to ONNX with standard ops only, and check it.

The graph is traced with ``torch.onnx.export(..., dynamo=True)`` while every module runs its
pure-PyTorch reference path, so it holds standard ONNX ops (Conv, MatMul, Softmax, ...) that
any runtime and TensorRT can optimise. The file is checked with ``onnx.checker`` and its
outputs compared with PyTorch through onnxruntime.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from typing import Optional, Sequence

import torch
from torch import nn

from .. import __version__
from ..atomic import umask_mode
from .reference_mode import reference_modules
from .trt_supported_ops import min_tensorrt_for_opset, unsupported_nodes

log = logging.getLogger(__name__)
DEFAULT_OPSET = 18


@dataclasses.dataclass
class OnnxExportReport:
    """What an export produced and how closely onnxruntime reproduces PyTorch."""

    path: str
    model: str
    opset: int
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    dynamic_spatial: bool
    seconds: float
    max_abs_error_probability: Optional[float] = None
    max_abs_error_logits: Optional[float] = None
    checked_shapes: list = dataclasses.field(default_factory=list)
    tensorrt_unsupported: list = dataclasses.field(default_factory=list)
    op_types: list = dataclasses.field(default_factory=list)
    real_input: Optional[str] = None  # what the real-input check ran on (see verify_real_input)
    real_shape: Optional[tuple] = None
    real_max_abs_error_probability: Optional[float] = None
    real_max_abs_error_logits: Optional[float] = None

    def summary(self) -> str:
        lines = [f"ONNX model written to {self.path} (opset {self.opset}, {self.seconds:.1f} s)",
                 f"  input 'image' {self.input_shape} (dynamic batch: {self.dynamic_batch}, "
                 f"dynamic H/W: {self.dynamic_spatial})"]
        if self.max_abs_error_probability is not None:
            lines.append(f"  onnxruntime vs PyTorch (fp32) on {self.checked_shapes}: max |Δ probability| = "
                         f"{self.max_abs_error_probability:.2e}, max |Δ logit| = {self.max_abs_error_logits:.2e}")
        if self.real_max_abs_error_probability is not None:
            lines.append(f"  onnxruntime vs PyTorch (fp32) on {self.real_input} {self.real_shape}: max |Δ probability| = "
                         f"{self.real_max_abs_error_probability:.2e}, max |Δ logit| = "
                         f"{self.real_max_abs_error_logits:.2e}")
        try:
            needs = f"TensorRT ≥ {min_tensorrt_for_opset(self.opset)}"
        except ValueError:
            needs = "no TensorRT release we know of"
        lines.append(f"  TensorRT ONNX parser (opset {self.opset}: {needs}): "
                     + ("all ops supported" if not self.tensorrt_unsupported
                        else f"unsupported: {self.tensorrt_unsupported}"))
        return "\n".join(lines)


def model_input_shape(model: nn.Module, batch: int = 1, size: Optional[Sequence[int]] = None) -> tuple[int, ...]:
    """(B, C, H, W) the model expects, from its registry spec (or ``size``)."""
    from ..models.registry import get_spec

    name = getattr(model, "covseg_name", None)
    if name is None:
        raise ValueError("export: the model was not built with covseg_fast.models.get_model; pass it through "
                         "load_model(checkpoint) or get_model(name)")
    spec = get_spec(name)
    h, w = size if size is not None else spec.input_size
    return (batch, spec.in_channels, int(h), int(w))


def _dynamic_shapes(model: nn.Module, dynamic_batch: bool, dynamic_spatial: bool):
    from ..models.registry import get_spec

    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=4096)
    if dynamic_spatial:
        multiple = get_spec(model.covseg_name).size_multiple
        dims[2] = multiple * torch.export.Dim("h_blocks", min=1, max=4096 // multiple)
        dims[3] = multiple * torch.export.Dim("w_blocks", min=1, max=4096 // multiple)
    return (dims,)


def export_onnx(model: nn.Module, out_path: str, *, size: Optional[Sequence[int]] = None, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, dynamic_spatial: bool = True, verify: bool = True,
                extra_inputs: Sequence[torch.Tensor] = (), metadata: Optional[dict[str, str]] = None) -> OnnxExportReport:
    """Export ``model`` (built by get_model/load_model) to ``out_path`` and verify it.

    Args:
        size: (H, W) of the example input (default: the model's input size).
        opset: ONNX opset (≥ 18).
        dynamic_batch / dynamic_spatial: make batch and H, W (multiples of the model's size multiple) dynamic.
        verify: run onnxruntime on random inputs (and ``extra_inputs``, e.g. real slices) and compare.
        metadata: more ONNX metadata entries (e.g. the input size and HU window the model is fed).
    Raises:
        ValueError: opset < 18 or a model without registry name.
        RuntimeError: the exported file fails ``onnx.checker``.
    """
    import onnx

    if opset < 18:
        raise ValueError(f"export: opset must be ≥ 18, got {opset}")
    shape = model_input_shape(model, batch=2, size=size)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(_device_of(model))
    model = model.eval()
    start = time.perf_counter()
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out_path) + ".", suffix=".onnx", dir=directory)
    os.close(fd)
    side_data = tmp + ".data"   # torch.onnx writes the weights beside the graph; they are inlined below
    # the exporter's optimiser passes log every merged initializer and removed node at INFO
    quiet = {logging.getLogger(name): logging.getLogger(name).level for name in ("onnxscript", "onnx_ir")}
    try:
        for logger, level in quiet.items():
            logger.setLevel(max(level, logging.WARNING))
        with reference_modules(model), torch.no_grad():
            torch.onnx.export(model, (example,), tmp, dynamo=True, opset_version=opset, input_names=["image"],
                              output_names=["logits"],
                              dynamic_shapes=_dynamic_shapes(model, dynamic_batch, dynamic_spatial),
                              verbose=False)
        proto = onnx.load(tmp)   # loads the external weights too
        meta = {"covseg_model": model.covseg_name, "covseg_config": json.dumps(model.covseg_config),
                "covseg_version": __version__, **(metadata or {})}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)
        try:
            onnx.checker.check_model(tmp, full_check=True)
        except Exception as exc:
            raise RuntimeError(f"export: {out_path} fails onnx.checker: {exc}") from exc
        os.chmod(tmp, umask_mode())   # mkstemp made it 0600; give it an ordinary file's mode
        os.replace(tmp, out_path)
    finally:
        for logger, level in quiet.items():
            logger.setLevel(level)
        for leftover in (tmp, side_data):
            if os.path.exists(leftover):
                os.unlink(leftover)
    report = OnnxExportReport(path=out_path, model=model.covseg_name, opset=opset, input_shape=shape,
                              dynamic_batch=dynamic_batch, dynamic_spatial=dynamic_spatial,
                              seconds=time.perf_counter() - start,
                              tensorrt_unsupported=unsupported_nodes(proto),
                              op_types=sorted({n.op_type for n in proto.graph.node}))
    if verify:
        verify_onnx(model, report, extra_inputs)
    return report


def verify_onnx(model: nn.Module, report: OnnxExportReport, extra_inputs: Sequence[torch.Tensor] = ()) -> None:
    """Compare onnxruntime (CPU) with PyTorch (reference path, fp32) and store the max errors in ``report``."""
    from ..models.registry import get_spec
    from .runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(report.path, device="cpu")
    b, c, h, w = report.input_shape
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn((b, c, h, w), generator=gen)]
    if report.dynamic_batch:
        inputs.append(torch.randn((b + 1, c, h, w), generator=gen))
    if report.dynamic_spatial:  # one more block of rows than the traced example
        inputs.append(torch.randn((1, c, h + get_spec(report.model).size_multiple, w), generator=gen))
    inputs += list(extra_inputs)
    err_p = err_z = 0.0
    for x in inputs:
        p, z = _max_errors(model, runner, x)
        err_p, err_z = max(err_p, p), max(err_z, z)
        report.checked_shapes.append(tuple(x.shape))
    report.max_abs_error_logits, report.max_abs_error_probability = err_z, err_p


def verify_real_input(model: nn.Module, report: OnnxExportReport, x: torch.Tensor, description: str) -> None:
    """Compare onnxruntime (CPU) with PyTorch (reference path, fp32) on one real batch ``x`` (prepared for the
    model) and store its max errors in ``report.real_*`` (the random-input figures are left as they are)."""
    from .runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(report.path, device="cpu")
    batch = report.input_shape[0]
    # a graph with a fixed batch takes the slices in batches of that size
    parts = [x] if report.dynamic_batch else [part for part in x.split(batch) if part.shape[0] == batch]
    if not parts:
        raise ValueError(f"verify_real_input: {x.shape[0]} slices, fewer than the graph's fixed batch {batch}")
    errors = [_max_errors(model, runner, part) for part in parts]
    p, z = max(e[0] for e in errors), max(e[1] for e in errors)
    report.real_input, report.real_shape = description, (sum(part.shape[0] for part in parts), *x.shape[1:])
    report.real_max_abs_error_probability, report.real_max_abs_error_logits = p, z


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _max_errors(model: nn.Module, runner, x: torch.Tensor) -> tuple[float, float]:
    """(max |Δ probability|, max |Δ logit|) between ``runner`` and the model's reference path on ``x``."""
    x = x.float().cpu()
    with reference_modules(model), torch.no_grad():
        expected = model(x.to(_device_of(model))).float().cpu()
    got = runner(x).float().cpu()
    return ((torch.sigmoid(got) - torch.sigmoid(expected)).abs().max().item(),
            (got - expected).abs().max().item())
