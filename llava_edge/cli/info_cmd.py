"""``llava-edge info``: what a checkpoint (or bundle) is."""

from __future__ import annotations

from pathlib import Path

import click

from llava_edge.checkpoint_info import CheckpointInfo, describe_checkpoint
from llava_edge.cli.common import emit_json, human_bytes, human_count, json_option
from llava_edge.errors import LlavaEdgeError


@click.command()
@click.argument("path", type=click.Path())
@json_option
def info(path: str, as_json: bool) -> None:
    """Describe a LLaVA checkpoint directory: architecture, sizes, tokenizer, files."""
    p = Path(path)
    if not p.exists():
        raise LlavaEdgeError(f"{path}: no such file or directory")
    if not (p / "config.json").exists():
        raise LlavaEdgeError(f"{path}: not a LLaVA checkpoint (no config.json)")
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
        ("image tokens", f"{c.image_tokens_per_image} per image (token id {c.image_token_index})"),
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
