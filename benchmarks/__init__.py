"""llava-edge benchmarks, installed as ``llava_edge.benchmarks``.

``llava-edge bench`` (:mod:`llava_edge.cli.bench_cmd`) drives the modules here:
:mod:`.configs` (the matrix), :mod:`.measure` (one configuration in a fresh process),
:mod:`.peers` (transformers and stock llama.cpp), :mod:`.machine` (machine info and the
bandwidth / GEMM probes) and :mod:`.report` (JSON, markdown, PNG). ``vision_bench.py`` and
``quick_latency.py`` also run as plain scripts.
"""
