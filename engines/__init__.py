"""TensorRT engines built from the exported ONNX graphs (the TensorRT builder is a later issue; ONNX
export and the engine cache live in ``dynamicid_rt.export``)."""
