"""``llava-edge info``: what a checkpoint (or bundle) is."""

from __future__ import annotations

from pathlib import Path

import click

from llava_edge.bundle import MANIFEST_NAME, open_bundle
from llava_edge.checkpoint_info import CheckpointInfo, describe_checkpoint
from llava_edge.cli.common import emit_json, human_bytes, human_count, json_option
from llava_edge.errors import LlavaEdgeError
from llava_edge.manifest import Manifest


@click.command()
@click.argument("path", type=click.Path())
@json_option
def info(path: str, as_json: bool) -> None:
    """Describe a LLaVA checkpoint directory (architecture, sizes, tokenizer, files) or a
    bundle (its parts, precisions, parity figures), checking the bundle's files."""
    p = Path(path)
    if not p.exists():
        raise LlavaEdgeError(f"{path}: no such file or directory")
    if (p / MANIFEST_NAME).exists():
        bundle = open_bundle(p, verify="size")
        if as_json:
            emit_json(bundle.manifest.to_dict())
        else:
            _print_bundle(bundle.manifest, p)
        return
    if not (p / "config.json").exists():
        raise LlavaEdgeError(f"{path}: neither a LLaVA checkpoint (no config.json) nor a "
                             f"bundle (no {MANIFEST_NAME})")
    described = describe_checkpoint(p)
    if as_json:
        emit_json(described.to_dict())
    else:
        _print_checkpoint(described)


def _print_checkpoint(c: CheckpointInfo) -> None:
    v, t, pr = c.vision, c.text, c.projector
    rows = [
        ("path", c.path),
        ("kind", f"Hugging Face checkpoint ({c.architecture})"),
        ("weights", "RANDOM (untrained, random init)" if c.random_init else "trained / imported"),
        ("preset", c.preset or "-"),
        ("vision", f"{v['type']} {v['image_size']}px/patch {v['patch_size']}, "
                   f"{v['num_hidden_layers']} layers x {v['hidden_size']}"),
        ("projector", f"{pr['type']}, feature layer {pr['vision_feature_layer']}, "
                      f"select '{pr['vision_feature_select_strategy']}'"),
        ("language model", f"{t['type']}, {t['num_hidden_layers']} layers x {t['hidden_size']}, "
                           f"{t['num_attention_heads']} heads ({t['num_key_value_heads']} kv), "
                           f"vocab {t['vocab_size']}, context {t['max_position_embeddings']}"),
        ("image tokens", f"{c.image_tokens_per_image} per image (token id {c.image_token_index})"
         if c.anyres is None else
         f"{c.image_tokens_per_image} per view, LLaVA-NeXT tiles: up to {c.anyres['max_views']} "
         f"views, {c.anyres['max_positions']} positions per image (token id "
         f"{c.image_token_index}; grids {c.anyres['image_grid_pinpoints']})"),
        ("parameters", f"{human_count(c.n_params)} (vision {human_count(c.params_by_part['vision_tower'])}, "
                       f"projector {human_count(c.params_by_part['projector'])}, "
                       f"LLM {human_count(c.params_by_part['language_model'])}), "
                       f"{'/'.join(c.weight_dtypes)}"),
        ("tokenizer", f"{c.tokenizer.get('kind')}, {c.tokenizer.get('n_tokens', '?')} tokens"),
        ("files", ", ".join(f"{n} ({human_bytes(s)})" for n, s in c.files.items())),
    ]
    width = max(len(k) for k, _ in rows)
    for k, val in rows:
        click.echo(f"{k:>{width}}  {val}")


def _print_bundle(m: Manifest, path: Path) -> None:
    src, img, pre = m.source, m.image, m.preprocess
    size = (f"shortest edge {pre.resize_shortest_edge}, crop {pre.crop_height}"
            if pre.resize_shortest_edge else f"{pre.resize_height}x{pre.resize_width}")
    rows = [
        ("path", str(path)),
        ("kind", f"llava-edge bundle (schema {m.schema_version}, created {m.created})"),
        ("weights", "RANDOM (untrained, random init)" if src.random_init
         else "trained / imported"),
        ("source", f"{src.checkpoint} (preset {src.preset or '-'}; "
                   f"{src.vision} + {src.text})"),
        ("image", f"{img.n_tokens} tokens x {img.n_embd} per image, {size}"
                  + (", pad to square" if pre.pad_to_square else "")
         if m.anyres is None else
         f"{img.n_tokens} tokens x {img.n_embd} per view, {size}; LLaVA-NeXT tiles "
         f"{m.anyres.tile_size} px, grids {[list(p) for p in m.anyres.pinpoints]}"),
        ("prompt", f"{m.prompt.template}, n_ctx {m.prompt.n_ctx}"),
    ]
    for v in m.vision:
        rows.append((f"vision {v.precision}",
                     f"{v.file} ({human_bytes(m.files[v.file].size)}), mean cosine "
                     f"{v.parity.get('mean_cosine', float('nan')):.6f} (gate {v.gate})"
                     + (f", instead of {v.fallback}" if v.fallback else "")))
    measured_on = m.parity.get("measured_on") or {}
    rows.append(("parity on", measured_on.get("isa_class", "an unrecorded CPU")
                 + (f" ({measured_on['model']})" if measured_on.get("model") else "")))
    for e in m.llm:
        fig = m.llm_parity(e.quant)
        rows.append((f"llm {e.quant}",
                     f"{e.file} ({human_bytes(m.files[e.file].size)})"
                     + (f", top-1 {fig['top1_agreement']:.1%} vs PyTorch" if fig else "")))
    tok = (m.parity.get("llm") or {}).get("tokenization") or {}
    if "runtime_mismatches" in tok:
        rows.append(("tokenizer", f"{tok['n_strings']} test strings: llava-edge differs on "
                     f"{tok['runtime_mismatches']}, stock llama.cpp on "
                     f"{tok['stock_llama_cpp_mismatches']} "
                     f"({tok['stock_llama_cpp_word_start_mismatches']} starting with a word)"))
    if m.mmproj:
        rows.append(("mmproj", m.mmproj.file))
    rows.append(("defaults", f"vision {m.vision_entry().precision}, "
                             f"llm {m.llm_entry().quant}"))
    width = max(len(k) for k, _ in rows)
    for k, val in rows:
        click.echo(f"{k:>{width}}  {val}")
