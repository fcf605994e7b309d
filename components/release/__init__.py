"""Release: ONNX export and int8 parity, the bundle runtime, the gate."""
