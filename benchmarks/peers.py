"""The peers llava-edge is measured against, each a :class:`~.measure.Runner`.

* :class:`TransformersRunner`: Hugging Face ``LlavaForConditionalGeneration.generate``,
  PyTorch eager fp32 on the checkpoint (what a user would otherwise run), or bf16.
* :class:`LlamaCppLlavaRunner`: stock llama.cpp's LLaVA path, the bundle's mmproj GGUF
  through llama-cpp-python's ``Llava15ChatHandler`` (mtmd) with the bundle's GGUF.
* :class:`LlamaCppRawRunner`: llama-cpp-python ``Llama.generate`` from text tokens on the
  same GGUF, as many prompt positions as the image prompt: raw llama.cpp decode speed.

All greedy, same image (the file), same question, same ``max_new_tokens``, same threads.
Token times come from inside each library's loop (a streamer, a logits processor, the
token generator), so the first-token and decode figures mean the same as llava-edge's.
"""

from __future__ import annotations

import base64
import contextlib
import time
from pathlib import Path

from llava_edge.benchmarks.measure import Job, Sample


def _weights_size(checkpoint: Path) -> dict[str, int]:
    return {f"checkpoint/{p.name}": p.stat().st_size
            for p in sorted(checkpoint.glob("*.safetensors"))}


class TransformersRunner:
    """``LlavaForConditionalGeneration.generate`` in PyTorch eager (CPU): fp32, or bf16 for
    the ``torch-bf16`` configuration."""

    def __init__(self, job: Job):
        import torch
        from PIL import Image
        from transformers.generation.streamers import BaseStreamer

        from llava_edge.export.open_checkpoint import load_llava
        from llava_edge.runtimes.llama_cpp_lm import gpu_layers

        torch.set_num_threads(job.threads)
        self.job, self.torch, self.last_text = job, torch, None
        bf16 = job.config["llm"] == "torch-bf16"
        loaded = load_llava(job.checkpoint, "bfloat16" if bf16 else "float32")
        self.model, self.processor = loaded.model, loaded.processor
        # The same offload as the llama.cpp rows: on CUDA when they run on a GPU.
        self.device = "cpu"
        if gpu_layers(job.n_gpu_layers) > 0 and torch.cuda.is_available():
            self.device = "cuda"
            self.model.to(self.device)
        self.image = Image.open(job.image).convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": job.prompt}]}]
        self.text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        self.files = _weights_size(Path(job.checkpoint))
        dtype = ("bf16 (weights cast on load)" if bf16
                 else "fp32 (checkpoint weights upcast on load)")
        self.notes = [f"PyTorch eager {dtype} on {self.device}; vision_ms is a separate "
                      "get_image_features call, prefill_ms = first token - preprocess - "
                      "vision"]

        class _Times(BaseStreamer):
            """Records when generate hands over the prompt (first put) and each token."""

            def __init__(self):
                self.times: list[float] = []

            def put(self, value):
                self.times.append(time.perf_counter())

            def end(self):
                pass

        self._streamer = _Times

    def once(self) -> Sample:
        torch, model = self.torch, self.model
        config = model.config
        t0 = time.perf_counter()
        inputs = self.processor(images=self.image, text=self.text,
                                return_tensors="pt").to(self.device)
        t_pre = time.perf_counter()
        # LLaVA-NeXT's features need each image's size (to unpad its grid)
        sizes = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}
        with torch.inference_mode():
            model.get_image_features(
                pixel_values=inputs["pixel_values"],
                vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy, **sizes)
            if self.device == "cuda":  # the kernels are queued; wait for them to finish
                torch.cuda.synchronize()
        t_vis = time.perf_counter()
        streamer = self._streamer()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=self.job.max_new_tokens,
                                 do_sample=False, streamer=streamer,
                                 pad_token_id=self.processor.tokenizer.pad_token_id
                                 or self.processor.tokenizer.eos_token_id)
        t_end = time.perf_counter()
        new = out[0, inputs["input_ids"].shape[1]:]
        self.last_text = self.processor.tokenizer.decode(new, skip_special_tokens=True)
        tokens = streamer.times[1:]  # the first put is the prompt
        preprocess_ms, vision_ms = (t_pre - t0) * 1000, (t_vis - t_pre) * 1000
        first_ms = preprocess_ms + (tokens[0] - t_vis) * 1000
        return Sample(first_token_ms=first_ms,
                      total_ms=preprocess_ms + (t_end - t_vis) * 1000,
                      n_tokens=len(tokens), decode_ms=(tokens[-1] - tokens[0]) * 1000,
                      preprocess_ms=preprocess_ms, vision_ms=vision_ms,
                      prefill_ms=max(0.0, first_ms - preprocess_ms - vision_ms),
                      n_prompt_tokens=int(inputs["input_ids"].shape[1]))

    def close(self) -> None:
        self.model = None


def _llama(job: Job, gguf: Path, **kwargs):
    """``Llama`` on ``gguf`` with the bench's llama.cpp options, or with a tune profile's
    (``job.tuned_settings``: the tuned row's yardstick) where the row is the tuned one."""
    from llama_cpp import Llama

    from llava_edge.manifest import DEFAULT_N_CTX
    from llava_edge.runtimes.llama_cpp_lm import KV_TYPES, gpu_layers
    from llava_edge.runtimes.llama_log import set_llama_logging

    set_llama_logging(False)
    t = job.tuned_settings or {}
    kv = KV_TYPES[t.get("kv_type", "f16")]
    with _repacking(t.get("repack", True)):
        return Llama(model_path=str(gguf), n_ctx=job.n_ctx or DEFAULT_N_CTX,
                     n_threads=t.get("n_threads", job.threads),
                     n_threads_batch=t.get("n_threads_batch", job.threads),
                     n_gpu_layers=gpu_layers(t.get("n_gpu_layers", job.n_gpu_layers)),
                     n_batch=job.n_batch, n_ubatch=t.get("n_ubatch", job.n_ubatch)
                     or min(job.n_batch, 512), flash_attn=t.get("flash_attn", job.flash_attn),
                     type_k=kv, type_v=kv, seed=0, verbose=False, **kwargs)


