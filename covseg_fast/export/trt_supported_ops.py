"""ONNX operators that TensorRT's ONNX parser supports.

Source: onnx/onnx-tensorrt, docs/operators.md at commit 009d6541 (the TensorRT 8.4 support
matrix, "Supported = Y" rows). Later TensorRT releases (10.x, opset 9–20) support a superset,
so a graph that uses only these operators parses on any TensorRT ≥ 8.4. Per-operator
restrictions that matter here: Conv/ConvTranspose weights must be initializers (true for an
exported eval model), Resize supports the `align_corners`, `half_pixel`, `pytorch_half_pixel`
and `asymmetric` coordinate modes with `nearest`/`linear`.
"""

TENSORRT_ONNX_OPS = frozenset("""
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

RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                     "align_corners"})


def unsupported_nodes(model) -> list[str]:
    """Descriptions of the nodes of an ``onnx.ModelProto`` (incl. local functions) TensorRT cannot parse."""
    problems = []
    graphs = [("graph", model.graph.node)] + [(f"function {f.name}", f.node) for f in model.functions]
    local_functions = {f.name for f in model.functions}
    for where, nodes in graphs:
        for node in nodes:
            if node.domain not in ("", "ai.onnx"):
                if node.op_type in local_functions:
                    continue
                problems.append(f"{where}: {node.domain}::{node.op_type} (custom domain)")
            elif node.op_type not in TENSORRT_ONNX_OPS:
                problems.append(f"{where}: {node.op_type}")
            elif node.op_type == "Resize":
                mode = next((a.s.decode() for a in node.attribute if a.name == "coordinate_transformation_mode"),
                            "half_pixel")
                if mode not in RESIZE_COORDINATE_MODES:
                    problems.append(f"{where}: Resize with coordinate_transformation_mode={mode}")
    return problems
