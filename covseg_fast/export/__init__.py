"""Export for low-latency inference: ONNX (standard ops only) and TensorRT engines."""
from .onnx_export import OnnxExportReport, export_onnx, verify_onnx
from .reference_mode import reference_modules
from .runners import OnnxRuntimeRunner
from .trt_supported_ops import TENSORRT_ONNX_OPS, unsupported_nodes

__all__ = ["OnnxExportReport", "OnnxRuntimeRunner", "TENSORRT_ONNX_OPS", "export_onnx", "reference_modules",
           "unsupported_nodes", "verify_onnx"]
