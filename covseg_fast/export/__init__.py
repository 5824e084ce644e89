"""Export for low-latency inference: ONNX (standard ops only) and TensorRT engines."""
from .onnx_export import OnnxExportReport, export_onnx, verify_onnx, verify_real_input
from .reference_mode import reference_modules
from .runners import OnnxRuntimeRunner
from .trt_supported_ops import MIN_TENSORRT_VERSION, TENSORRT_ONNX_OPS, min_tensorrt_for_opset, unsupported_nodes

__all__ = ["MIN_TENSORRT_VERSION", "OnnxExportReport", "OnnxRuntimeRunner", "TENSORRT_ONNX_OPS", "export_onnx",
           "min_tensorrt_for_opset", "reference_modules", "unsupported_nodes", "verify_onnx", "verify_real_input"]
