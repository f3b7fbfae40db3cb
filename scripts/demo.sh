#!/usr/bin/env bash
# The main job on a CPU: tiny model -> synthetic data -> train -> export -> run -> bench.
# Stages whose issues have not landed yet say "not yet".
set -euo pipefail
out="${1:-demo_out}"
mkdir -p "$out"
step() { printf '\n== %s\n' "$*"; }

step "1. tiny LLaVA checkpoint (random init) -> $out/tiny-init"
llava-edge init --preset tiny "$out/tiny-init" --force
llava-edge info "$out/tiny-init"

step "2. synthetic shapes data -> $out/shapes"
llava-edge data shapes "$out/shapes" --n-train 2000 --n-eval 200 --force
llava-edge data check "$out/shapes/stage2_instruct.json" --image-folder "$out/shapes/images"

step "3. train (stage 1: projector; stage 2: projector + LLM) -> $out/stage1, $out/stage2"
# The tiny model is random, so the tiny-demo recipe (llava-edge train --list-recipes) also
# trains the LLM in stage 1 and adds multiple-choice questions about the train images.
python -m llava_edge.trainer.shapes_mc "$out/shapes"
TIMEFORMAT="training (both stages): %R s wall, %U s user + %S s sys CPU"
time {
  llava-edge train --stage 1 --recipe tiny-demo --model "$out/tiny-init" \
    --data "$out/shapes/stage1_captions.json" --image-folder "$out/shapes/images" \
    --output-dir "$out/stage1" --force
  llava-edge train --stage 2 --recipe tiny-demo --model "$out/stage1" \
    --data "$out/shapes/stage2_instruct.json" --data "$out/shapes/stage2_mc.json" \
    --image-folder "$out/shapes/images" --output-dir "$out/stage2" --force
}
llava-edge eval "$out/stage2" --data "$out/shapes/eval_mc.json" \
  --image-folder "$out/shapes/images"

step "4. export (ONNX vision graph + GGUF LLM -> bundle) -> $out/bundle"
# --int4 is the default pair (int4 vision, Q4_K_M LLM); fp32 + F16 are kept beside it as
# the exact reference pair.
llava-edge export "$out/stage2" -o "$out/bundle" --int4 --vision-precision fp32 \
  --llm-quant F16 --force
llava-edge info "$out/bundle"

step "5. run: the bundle answers about an image (no torch on this path)"
image="$out/shapes/images/eval/000000.png"
question="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["conversations"][0]["value"])' "$out/shapes/eval_mc.json")"
echo "question: $question"
llava-edge run "$out/bundle" --image "$image" --prompt "$question" --threads 1
for pair in "int4 Q4_K_M" "fp32 F16"; do
  set -- $pair
  echo "eval of the bundle, vision $1 + LLM $2:"
  llava-edge eval "$out/bundle" --data "$out/shapes/eval_mc.json" \
    --image-folder "$out/shapes/images" --vision-precision "$1" --llm-quant "$2" --threads 1
done

step "6. latency (bundle pairs on this CPU; the full suite is issue 8's llava-edge bench)"
python benchmarks/quick_latency.py "$out/bundle" "$image" --threads 1 --repeats 5
