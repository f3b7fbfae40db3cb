"""llava-edge's own GGUF metadata keys (llama.cpp ignores keys it does not know).

They record what a checkpoint's Hugging Face tokenizer does that llama.cpp's tokenizer
does not, so that :class:`llava_edge.runtimes.llama_cpp_lm.LlamaCppLM` can tokenize
exactly like it:

* ``HF_SPACE_PREFIX_KEY = "first"``: put one space before the text at its very start
  (unless it starts with a space or a special token), as the Metaspace pre-tokenizer with
  ``prepend_scheme="first"`` does; ``tokenizer.ggml.add_space_prefix`` is then false.
* ``HF_NORMALIZER_KEY``: the Unicode normalization (``"NFC"``, ...) applied to the text.
"""

HF_SPACE_PREFIX_KEY = "llava_edge.tokenizer.space_prefix"
HF_NORMALIZER_KEY = "llava_edge.tokenizer.normalizer"
