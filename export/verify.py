"""``llava-edge verify``: recompute a bundle's fidelity against its PyTorch checkpoint.

End to end, through the runtime's own code path (numpy preprocessing, ONNX Runtime,
llama.cpp with injected embeddings), not the exporter's:

1. embeddings: every vision graph vs PyTorch on the parity images (LLaVA-NeXT: the
   runtime's views, graph and packing vs transformers' packed features, on images of
   several aspect ratios);
2. logits: every GGUF vs PyTorch on prompts mixing text and an injected image;
3. greedy answers: the bundle's default pair and its most exact pair vs
   ``transformers.generate`` on a few images and questions;
4. optionally eval accuracy on a LLaVA-format eval set, PyTorch vs bundle.

Each figure is reported next to the one recorded in the manifest at export, with the CPU
each was measured on: verify re-measures on the machine it runs on, which may be of
another class than the exporting one (int8 results differ between them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from llava_edge.bundle import open_bundle
from llava_edge.cpu_features import cpu_info

GREEDY_PROMPTS = ("Describe the image.", "What shape is in the image?",
                  "How many shapes are there?")


def verify_bundle(bundle_dir: str | Path, checkpoint: str | Path, data: str | Path | None = None,
                  image_folder: str | Path | None = None, limit: int | None = None,
                  n_images: int = 4, max_new_tokens: int = 16, n_threads: int | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Recompute ``bundle_dir``'s parity against ``checkpoint``; see the module docstring."""
    from llava_edge.export.open_checkpoint import load_llava
    from llava_edge.export.gguf_parity import measure_parity
    from llava_edge.export.vision_parity import synthetic_images

    say = progress or (lambda step: None)
    bundle = open_bundle(bundle_dir)
    m = bundle.manifest
    loaded = load_llava(checkpoint)
    images = [img for _, img in synthetic_images(max(n_images, 8))]

    say("vision graphs")
    figures_of = _vision_figures if m.anyres is None else _packed_figures
    vision = {v.precision: figures_of(bundle, v, loaded, images, n_threads)
              for v in m.vision}
    say("language models")
    llm = measure_parity(loaded, {e.quant: bundle.file(e.file) for e in m.llm},
                         n_threads=n_threads)
    say("greedy answers")
    pairs = _pairs(m)
    greedy = {f"{vp}+{q}": _greedy_agreement(bundle.path, vp, q, loaded, images[:n_images],
                                            max_new_tokens, n_threads)
              for vp, q in pairs}
    here = cpu_info()
    exported_on = m.parity.get("measured_on") or {}
    report = {
        "bundle": str(bundle.path), "checkpoint": str(checkpoint),
        # Where each set of figures was measured: int8 arithmetic differs by CPU class.
        "measured_on": here.to_dict(),
        "manifest_measured_on": exported_on or None,
        "same_cpu_class": exported_on.get("isa_class") == here.isa_class,
        "vision": {p: {"measured": fig, "manifest": (m.parity.get("vision") or {}).get(p)}
                   for p, fig in vision.items()},
        "llm": {"measured": llm, "manifest": m.parity.get("llm")},
        "greedy": greedy,
    }
    if data is not None:
        say("eval accuracy")
        report["eval"] = _eval(bundle.path, checkpoint, data, image_folder, limit, pairs,
                               n_threads)
    report["ok"] = _ok(report, m)
    return report


def _vision_figures(bundle, entry: dict, loaded, images, n_threads) -> dict:
    """The runtime's preprocessing + ONNX graph against PyTorch on the HF processor's pixels."""
    import torch

    from llava_edge.export.vision_parity import compare
    from llava_edge.runtimes.images import load_image
    from llava_edge.runtimes.preprocess import preprocess
    from llava_edge.runtimes.vision_onnx import OnnxVisionEncoder

    recipe = bundle.manifest.preprocess
    ours = np.stack([preprocess(load_image(img), recipe) for img in images])
    encoder = OnnxVisionEncoder(bundle.file(entry.file), n_threads=n_threads)
    got = np.concatenate([encoder.encode(ours[i:i + 1]) for i in range(len(ours))])
    hf_pixels = loaded.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        feats = loaded.model.model.get_image_features(pixel_values=hf_pixels)
    feats = getattr(feats, "pooler_output", feats)
    ref = torch.stack(list(feats)).float().numpy() if isinstance(feats, (list, tuple)) \
        else feats.float().numpy()
    figures = compare(ref.reshape(got.shape), got).to_dict()
    figures["preprocess_max_abs_err"] = float(np.abs(ours - hf_pixels.numpy()).max())
    return figures


