"""llava-edge's own GGUF metadata keys (llama.cpp ignores keys it does not know).

They record what a checkpoint's Hugging Face tokenizer does that llama.cpp's tokenizer
does not, so that :class:`llava_edge.runtimes.llama_cpp_lm.LlamaCppLM` can tokenize
exactly like it:

* ``HF_SPACE_PREFIX_KEY``: where the Metaspace pre-tokenizer puts its "▁": ``"first"``
  (before the text at its very start, unless it starts with a space or a special token,
  as ``prepend_scheme="first"`` does) or ``"always"`` (before every piece of text between
  special tokens that does not start with a space). ``tokenizer.ggml.add_space_prefix``
  is true with either, for stock llama.cpp; llava-edge's runtime turns it off at load and
  places the prefix itself (:mod:`llava_edge.runtimes.llama_cpp_vocab`). Bundles exported
  before llava-edge 0.1's tokenizer parity check have it false with ``"first"``.
* ``HF_NORMALIZER_KEY``: the Unicode normalization (``"NFC"``, ...) applied to the text.
"""

HF_SPACE_PREFIX_KEY = "llava_edge.tokenizer.space_prefix"
HF_NORMALIZER_KEY = "llava_edge.tokenizer.normalizer"
