"""``llava-edge run`` and ``llava-edge embed``: use a bundle."""

from __future__ import annotations

from dataclasses import asdict

import click

from llava_edge.cli.common import (emit_json, json_option, sampling_options,
                                   structured_options)

threads_option = click.option("--threads", "n_threads", type=int, default=None,
                              help="CPU threads (default: all cores).")


def _gpu_layers(_ctx, _param, value):
    if value is None or value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise click.BadParameter(f"give a number of layers >= 0 or 'auto' (got {value!r})")
    return n


#: Also on `bench` and `demo`, whose other runtime flags differ (their defaults are fixed,
#: not a tune profile's).
gpu_layers_option = click.option(
    "--gpu-layers", "n_gpu_layers", callback=_gpu_layers, default=None, metavar="N|auto",
    help="llama.cpp layers on the GPU (default: auto, every layer where llama.cpp has a "
         "GPU, else none).")
providers_option = click.option(
    "--providers", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default=None,
    help="ONNX Runtime provider for the vision graph (default: auto, the fastest installed).")

_RUNTIME_OPTIONS = (
    gpu_layers_option,
    providers_option,
    click.option("--flash-attn/--no-flash-attn", "flash_attn", default=None,
                 help="llama.cpp flash attention (default: off)."),
    click.option("--repack/--no-repack", "repack", default=None,
                 help="llama.cpp's load-time weight repacking (default: on)."),
    click.option("--kv-type", type=click.Choice(["f16", "q8_0"]), default=None,
                 help="KV cache type (default: f16; q8_0 needs --flash-attn)."),
)


def runtime_options(f):
    """The runtime settings ``LlavaEdge.load`` takes, as options whose names are its
    argument names (unset: the tune profile's choice, else the default)."""
    for option in reversed(_RUNTIME_OPTIONS):
        f = option(f)
    return f


tune_option = click.option(
    "--tune/--no-tune", "use_tune", default=True, show_default=True,
    help="Use the settings `llava-edge tune` measured for this bundle on this machine, if "
         "any (explicit flags still win).")
max_tiles_option = click.option(
    "--max-tiles", type=click.IntRange(min=1), default=None,
    help="LLaVA-NeXT bundles: at most N views per image, the base view included (fewer "
         "image positions, faster first token, less detail; default: as transformers).")
# PyTorch reference backends (runtimes/torch_reference.py): run the checkpoint in
# transformers in place of a half of the bundle, to compare.
reference_option = click.option(
    "--reference-checkpoint", type=click.Path(exists=True, file_okay=False), default=None,
    help="PyTorch checkpoint for the torch backends (needs the [export] extra).")
vision_backend_option = click.option(
    "--vision-backend", type=click.Choice(["auto", "onnx", "tensorrt", "mtmd", "torch"]),
    default="auto", show_default=True,
    help="auto: a TensorRT engine of the bundle that matches this machine, else ONNX "
         "Runtime on a GPU (the fp16 graph), else llama.cpp's mtmd on a GPU (SigLIP "
         "bundles with an mmproj), else ONNX Runtime on the CPU; tensorrt / mtmd: that "
         "backend or an error saying why not; torch: the checkpoint's vision tower "
         "instead of the bundle's graph.")
#: chat / serve / watch: the bundle's own backends only (no torch reference there).
bundle_vision_backend_option = click.option(
    "--vision-backend", type=click.Choice(["auto", "onnx", "tensorrt", "mtmd"]), default="auto",
    show_default=True,
    help="auto: a TensorRT engine of the bundle that matches this machine, else ONNX "
         "Runtime on a GPU (the fp16 graph), else llama.cpp's mtmd on a GPU (SigLIP "
         "bundles with an mmproj), else ONNX Runtime on the CPU; tensorrt / mtmd: that "
         "backend or an error saying why not.")
llm_backend_option = click.option(
    "--llm-backend", type=click.Choice(["llama.cpp", "torch"]), default="llama.cpp",
    show_default=True, help="torch: the checkpoint's LLM instead of the GGUF.")


def _check_reference(reference_checkpoint, **backends) -> None:
    """A torch backend needs --reference-checkpoint: say so on one line (exit 1)."""
    from llava_edge.errors import LlavaEdgeError

    for option, choice in backends.items():
        if choice == "torch" and reference_checkpoint is None:
            raise LlavaEdgeError(f"--{option.replace('_', '-')} torch needs "
                                 "--reference-checkpoint DIR (the PyTorch checkpoint)")


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--image", "images", multiple=True, type=click.Path(),
              help="Image file (repeat for several; fills <image> markers in order).")
