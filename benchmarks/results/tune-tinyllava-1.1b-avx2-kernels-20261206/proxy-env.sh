# AVX2 kernels on this AVX-512/AMX core: llama.cpp built with AVX/AVX2/FMA/F16C only
# (no AVX-512, no AMX), torch's ATen, oneDNN and MKL capped at AVX2. ONNX Runtime's MLAS
# has no switch: it picks its kernels from CPUID, so the vision graphs still run AVX-512.
export PYTHONPATH=/tmp/avx2/lib
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
export LLAVA_EDGE_TUNE_DIR=/tmp/avx2/tune
