"""A checkpoint's tokenizer as GGUF metadata, for llama.cpp to tokenize like Hugging Face.

Two tokenizer families:

* SentencePiece (Llama, Vicuna, Mistral): GGUF model ``llama``, the pieces of
  ``tokenizer.model`` with their scores and types (byte pieces ``<0x..>`` included, which
  llama.cpp needs for byte fallback).
* byte-level BPE (Qwen2): GGUF model ``gpt2`` with the merges and the name of the
  pre-tokenizer whose split regex llama.cpp has built in (``qwen2`` for Qwen2's).

Tokens the Hugging Face tokenizer adds on top (``<image>``, ``<pad>``, ChatML markers)
follow, as CONTROL when special, USER_DEFINED otherwise. The embedding matrix is often
larger than the tokenizer (llava-hf pads 32002 tokens to 32064 rows); the missing ids
get ``[PAD<id>]`` tokens of type UNUSED, as llama.cpp's converter writes them.

Where SentencePiece's "▁" prefix goes is decided from the tokenizer's behaviour, so
that the file tokenizes right in stock llama.cpp (Ollama, llama-cpp-python's ``Llama``)
and exactly right in llava-edge. llama.cpp knows one switch, ``add_space_prefix``: a
prefix at the start of the text and after every special token. Hugging Face has three
behaviours, found in the wild in these layouts:

=====================================================  ==================  ================
tokenizer (what transformers loads, not the file)      Hugging Face puts    GGUF gets
=====================================================  ==================  ================
normalizer Prepend("▁") + Replace (transformers 4)     before every piece   true
Metaspace ``prepend_scheme="always"``                  before every piece   true + "always"
Metaspace ``"first"`` (transformers 5's Llama, Mistral)  at the start only  true + "first"
Metaspace ``"never"`` (``add_prefix_space=False``)     nowhere              false
Metaspace with ``split=true`` (tokenizers < 0.14)      per word             refused
byte-level BPE (Qwen2), no prefix space                nowhere              (none)
byte-level BPE with ``add_prefix_space=true``          before every piece   refused
=====================================================  ==================  ================

("every piece": every stretch of text between special tokens.) Metaspace never puts a
second "▁" before a piece that starts with a space; llama.cpp does, hence "always". A
bare ``tokenizer.model`` is read as transformers converts it (Metaspace "first"). The
two refused layouts have no llama.cpp equivalent: stock tools would tokenize words
differently whatever the metadata said.

For "first" and "always", llama.cpp's switch is written true (every text that starts with
a word then tokenizes right in stock tools, the first word included) and llava-edge's key
``space_prefix`` tells its runtime to load with the switch off and prefix where Hugging
Face does (:mod:`llava_edge.runtimes.llama_cpp_vocab`). A Unicode normalizer (NFC for
Qwen2) that llama.cpp does not apply is recorded the same way. The export measures both
tokenizations on a fixed corpus (:mod:`tokenizer_parity`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from llava_edge.errors import LlavaEdgeError
from llava_edge.export.open_checkpoint import UnsupportedModelError
from llava_edge.runtimes.gguf_keys import HF_NORMALIZER_KEY, HF_SPACE_PREFIX_KEY

# gguf.TokenType values (also SentencePiece's piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
PAD_SCORE = -10000.0

# Pre-tokenizer split regexes llama.cpp implements, by its `tokenizer.ggml.pre` name.
KNOWN_PRE_TOKENIZERS = {
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
     r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"): "qwen2",
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
     r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"): "llama-bpe",
}
_UNICODE_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD"}
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


@dataclass
class GGUFVocab:
    """Everything llama.cpp needs to tokenize and detokenize like the checkpoint."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    hf_space_prefix: str | None = None
    hf_normalizer: str | None = None
    chat_template: str | None = None
    n_tokenizer: int = 0  # tokens the tokenizer defines (the rest are [PAD] fillers)


def strip_generation_tags(template: str) -> str:
    """Remove transformers' ``{% generation %}`` markers (they only mask training labels)
    from a chat template, so that plain Jinja engines (llama.cpp, Ollama) can parse it."""
    return _GENERATION_TAG.sub("", template)


