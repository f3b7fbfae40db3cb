"""llava-edge: train LLaVA, split it into an ONNX vision graph and a GGUF LLM, run it fast.

The core package (this one) never imports torch or transformers: it is what an edge
device installs. Training and export live in ``llava_edge.trainer`` and
``llava_edge.export`` and need the ``[train]`` / ``[export]`` extras.
"""

__version__ = "0.1.0"
