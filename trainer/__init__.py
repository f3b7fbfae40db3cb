"""Training side of llava-edge: build checkpoints from presets and train them in two stages.

Installed as ``llava_edge.trainer``; needs the ``[train]`` extra (torch, transformers).
"""