def read_vocab(checkpoint_dir: str | Path, n_vocab: int) -> GGUFVocab:
    """Read the tokenizer of ``checkpoint_dir`` and lay it out over ``n_vocab`` ids."""
    from transformers import AutoTokenizer

    path = Path(checkpoint_dir)
    try:
        hf = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise LlavaEdgeError(f"{path}: cannot load the tokenizer ({e})") from None
    # What the loaded tokenizer does, not the file: transformers converts a bare
    # tokenizer.model in memory and applies options (legacy, add_prefix_space) at load.
    tokenizer_json = _backend_json(hf) or _read_tokenizer_json(path)
    is_bpe_json = bool(tokenizer_json) and tokenizer_json.get("model", {}).get("type") == "BPE"
    if tokenizer_json and any(m.get("split", True) for m in _metaspace(tokenizer_json)):
        # each "▁word" tokenized apart (tokenizers' default before 0.14): runs of spaces
        # come out differently from llama.cpp's whole-text SentencePiece
        raise UnsupportedModelError(
            f"{path}: the tokenizer's Metaspace pre-tokenizer has split=true (written by "
            "tokenizers < 0.14, or set so): it tokenizes every word apart, which llama.cpp's "
            "SentencePiece tokenizer cannot do; re-save the tokenizer with split=false")
    if (path / "tokenizer.model").is_file():
        vocab = _sentencepiece_vocab(path / "tokenizer.model", tokenizer_json)
    elif is_bpe_json and _byte_level(tokenizer_json):
        vocab = _byte_level_bpe_vocab(path, tokenizer_json)
    elif is_bpe_json and (_metaspace(tokenizer_json) or _prepends(tokenizer_json)):
        # transformers 5 saves Llama tokenizers as tokenizer.json only
        vocab = _sentencepiece_vocab_from_json(tokenizer_json)
    else:
        raise UnsupportedModelError(
            f"{path}: tokenizer not supported for GGUF export (need a SentencePiece "
            "tokenizer.model, or a tokenizer.json with a byte-level or SentencePiece-style "
            "BPE model)")

    _add_added_tokens(vocab, hf)
    vocab.n_tokenizer = len(vocab.tokens)
    if vocab.n_tokenizer > n_vocab:
        raise LlavaEdgeError(f"{path}: the tokenizer has {vocab.n_tokenizer} tokens but the "
                             f"model's embedding matrix only {n_vocab} rows")
    for i in range(vocab.n_tokenizer, n_vocab):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(PAD_SCORE)

    vocab.bos_id, vocab.eos_id = hf.bos_token_id, hf.eos_token_id
    vocab.unk_id, vocab.pad_id = hf.unk_token_id, hf.pad_token_id
    probe = hf("a").input_ids  # what the tokenizer really adds (config flags can lie)
    vocab.add_bos = vocab.bos_id is not None and probe[:1] == [vocab.bos_id]
    vocab.add_eos = vocab.eos_id is not None and probe[-1:] == [vocab.eos_id]
    if vocab.bos_id is None:
        # llama.cpp falls back to a fixed id (11 for BPE) when none is given; the pad
        # token (Qwen2: <|endoftext|>, what Qwen's own GGUFs use) is a safer stand-in.
        vocab.bos_id = vocab.pad_id if vocab.pad_id is not None else vocab.eos_id
    template = hf.chat_template
    if template is None and (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    vocab.chat_template = strip_generation_tags(template) if template else None
    return vocab


def _backend_json(hf) -> dict | None:
    backend = getattr(hf, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _read_tokenizer_json(path: Path) -> dict | None:
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlavaEdgeError(f"{file}: not valid JSON ({e})") from None


def _components(node: dict | None) -> list[dict]:
    """The pre-tokenizer / normalizer steps of a tokenizer.json node, flattened."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        children = node.get("pretokenizers") or node.get("normalizers") or []
        return [c for child in children for c in _components(child)]
    return [node]


def _byte_level(tokenizer_json: dict) -> bool:
    return any(c.get("type") == "ByteLevel"
               for c in _components(tokenizer_json.get("pre_tokenizer")))


def _metaspace(tokenizer_json: dict) -> list[dict]:
    return [c for c in _components(tokenizer_json.get("pre_tokenizer"))
            if c.get("type") == "Metaspace"]


def _prepends(tokenizer_json: dict) -> list[dict]:
    return [c for c in _components(tokenizer_json.get("normalizer"))
            if c.get("type") == "Prepend"]


def _space_prefix(tokenizer_json: dict | None, default: bool) -> tuple[bool, str | None]:
    """(``add_space_prefix`` for llama.cpp, llava-edge's Hugging Face prefix rule); see the
    table in the module docstring."""
    if tokenizer_json is None:
        return default, None
    metaspace = _metaspace(tokenizer_json)
    if metaspace:
        scheme = metaspace[0].get("prepend_scheme")
        if scheme is None:  # tokenizers < 0.14 wrote add_prefix_space instead
            scheme = "always" if metaspace[0].get("add_prefix_space", True) else "never"
        if scheme == "never":
            return False, None
        # "first" (start only) and "always" (every piece, but never a second "▁") are
        # both true for llama.cpp, exact for llava-edge's runtime with its key.
        return True, scheme
    if _prepends(tokenizer_json):  # Prepend("▁") normalizer: llama.cpp's own rule
        return True, None
    return default, None


def _sentencepiece_vocab_from_json(tokenizer_json: dict) -> GGUFVocab:
    """A SentencePiece-style vocabulary rebuilt from a tokenizer.json BPE model.

    llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result has the
    highest score; Hugging Face's BPE applies the merge of lowest rank. Scoring each
    piece by minus the rank of the first merge that produces it makes both choose alike.
    Pieces no merge produces (characters, bytes) never result from a merge anyway.
    """
    model = tokenizer_json["model"]
    by_id = {i: t for t, i in model["vocab"].items()}
    n = max(by_id) + 1 if by_id else 0
    rank: dict[str, int] = {}
    for r, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    unk = model.get("unk_token")
    tokens, scores, types = [], [], []
    for i in range(n):
        piece = by_id.get(i)
        if piece is None:
            tokens.append(f"[PAD{i}]"), scores.append(PAD_SCORE), types.append(UNUSED)
            continue
        tokens.append(piece)
        scores.append(-float(rank[piece]) if piece in rank else 0.0)
        if piece == unk:
            types.append(UNKNOWN)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    add_space_prefix, hf_space_prefix = _space_prefix(tokenizer_json, True)
    return GGUFVocab(model="llama", tokens=tokens, types=types, scores=scores,
                     add_space_prefix=add_space_prefix, hf_space_prefix=hf_space_prefix)


def _sentencepiece_vocab(model_file: Path, tokenizer_json: dict | None) -> GGUFVocab:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    if proto.trainer_spec.model_type not in (1, 2):  # UNIGRAM, BPE
        raise UnsupportedModelError(f"{model_file}: SentencePiece model type "
                                    f"{proto.trainer_spec.model_type} is not supported")
    tokens = [p.piece for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]

    add_space_prefix, hf_space_prefix = _space_prefix(
        tokenizer_json, bool(proto.normalizer_spec.add_dummy_prefix))
    return GGUFVocab(model="llama", tokens=tokens, types=types, scores=scores,
                     add_space_prefix=add_space_prefix, hf_space_prefix=hf_space_prefix)


def _byte_level_bpe_vocab(path: Path, tokenizer_json: dict) -> GGUFVocab:
    model = tokenizer_json["model"]
    by_id = {i: t for t, i in model["vocab"].items()}
    n = max(by_id) + 1 if by_id else 0
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    types = [NORMAL if i in by_id else UNUSED for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    splits = [c for c in _components(tokenizer_json.get("pre_tokenizer"))
              if c.get("type") == "Split"]
    if splits:
        regex = splits[0].get("pattern", {}).get("Regex")
        pre = KNOWN_PRE_TOKENIZERS.get(regex)
        if pre is None:
            raise UnsupportedModelError(
                f"{path}: byte-level BPE pre-tokenizer regex {regex!r} has no llama.cpp "
                "equivalent known to llava-edge (known: "
                f"{', '.join(KNOWN_PRE_TOKENIZERS.values())})")
    else:
        pre = "gpt2"  # ByteLevel with its built-in GPT-2 regex
    if any(c.get("type") == "ByteLevel" and c.get("add_prefix_space")
           for c in _components(tokenizer_json.get("pre_tokenizer"))):
        # llama.cpp's BPE tokenizer ignores add_space_prefix: stock tools would tokenize
        # every first word differently, and no metadata can tell them otherwise.
        raise UnsupportedModelError(
            f"{path}: byte-level BPE with add_prefix_space=true (a space before the first "
            "word) cannot be expressed in GGUF: llama.cpp's BPE tokenizer never adds one")

    normalizer = None
    for step in _components(tokenizer_json.get("normalizer")):
        kind = step.get("type")
        if kind in _UNICODE_NORMALIZERS:
            normalizer = kind
        else:
            raise UnsupportedModelError(f"{path}: tokenizer normalizer {kind!r} is not "
                                        "supported for GGUF export")
    return GGUFVocab(model="gpt2", tokens=tokens, types=types, merges=merges, pre=pre,
                     hf_normalizer=normalizer)


def _add_added_tokens(vocab: GGUFVocab, hf) -> None:
    """Append (or retype) the tokens the Hugging Face tokenizer adds to its base model."""
    for token_id, added in sorted(hf.added_tokens_decoder.items()):
        kind = CONTROL if added.special else USER_DEFINED
        while len(vocab.tokens) < token_id:  # a gap: keep ids aligned
            i = len(vocab.tokens)
            vocab.tokens.append(f"[PAD{i}]")
            vocab.types.append(UNUSED)
            if vocab.scores is not None:
                vocab.scores.append(PAD_SCORE)
        if token_id == len(vocab.tokens):
            vocab.tokens.append(added.content)
            vocab.types.append(kind)
            if vocab.scores is not None:
                vocab.scores.append(0.0)
        elif vocab.tokens[token_id] != added.content:
            raise LlavaEdgeError(f"added token {added.content!r} has id {token_id}, which the "
                                 f"base vocabulary gives to {vocab.tokens[token_id]!r}")
        elif vocab.types[token_id] in (NORMAL, UNUSED):
            vocab.types[token_id] = kind


def add_vocab_metadata(writer, vocab: GGUFVocab) -> None:
    """Write ``vocab`` into a ``gguf.GGUFWriter`` (before its header is written)."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for value, add in ((vocab.bos_id, writer.add_bos_token_id),
                       (vocab.eos_id, writer.add_eos_token_id),
                       (vocab.unk_id, writer.add_unk_token_id),
                       (vocab.pad_id, writer.add_pad_token_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.hf_space_prefix:
        writer.add_string(HF_SPACE_PREFIX_KEY, vocab.hf_space_prefix)
    if vocab.hf_normalizer:
        writer.add_string(HF_NORMALIZER_KEY, vocab.hf_normalizer)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
