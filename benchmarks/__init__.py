"""llava-edge benchmarks, installed as ``llava_edge.benchmarks``.

``llava-edge bench`` (:mod:`llava_edge.cli.bench_cmd`) drives the modules here:
:mod:`.configs` (the matrix), :mod:`.measure` (one configuration in a fresh process),
:mod:`.peers` (transformers and stock llama.cpp), :mod:`.machine` (machine info and the
bandwidth / GEMM probes) and :mod:`.report` (JSON, markdown, PNG), with :mod:`.run` (the
run itself) and :mod:`.build` (a preset's checkpoint and bundle, built once). The other
benchmarks are commands too: ``llava-edge bench-vision`` (:mod:`.vision_bench`),
``bench-reuse`` (:mod:`.reuse_bench`), ``bench-serve-load`` (:mod:`.serve_load`),
``bench-quick`` (:mod:`.quick_latency`) and ``bench-int8-schemes`` (:mod:`.int8_schemes`).
"""