def _packed_figures(bundle, entry, loaded, images, n_threads) -> dict:
    """LLaVA-NeXT: each image's rows as the runtime makes them (its views, the graph, its
    packing with the bundle's ``image_newline``) against transformers' packed features;
    and the runtime's views against the HF processor's."""
    from llava_edge.export.anyres_export import hf_packed_features, packed_parity
    from llava_edge.export.vision_parity import tiling_images
    from llava_edge.runtimes.image_embeds import encode_images, image_layout
    from llava_edge.runtimes.images import load_image
    from llava_edge.runtimes.vision_onnx import OnnxVisionEncoder

    m = bundle.manifest
    images = images + [image for _, image in tiling_images()]
    rgb = [load_image(image) for image in images]
    layout = image_layout(m, bundle.file(m.anyres.newline_file))
    encoder = OnnxVisionEncoder(bundle.file(entry.file), n_threads=n_threads)
    figures = packed_parity(hf_packed_features(loaded, images),
                            encode_images(layout, rgb, encoder.encode))
    # the HF processor pads every image's views to the most any image has
    hf = loaded.processor.image_processor(images=images, return_tensors="np")["pixel_values"]
    ours = [layout.views(image) for image in rgb]
    figures["preprocess_max_abs_err"] = max(float(np.abs(v - hf[i, :len(v)]).max())
                                            for i, v in enumerate(ours))
    return figures


def _pairs(m) -> list[tuple[str, str]]:
    """The bundle's most exact (vision, llm) pair and its default one."""
    default = (m.vision_entry().precision, m.llm_entry().quant)
    return list(dict.fromkeys([m.exact_pair, default]))


def _greedy_agreement(bundle_dir, vision, quant, loaded, images, max_new_tokens,
                      n_threads) -> dict:
    from llava_edge.runtimes.pipeline import LlavaEdge

    same, total, first_diff = 0, 0, []
    with LlavaEdge.load(bundle_dir, vision_precision=vision, llm_quant=quant,
                        n_threads=n_threads, verify="none") as model:
        for i, image in enumerate(images):
            prompt = GREEDY_PROMPTS[i % len(GREEDY_PROMPTS)]
            answer = model.ask(image, prompt, max_new_tokens=max_new_tokens)
            ref = loaded.generate_greedy(image, prompt, max_new_tokens)
            total += 1
            if answer.tokens == ref[: len(answer.tokens)] and len(answer.tokens) == len(ref):
                same += 1
            else:
                first_diff.append(next((k for k, (a, b) in enumerate(zip(answer.tokens, ref))
                                        if a != b), min(len(answer.tokens), len(ref))))
    return {"identical": same, "n": total, "rate": same / total,
            "first_difference_at": first_diff}


def _eval(bundle_dir, checkpoint, data, image_folder, limit, pairs, n_threads) -> dict:
    from llava_edge.data.llava_format import load_llava_json
    from llava_edge.runtimes.pipeline import LlavaEdge
    from llava_edge.trainer.evaluate import TorchAnswerer, evaluate

    samples = load_llava_json(data)[:limit]
    folder = Path(image_folder) if image_folder else Path(data).parent / "images"
    out = {"torch": evaluate(samples, TorchAnswerer(checkpoint), folder).to_dict()}
    for vision, quant in pairs:
        with LlavaEdge.load(bundle_dir, vision_precision=vision, llm_quant=quant,
                            n_threads=n_threads, verify="none") as model:
            out[f"bundle {vision}+{quant}"] = evaluate(samples, bundle_answerer(model),
                                                       folder).to_dict()
    return out


def bundle_answerer(model, max_new_tokens: int = 32):
    """An eval answerer over a loaded bundle: greedy answer text for (image, prompt)."""
    def answer(image, prompt: str) -> str:
        return model.ask(image, prompt, max_new_tokens=max_new_tokens).text
    return answer


def _ok(report: dict, m) -> bool:
    vision_ok = all(fig["measured"]["mean_cosine"] >= (m.vision_entry(p).gate or 0.0)
                    for p, fig in report["vision"].items())
    exact = report["greedy"].get(next(iter(report["greedy"])))
    return bool(vision_ok and exact and exact["rate"] == 1.0)
