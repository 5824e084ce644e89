"""What TensorRT 10's ONNX parser accepts, and a checker for our exported graphs.

Sources, all onnx/onnx-tensorrt ``docs/operators.md`` (the parser's support matrix), one per release branch:

- TensorRT 8.4 (commit 009d6541): "supports operators up to Opset 13";
- TensorRT 8.5 and 8.6: "supports operators up to Opset 17";
- TensorRT 10.0: "supports operators in the inclusive range of opset 9 to opset 20";
- TensorRT 10.15: "opset 9 to opset 24", and the operator table (Supported = Y, Restrictions) that
  :data:`TRT10_OPS` and the per-operator rules below are taken from.

Our graphs are opset 18 (``torch.onnx.export(dynamo=True)``; ReduceMean/ReduceMax take ``axes`` as an
input since opset 18), so they need **TensorRT ≥ 10.0**: 8.6 stops at opset 17, and the 9.x releases were
limited-availability LLM releases (skipped here). TensorRT 11 removed the fp16/bf16 builder flags
(strong typing only), so ``build_engine`` needs TensorRT 10.x for fp16/bf16 (see tensorrt_engine.py).

Besides the operator list, :func:`unsupported_nodes` checks the restrictions of that table that can
apply to a traced CNN: inputs that must be initializers or constants (Reduce* ``axes``, Squeeze/Unsqueeze
``axes``, CumSum ``axis``, OneHot ``depth``, Dropout ``is_training``), the Resize modes, pooling rank and
dilations, and the parser's own check that a Squeeze without ``axes`` has a static input shape. It also
checks one rule of ours: inputs that set an output shape (Reshape ``shape``, Resize ``scales``/``sizes``,
Pad ``pads``, Slice, Expand, Tile, ...) must be computable from constants and input dimensions. TensorRT
accepts data-dependent shapes, but :class:`~covseg_fast.export.tensorrt_engine.TensorRTRunner` allocates
its output from ``get_tensor_shape`` before running, which needs shapes known from the input shape.
"""
from __future__ import annotations

from typing import Iterable

# Newest-first: (TensorRT release, highest ONNX opset its parser supports), from the sources above.
TENSORRT_MAX_OPSET = (("10.15", 24), ("10.0", 20), ("8.6", 17), ("8.5", 17), ("8.4", 13))
TENSORRT_MIN_OPSET = 9  # the lower end of the TensorRT 10 range
MIN_TENSORRT_VERSION = "10.0"  # oldest release we support: opset 18 and the name-based tensor API

# "Supported = Y" rows of the TensorRT 10.15 table.
TRT10_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
""".split())

# "Supported = Y" rows of the TensorRT 8.4 table (commit 009d6541).
_TRT84_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU
HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg Not Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
""".split())

# Ops in both the 8.4 and the 10.15 table, hence parsed by every 10.x release we support (10.0 .. 10.15):
# ops added during 10.x (Attention, RMSNormalization, ...) would not parse on 10.0.
TENSORRT_ONNX_OPS = _TRT84_OPS & TRT10_OPS

RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                     "align_corners"})
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})

_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")
# (op, input index) that the 10.15 table requires to be an initializer (a Constant node is imported as weights
# too) or, for "build-time constant"/"resolvable to a constant", foldable from constants.
MUST_BE_INITIALIZER = {**{(op, 1): "axes" for op in _REDUCE}, ("Dropout", 2): "is_training"}
MUST_BE_CONSTANT = {("Squeeze", 1): "axes", ("Unsqueeze", 1): "axes", ("CumSum", 1): "axis",
                    ("OneHot", 1): "depth"}
# (op, input index) that set an output shape: constants or computed from input dimensions (see the docstring).
SHAPE_INPUTS = {("Reshape", 1): "shape", ("Resize", 2): "scales", ("Resize", 3): "sizes", ("Pad", 1): "pads",
                ("Pad", 3): "axes", ("Expand", 1): "shape", ("Tile", 1): "repeats", ("ConstantOfShape", 0): "input",
                ("Slice", 1): "starts", ("Slice", 2): "ends", ("Slice", 3): "axes", ("Slice", 4): "steps",
                ("Split", 1): "split", ("Range", 0): "start", ("Range", 1): "limit", ("Range", 2): "delta",
                ("Upsample", 1): "scales", ("TopK", 1): "K"}
_RANDOM = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                     "Multinomial"})


def min_tensorrt_for_opset(opset: int) -> str:
    """The oldest TensorRT release in :data:`TENSORRT_MAX_OPSET` whose ONNX parser supports ``opset``.

    Raises:
        ValueError: no listed release supports it.
    """
    fits = [release for release, top in TENSORRT_MAX_OPSET if TENSORRT_MIN_OPSET <= opset <= top]
    if not fits:
        raise ValueError(f"no TensorRT release in our table parses ONNX opset {opset}")
    return fits[-1]


def _attrs(node) -> dict:
    import onnx

    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def tensor_kinds(nodes: Iterable, weights: set[str]) -> dict[str, str]:
    """Each tensor's kind: 'const' (folds from initializers/Constant), 'shape' (also uses Shape/Size of
    some tensor, so known once the input shape is), else 'data' (missing from the dict)."""
    kind = {name: "const" for name in weights}
    for node in nodes:  # ONNX graphs are topologically sorted
        if node.op_type in _RANDOM:
            continue
        if node.op_type == "Constant":
            k = "const"
        elif node.op_type in ("Shape", "Size"):
            k = "shape"
        else:
            inputs = [kind.get(i) for i in node.input if i]
            if not inputs or None in inputs:
                continue
            k = "shape" if "shape" in inputs else "const"
        for out in node.output:
            kind[out] = k
    return kind


