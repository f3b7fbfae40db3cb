"""Train a preset's tokenizer locally and save it the way Hugging Face checkpoints do.

* ``sentencepiece``: a SentencePiece BPE model with byte fallback, trained with the
  options Llama's tokenizer uses (digits split, dummy prefix, no whitespace folding),
  saved as ``tokenizer.model`` plus the ``tokenizer.json`` transformers derives from it;
  for a ChatML template (Yi's layout) with ``<|im_start|>`` / ``<|im_end|>`` added and
  ``<|im_end|>`` as EOS, and without BOS where the spec says so.
* ``bpe``: a byte-level BPE with merges and Qwen2's pre-tokenizer regex (so llama.cpp's
  ``qwen2`` pre-tokenizer splits text the same way), ChatML special tokens.

Both then get the image token ``<image>`` appended as an added special token, as the
llava-hf conversion does (and ``<pad>`` for Llama, which has no pad token).
"""

from __future__ import annotations

import io
from pathlib import Path

from llava_edge.presets import TokenizerSpec
from llava_edge.templates import IMAGE_TOKEN, TEMPLATES

from llava_edge.trainer.tokenizer_corpus import corpus_lines

# Qwen2's pre-tokenizer split (tokenizer.json of the Qwen2 models; llama.cpp "qwen2").
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(spec: TokenizerSpec, out_dir: Path, seed: int = 0):
    """Train, save into ``out_dir`` and return the transformers tokenizer for ``spec``."""
    lines = corpus_lines(seed)
    if spec.kind == "sentencepiece":
        tokenizer = _sentencepiece_tokenizer(lines, spec.vocab_size, out_dir, seed,
                                             add_bos=spec.add_bos, chatml=spec.chatml)
    elif spec.kind == "bpe":
        tokenizer = _byte_level_bpe_tokenizer(lines, spec.vocab_size)
    else:  # pragma: no cover - the spec's Literal type rules this out
        raise ValueError(f"unknown tokenizer kind {spec.kind!r}")
    tokenizer.chat_template = TEMPLATES[spec.template].jinja
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _sentencepiece_tokenizer(lines: list[str], vocab_size: int, out_dir: Path, seed: int,
                             add_bos: bool = True, chatml: bool = False):
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may support fewer pieces; take what it has
        byte_fallback=True,
        split_digits=True,
        character_coverage=0.9995,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1,  # more threads make the result depend on scheduling
        minloglevel=2,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(out_dir, add_bos_token=add_bos,
                                               add_eos_token=False, legacy=False)
    if chatml:
        # Yi's layout (LLaVA-1.6-34B): ChatML's markers are tokens of a SentencePiece
        # vocab and the end of a turn, <|im_end|>, is the EOS the model stops on.
        tokenizer.add_special_tokens({"eos_token": "<|im_end|>",
                                      "additional_special_tokens": CHATML_SPECIALS[1:]})
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


def _byte_level_bpe_tokenizer(lines: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(lines, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=CHATML_SPECIALS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer
