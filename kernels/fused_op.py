"""The identity of the fused pixel-shuffle + PReLU node, owned here beside its kernel.

One ONNX node `srtrt::PixelShufflePReLU` (export.py writes it, ort_custom_op.py runs it in
onnxruntime, trt_build.py and trt_plugin.py hand it to TensorRT's plugin registry): its op
type is also the TensorRT plugin's name, its domain the plugin's namespace. Pure constants:
importing this module needs neither torch nor triton nor TensorRT.
"""

NAME = "PixelShufflePReLU"          # ONNX op_type and TensorRT plugin name
NAMESPACE = "srtrt"                 # ONNX domain and TensorRT plugin namespace
PLUGIN_ID = f"{NAMESPACE}::{NAME}"  # tensorrt.plugin's "namespace::name"
PLUGIN_VERSION = "1"                # the node's plugin_version; Python (QDP) plugins are always "1"
DOMAIN_VERSION = 1                  # the opset version of the srtrt ONNX domain

# Attributes every fused node carries: the upscale factor, the plugin's namespace and version,
# and `aot` (1: TensorRT's ahead-of-time implementation, 0: the Python JIT one).
ATTRIBUTES = ("upscale", "plugin_namespace", "plugin_version", "aot")