def _static_shapes(model) -> dict[str, bool]:
    """Tensor name → whether ONNX shape inference finds a fully static shape."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort here; unknown counts as not static
        return {}
    static = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = v.type.tensor_type
        static[v.name] = t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim)
    return static


def _node_rules(where: str, node, kind: dict, initializers: set, static: dict) -> list[str]:
    problems = []
    op, attrs = node.op_type, _attrs(node)

    def has(i: int) -> bool:
        return len(node.input) > i and node.input[i] != ""

    for i, name in enumerate(node.input):
        if not name:
            continue
        if (op, i) in MUST_BE_INITIALIZER and name not in initializers:
            problems.append(f"{where}: {op} {node.name!r}: {MUST_BE_INITIALIZER[op, i]} must be an initializer")
        if (op, i) in MUST_BE_CONSTANT and kind.get(name) != "const":
            problems.append(f"{where}: {op} {node.name!r}: {MUST_BE_CONSTANT[op, i]} must be a build-time constant")
        if (op, i) in SHAPE_INPUTS and kind.get(name) not in ("const", "shape"):
            problems.append(f"{where}: {op} {node.name!r}: {SHAPE_INPUTS[op, i]} depends on tensor values "
                            "(data-dependent output shape)")
    if op == "Squeeze" and not has(1) and "axes" not in attrs and not static.get(node.input[0], False):
        problems.append(f"{where}: Squeeze {node.name!r} without axes on an input of non-static shape")
    elif op == "Resize":
        if attrs.get("coordinate_transformation_mode", "half_pixel") not in RESIZE_COORDINATE_MODES:
            problems.append(f"{where}: Resize with coordinate_transformation_mode="
                            f"{attrs['coordinate_transformation_mode']}")
        if attrs.get("mode", "nearest") not in RESIZE_MODES:
            problems.append(f"{where}: Resize with mode={attrs['mode']}")
        if attrs.get("nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST_MODES:
            problems.append(f"{where}: Resize with nearest_mode={attrs['nearest_mode']}")
        if attrs.get("antialias", 0):
            problems.append(f"{where}: Resize with antialias=1")
        if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            problems.append(f"{where}: Resize with keep_aspect_ratio_policy={attrs['keep_aspect_ratio_policy']}")
        axes = attrs.get("axes")
        if has(2) and axes is not None and list(axes) != list(range(len(axes))):
            problems.append(f"{where}: Resize with scales and axes={list(axes)} (must be 0..rank-1)")
    elif op in ("AveragePool", "MaxPool", "LpPool"):
        if "kernel_shape" in attrs and len(attrs["kernel_shape"]) not in (2, 3):
            problems.append(f"{where}: {op} over {len(attrs['kernel_shape'])} dims (2-D or 3-D only)")
        if any(d != 1 for d in attrs.get("dilations", [])):
            problems.append(f"{where}: {op} with dilations {attrs['dilations']}")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append(f"{where}: MaxPool with the Indices output")
    elif op == "LayerNormalization" and any(node.output[1:]):
        problems.append(f"{where}: LayerNormalization with Mean/InvStdDev outputs")
    elif op == "ScatterND" and attrs.get("reduction", "none") != "none":
        problems.append(f"{where}: ScatterND with reduction={attrs['reduction']}")
    elif op == "Constant" and any(k in attrs for k in ("sparse_value", "value_string", "value_strings")):
        problems.append(f"{where}: Constant with a sparse or string value")
    return problems


def unsupported_nodes(model) -> list[str]:
    """What TensorRT 10's ONNX parser (or our runner) would reject in an ``onnx.ModelProto``: the default-domain
    opset outside the TensorRT 10.0 range, unknown or custom-domain ops, and broken per-op rules (module
    docstring). Local functions are checked op by op; an empty list means the graph should parse."""
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    low, high = TENSORRT_MIN_OPSET, dict(TENSORRT_MAX_OPSET)[MIN_TENSORRT_VERSION]
    if opset is not None and not low <= opset <= high:
        problems.append(f"model: ONNX opset {opset} is outside TensorRT {MIN_TENSORRT_VERSION}'s range {low}..{high}")
    local_functions = {f.name for f in model.functions}
    initializers = {t.name for t in model.graph.initializer}
    static = _static_shapes(model)
    graphs = [("graph", model.graph.node, initializers, static)]
    graphs += [(f"function {f.name}", f.node, set(), {}) for f in model.functions]
    for where, nodes, weights, shapes in graphs:
        kind = tensor_kinds(nodes, weights)
        # Constant nodes are imported as weights, so they count as initializers
        constants = weights | {o for n in nodes if n.op_type == "Constant" for o in n.output}
        for node in nodes:
            if node.domain not in ("", "ai.onnx"):
                if node.op_type not in local_functions:
                    problems.append(f"{where}: {node.domain}::{node.op_type} (custom domain)")
                continue
            if node.op_type not in TENSORRT_ONNX_OPS:
                problems.append(f"{where}: {node.op_type}")
                continue
            problems += _node_rules(where, node, kind, constants, shapes)
    return problems
