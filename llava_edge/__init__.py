"""llava-edge: train LLaVA, split it into an ONNX vision graph and a GGUF LLM, run it fast.

The core package (this one) never imports torch or transformers: it is what an edge
device installs. Training and export live in ``llava_edge.trainer`` and
``llava_edge.export`` and need the ``[train]`` / ``[export]`` extras.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so `import llava_edge` (and the CLI) stay light.
    if name == "LlavaEdge":
        from llava_edge.runtimes.pipeline import LlavaEdge

        return LlavaEdge
    raise AttributeError(f"module 'llava_edge' has no attribute {name!r}")
