"""Export side of llava-edge: split a LLaVA checkpoint into an ONNX/TensorRT vision graph
and a GGUF language model, verify both against PyTorch, and write a bundle.

Installed as ``llava_edge.export``; needs the ``[export]`` extra (torch, transformers,
onnx, gguf).
"""