@contextlib.contextmanager
def _repacking(on: bool):
    """llama-cpp-python's ``Llama`` has no argument for llama.cpp's weight repacking
    (``use_extra_bufts``, ``--no-repack`` in llama.cpp's tools): where a tune profile turned
    it off, the model parameters ``Llama`` starts from have it off for this one load."""
    if on:
        yield
        return
    import llama_cpp.llama as module

    defaults = module.llama_cpp.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    module.llama_cpp.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        module.llama_cpp.llama_model_default_params = defaults


def _bundle(job: Job):
    from llava_edge.bundle import open_bundle

    return open_bundle(job.bundle, verify="none")


class LlamaCppLlavaRunner:
    """Stock llama.cpp: the mmproj through ``Llava15ChatHandler`` + the GGUF."""

    def __init__(self, job: Job):
        from llama_cpp.llama_chat_format import Llava15ChatHandler

        bundle = _bundle(job)
        lm = bundle.llm_entry(job.config["llm"])
        mmproj = bundle.file(bundle.manifest.mmproj.file)
        gguf = bundle.file(lm.file)
        self.job, self.last_text = job, None
        self.files = {lm.file: gguf.stat().st_size, mmproj.name: mmproj.stat().st_size}
        handler = Llava15ChatHandler(clip_model_path=str(mmproj), verbose=False)
        self.llm = _llama(job, gguf, chat_handler=handler)
        image = Path(job.image)
        mime = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
        self.url = f"data:{mime};base64," + base64.b64encode(image.read_bytes()).decode()
        self.notes = ["llama-cpp-python Llava15ChatHandler (mtmd) with the bundle's mmproj; "
                      "its mtmd context is created on the first request (a warm-up), not in "
                      "load_ms; vision and prefill are not separable from outside, so only "
                      "first token, decode and total are reported"]

    def once(self) -> Sample:
        from llama_cpp import LogitsProcessorList

        times: list[float] = []

        def record(_input_ids, scores):
            times.append(time.perf_counter())  # logits of a new position are ready
            return scores

        t0 = time.perf_counter()
        response = self.llm.create_chat_completion(
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": self.url}},
                {"type": "text", "text": self.job.prompt}]}],
            max_tokens=self.job.max_new_tokens, temperature=0.0, top_k=1,
            repeat_penalty=1.0, logits_processor=LogitsProcessorList([record]))
        t_end = time.perf_counter()
        self.last_text = response["choices"][0]["message"]["content"]
        return Sample(first_token_ms=(times[0] - t0) * 1000, total_ms=(t_end - t0) * 1000,
                      n_tokens=response["usage"]["completion_tokens"],
                      decode_ms=(times[-1] - times[0]) * 1000,
                      n_prompt_tokens=response["usage"]["prompt_tokens"])

    def close(self) -> None:
        self.llm.close()


class LlamaCppRawRunner:
    """``Llama.generate`` on text tokens: llama.cpp's decode with nothing around it.

    The prompt is the question's tokens repeated to as many positions as llava-edge's
    image prompt has (image tokens + text), so decode attends over the same context.
    """

    def __init__(self, job: Job):
        bundle = _bundle(job)
        lm = bundle.llm_entry(job.config["llm"])
        gguf = bundle.file(lm.file)
        self.job, self.last_text = job, None
        self.files = {lm.file: gguf.stat().st_size}
        self.llm = _llama(job, gguf)
        words = self.llm.tokenize(job.prompt.encode(), add_bos=False)
        # llava-edge's own prompt length when known (the parent passes it), else a guess.
        n_positions = job.context_tokens or bundle.manifest.image.n_tokens + 64
        body = (words * (n_positions // max(1, len(words)) + 1))[:n_positions - 1]
        self.tokens = [self.llm.token_bos()] + body
        self.notes = [f"text prompt of {len(self.tokens)} tokens (the image prompt's "
                      "positions); greedy; never stops before max_new_tokens"]
        if job.tuned_settings is not None:
            self.notes.append("the tuned row's llama.cpp settings: " + ", ".join(
                f"{k}={v}" for k, v in job.tuned_settings.items()
                if k not in ("vision_precision", "vision_threads", "providers")))

    def once(self) -> Sample:
        self.llm.reset()  # no prefix reuse between repeats: every run prefills
        times: list[float] = []
        out: list[int] = []
        t0 = time.perf_counter()
        for token in self.llm.generate(self.tokens, top_k=1, temp=0.0, repeat_penalty=1.0):
            times.append(time.perf_counter())
            out.append(token)
            if len(out) >= self.job.max_new_tokens:
                break
        self.last_text = self.llm.detokenize(out).decode(errors="replace")
        return Sample(first_token_ms=(times[0] - t0) * 1000,
                      total_ms=(times[-1] - t0) * 1000, n_tokens=len(out),
                      decode_ms=(times[-1] - times[0]) * 1000,
                      prefill_ms=(times[0] - t0) * 1000, n_prompt_tokens=len(self.tokens))

    def close(self) -> None:
        self.llm.close()
