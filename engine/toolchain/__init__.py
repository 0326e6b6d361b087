"""The offline toolchain: ONNX export and loading, TensorRT engine build and cache, ONNX Runtime custom op."""
