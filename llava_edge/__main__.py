"""``python -m llava_edge`` is the ``llava-edge`` command."""

from llava_edge.cli import main

main()
