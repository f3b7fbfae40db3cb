"""Tokenizers in the layouts checkpoints ship with, trained locally for the tests.

One SentencePiece BPE model (trained as :mod:`llava_edge.trainer.tokenizer_build` trains
the presets') saved the ways Llama-family checkpoints in the wild save it, and a
byte-level BPE as Qwen2 saves it, with and without a prefix space. Each builder writes a
tokenizer directory and returns it; :func:`vocab_gguf` writes the GGUF vocabulary the
exporter would (a vocabulary-only file, which llama.cpp loads with ``vocab_only``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llava_edge.presets import TokenizerSpec
from llava_edge.trainer.tokenizer_build import build_tokenizer


def _spm_base(root: Path) -> Path:
    base = root / "_spm"
    if not base.exists():
        build_tokenizer(TokenizerSpec("sentencepiece", 1000, "vicuna_v1"), base)
    return base


def _resave(root: Path, name: str, **kwargs) -> Path:
    from transformers import AutoTokenizer

    out = root / name
    AutoTokenizer.from_pretrained(_spm_base(root), **kwargs).save_pretrained(out)
    return out


def _edit_json(directory: Path, edit) -> None:
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _generic_class(directory: Path) -> None:
    """Load with transformers' generic fast tokenizer, which keeps tokenizer.json's
    pipeline as written (its LlamaTokenizer rebuilds the pipeline from its own options,
    always Metaspace "first" unless add_prefix_space=False). Many fine-tunes ship so."""
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config), encoding="utf-8")


def metaspace_first(root: Path) -> Path:
    """transformers 5's Llama tokenizer (``legacy=False``): Metaspace, prefix at the start."""
    return _resave(root, "metaspace-first")


def metaspace_always(root: Path) -> Path:
    """Metaspace ``prepend_scheme="always"`` (``legacy=True`` in transformers 4): every
    piece of text between special tokens prefixed."""
    out = _resave(root, "metaspace-always")
    _edit_json(out, lambda data: data["pre_tokenizer"].update(prepend_scheme="always"))
    _generic_class(out)
    return out


def metaspace_never(root: Path) -> Path:
    """``add_prefix_space=False``: no prefix anywhere."""
    return _resave(root, "metaspace-never", add_prefix_space=False)


def metaspace_old_format(root: Path) -> Path:
    """A Metaspace written by tokenizers < 0.14: ``add_prefix_space`` instead of
    ``prepend_scheme``."""
    out = _resave(root, "metaspace-old-format")

    def edit(data):
        node = data["pre_tokenizer"]
        node.pop("prepend_scheme", None)
        node.pop("split", None)
        node["add_prefix_space"] = True
    _edit_json(out, edit)
    _generic_class(out)
    return out


def prepend_normalizer(root: Path) -> Path:
    """transformers 4's legacy Llama tokenizer.json: a Prepend("▁") + Replace(" ", "▁")
    normalizer and no pre-tokenizer (llava-1.5-7b-hf, Vicuna and many fine-tunes)."""
    out = _resave(root, "prepend-normalizer")

    def edit(data):
        data["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        data["pre_tokenizer"] = None
        data["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    _edit_json(out, edit)
    _generic_class(out)
    return out


def bare_sentencepiece(root: Path) -> Path:
    """``tokenizer.model`` and its config only, no ``tokenizer.json`` (older checkpoints:
    transformers converts it when loading)."""
    out = root / "bare-sentencepiece"
    shutil.copytree(_spm_base(root), out, dirs_exist_ok=True)
    (out / "tokenizer.json").unlink()
    return out


def byte_level_bpe(root: Path) -> Path:
    """Qwen2's layout: byte-level BPE, its split regex, NFC, ChatML specials."""
    out = root / "byte-level-bpe"
    if not out.exists():
        build_tokenizer(TokenizerSpec("bpe", 1000, "chatml"), out)
    return out


def byte_level_bpe_prefix(root: Path) -> Path:
    """GPT-2 / RoBERTa style ``ByteLevel(add_prefix_space=True)``: a space before the
    text's first word."""
    out = root / "byte-level-bpe-prefix"
    shutil.copytree(byte_level_bpe(root), out, dirs_exist_ok=True)

    def edit(data):
        for step in data["pre_tokenizer"]["pretokenizers"]:
            if step["type"] == "ByteLevel":
                step["add_prefix_space"] = True
    _edit_json(out, edit)
    return out


LAYOUTS = {
    "metaspace-first": metaspace_first,
    "metaspace-always": metaspace_always,
    "metaspace-never": metaspace_never,
    "metaspace-old-format": metaspace_old_format,
    "prepend-normalizer": prepend_normalizer,
    "bare-sentencepiece": bare_sentencepiece,
    "byte-level-bpe": byte_level_bpe,
    "byte-level-bpe-prefix": byte_level_bpe_prefix,
}


_read_vocab_override = None  # tests swap the exporter's reader to write other metadata


def vocab_gguf(tokenizer_dir: Path, out: Path, arch: str = "llama"):
    """The GGUF vocabulary the exporter writes for ``tokenizer_dir``, in a file with
    minimal hyperparameters and no tensors; returns the :class:`GGUFVocab`."""
    from transformers import AutoTokenizer

    from llava_edge.export.gguf_vocab import add_vocab_metadata, read_vocab
    from llava_edge.export.gguf_writer import gguf_file

    n = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    vocab = (_read_vocab_override or read_vocab)(tokenizer_dir, n)
    with gguf_file(out, arch) as writer:
        for add, value in ((writer.add_context_length, 64), (writer.add_embedding_length, 8),
                           (writer.add_feed_forward_length, 8), (writer.add_block_count, 1),
                           (writer.add_head_count, 1), (writer.add_head_count_kv, 1),
                           (writer.add_layer_norm_rms_eps, 1e-5),
                           (writer.add_rope_dimension_count, 8), (writer.add_vocab_size, n)):
            add(value)
        add_vocab_metadata(writer, vocab)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
    return vocab