@click.option("--prompt", required=True, help="The question.")
@click.option("--max-new-tokens", default=128, show_default=True)
@sampling_options
@structured_options
@click.option("--system", default=None, help="Replace the template's system prompt.")
@click.option("--vision-precision", default=None, help="Which vision graph of the bundle.")
@click.option("--llm-quant", default=None, help="Which GGUF of the bundle.")
@click.option("--n-ctx", type=int, default=None, help="Context length (default: bundle's).")
@click.option("--stream", "streaming", is_flag=True, help="Print the answer as it is decoded.")
@max_tiles_option
@threads_option
@tune_option
@runtime_options
@reference_option
@vision_backend_option
@llm_backend_option
@json_option
def run(bundle, images, prompt, max_new_tokens, temperature, top_k, top_p, repeat_penalty,
        seed, structured, system, vision_precision, llm_quant, n_ctx, streaming, max_tiles,
        n_threads, use_tune, reference_checkpoint, vision_backend, llm_backend, as_json,
        **runtime):
    """Answer PROMPT about the image(s) with BUNDLE."""
    from llava_edge.cli.interrupt import cancel_on_sigint
    from llava_edge.errors import Cancelled
    from llava_edge.runtimes.cancel import Cancel
    from llava_edge.runtimes.pipeline import LlavaEdge

    _check_reference(reference_checkpoint, vision_backend=vision_backend,
                     llm_backend=llm_backend)
    if "torch" in (vision_backend, llm_backend):
        from llava_edge.runtimes.torch_reference import load_reference

        loaded = load_reference(bundle, reference_checkpoint, vision=vision_backend,
                                llm=llm_backend, n_threads=n_threads,
                                vision_precision=vision_precision, llm_quant=llm_quant,
                                n_ctx=n_ctx, max_tiles=max_tiles)
    else:
        loaded = LlavaEdge.load(bundle, vision_precision=vision_precision,
                                llm_quant=llm_quant, n_ctx=n_ctx, n_threads=n_threads,
                                max_tiles=max_tiles, tune=use_tune,
                                vision_backend=vision_backend, **runtime)
    cancel = Cancel()
    with loaded as model, cancel_on_sigint(cancel):
        stream = model.stream(list(images), prompt, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              repeat_penalty=repeat_penalty, seed=seed, system=system,
                              cancel=cancel, **structured)
        try:
            for piece in stream:
                if streaming and not as_json:
                    click.echo(piece, nl=False)
        except Cancelled:  # Ctrl-C, seen within one ubatch: exit 130 as for any Ctrl-C
            if streaming and not as_json:
                click.echo()
            raise KeyboardInterrupt from None
        answer = stream.answer
        if streaming and not as_json:
            click.echo()
        elif as_json:
            emit_json({"text": answer.text, "n_tokens": answer.n_tokens,
                       "n_prompt_tokens": answer.n_prompt_tokens,
                       "stop_reason": answer.stop_reason, "timings_ms": asdict(answer.timings),
                       **_structured_value(answer),
                       "vision_precision": model.vision_precision,
                       "llm_quant": model.llm_quant})
        else:
            click.echo(answer.text)
        if structured and not as_json:
            _structured_value(answer, raise_error=True)  # cut: exit 1 saying so


def _structured_value(answer, raise_error: bool = False) -> dict:
    """For a --json-schema / --choice answer, {"value": parsed} or, when it was cut before
    it was complete, {"error": why} (raised instead with ``raise_error``); {} otherwise."""
    from llava_edge.errors import StructuredOutputError

    if answer.structured is None:
        return {}
    try:
        return {"value": answer.json() if answer.structured == "json" else answer.choice()}
    except StructuredOutputError as e:
        if raise_error:
            raise
        return {"error": str(e)}


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--image", required=True, type=click.Path())
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Where to save the embeddings (.npy).")
@click.option("--vision-precision", default=None)
@max_tiles_option
@threads_option
@providers_option
@reference_option
@vision_backend_option
@llm_backend_option
@json_option
def embed(bundle, image, out_file, vision_precision, max_tiles, n_threads, providers,
          reference_checkpoint, vision_backend, llm_backend, as_json):
    """Save the rows IMAGE takes in the LLM's sequence, [n_positions, n_embd], as they are
    injected (LLaVA-NeXT: the tiles' features packed with the newlines), for debugging
    and comparing backends."""
    import numpy as np

    from llava_edge.atomic_dir import atomic_path
    from llava_edge.bundle import open_bundle
    from llava_edge.runtimes.image_embeds import encode_images, image_layout
    from llava_edge.runtimes.images import load_image
    from llava_edge.runtimes.vision_backend import choose_vision, open_vision

    # --llm-backend is accepted for symmetry with `run`; embed uses no language model.
    _check_reference(reference_checkpoint, vision_backend=vision_backend,
                     llm_backend=llm_backend)
    b = open_bundle(bundle)
    if vision_backend == "torch":
        from llava_edge.runtimes.torch_reference import TorchVisionBackend, check_fits

        encoder, precision, backend = TorchVisionBackend(reference_checkpoint), "torch", "torch"
        check_fits(b, encoder.model.config, reference_checkpoint)
        if n_threads:
            import torch  # installed: the backend checked

            torch.set_num_threads(n_threads)
    else:
        choice = choose_vision(b.manifest, b.path, vision_precision, providers,
                               vision_backend)
        encoder, choice = open_vision(b, choice, n_threads=n_threads,
                                      fallback=vision_backend == "auto")
        precision, backend = choice.precision, choice.backend
    m = b.manifest
    layout = image_layout(m, b.file(m.anyres.newline_file) if m.anyres else None, max_tiles)
    embeds = encode_images(layout, [load_image(image)], encoder.encode)[0]
    # Through a file object, so that the file is OUT exactly (np.save given a name adds
    # ".npy" to it), and through a temporary sibling, so that an interrupted save leaves
    # OUT as it was rather than a truncated array.
    with atomic_path(out_file) as tmp, open(tmp, "wb") as f:
        np.save(f, embeds)
    result = {"file": out_file, "shape": list(embeds.shape), "vision_precision": precision,
              "vision_backend": backend, "mean": float(embeds.mean()), "std": float(embeds.std())}
    if as_json:
        emit_json(result)
    else:
        click.echo(f"wrote {out_file}: {embeds.shape[0]} x {embeds.shape[1]} "
                   f"({precision} vision graph" + (", TensorRT engine)" if backend == "tensorrt"
                                                    else ")"))
