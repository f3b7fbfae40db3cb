"""How far stock llama.cpp's LLaVA-1.6 path is from transformers: reproduces
benchmarks/results/next-llama-cpp-divergence-20261203/figures.json: tiny-next (random weights, and trained 60 steps on the parity
prompts so its predictions are peaked) exported to F16 GGUF + NeXT mmproj, then
llava_edge.export.gguf_parity.mmproj_parity (NeXT branch). Usage:
    python -m llava_edge.benchmarks.next_divergence OUT_DIR
"""
import json
import sys
import time
from pathlib import Path

import torch

from llava_edge.export.gguf import export_gguf
from llava_edge.export.gguf_parity import mmproj_parity, parity_image, parity_prompts
from llava_edge.export.open_checkpoint import load_llava
from llava_edge.presets import get_preset
from llava_edge.trainer.init_checkpoint import build_checkpoint

ANSWERS = (  # as tests/test_export_gguf_parity.py's trained_checkpoint
    "There are two shapes in the picture: a large red circle on the left side and a small "
    "blue square in the bottom right corner, both on a white background.",
    "I can count exactly three shapes here, one yellow triangle at the top, one green star "
    "in the middle and one purple circle near the right edge of the image.",
    "The circle is red and it sits in the top left corner, next to a small orange square "
    "and a large blue triangle that fills the center of the picture.",
)


def train(ckpt: Path, out: Path) -> Path:
    torch.manual_seed(0)
    loaded = load_llava(ckpt)
    model, processor = loaded.model, loaded.processor
    image = parity_image(loaded.config)
    eos = processor.tokenizer.eos_token
    texts = [f"{p} {a}{eos}" for p, a in zip(parity_prompts(processor), ANSWERS)]
    batch = processor(text=texts, images=[image] * len(texts), return_tensors="pt",
                      padding=True)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[labels == model.config.image_token_id] = -100
    model.model.vision_tower.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    torch.set_num_threads(1)
    for _ in range(60):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print("training loss", loss.item())
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(root: Path) -> None:
    ckpt = build_checkpoint(get_preset("tiny-next"), root / "tiny-next").path
    trained = train(ckpt, root / "tiny-next-trained")
    figures = {}
    for name, path in [("tiny-next (random weights)", ckpt),
                       ("tiny-next trained 60 steps", trained)]:
        result = export_gguf(path, root / f"gguf-{path.name}", quants=("F16",), mmproj=True,
                             parity=False, overwrite=True)
        start = time.time()
        figures[name] = mmproj_parity(load_llava(path), result.mmproj_file,
                                      result.llm_file("F16"), n_threads=1)
        figures[name]["seconds"] = round(time.time() - start, 1)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
