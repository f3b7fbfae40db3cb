"""``llava-edge serve``: a bundle behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import ipaddress

import click

from llava_edge.cli.run_cmd import max_tiles_option, threads_option


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Loopback by default; anything else exposes the "
                   "model to the network (use --api-key).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-queue", default=16, show_default=True, type=click.IntRange(0),
              help="Requests that may wait behind the running one; more get 429.")
@click.option("--api-key", default=None, envvar="LLAVA_EDGE_API_KEY",
              help="Require 'Authorization: Bearer KEY' on /v1/* (env LLAVA_EDGE_API_KEY).")
@click.option("--model-name", default=None,
              help="The model id clients name (default: the bundle directory's name).")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds a request may take from admission to its last token (504 after).")
@click.option("--max-body-mb", default=32.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="Request body limit (413).")
@click.option("--max-image-pixels", default=None, type=click.IntRange(1),
              help="Refuse larger images (default: the runtime's limit, 64 M pixels).")
@click.option("--allow-remote-images", is_flag=True,
              help="Fetch http(s) image URLs (refused by default: the server would make "
                   "requests on a client's behalf).")
@click.option("--vision-precision", default=None, help="Which vision graph of the bundle.")
@click.option("--llm-quant", default=None, help="Which GGUF of the bundle.")
@click.option("--n-ctx", type=int, default=None, help="Context length (default: bundle's).")
@threads_option
@max_tiles_option
def serve(bundle, host, port, max_queue, api_key, model_name, timeout_s, max_body_mb,
          max_image_pixels, allow_remote_images, vision_precision, llm_quant, n_ctx,
          n_threads, max_tiles):
    """Serve BUNDLE with an OpenAI-compatible API: POST /v1/chat/completions (images as
    base64 data: URLs, streaming as server-sent events), GET /v1/models, GET /health.

    \b
    One model instance answers one request at a time, first come first served.
    """
    from pathlib import Path

    from llava_edge.errors import require_extra

    require_extra("server", "llava-edge serve", "fastapi", "uvicorn")
    import uvicorn

    from llava_edge.runtimes.images import DEFAULT_MAX_PIXELS
    from llava_edge.runtimes.serve.app import ServeConfig, create_app
    from llava_edge.runtimes.pipeline import LlavaEdge
    from llava_edge.runtimes.serve.worker import Worker

    if not _is_loopback(host) and api_key is None:
        click.echo(f"Warning: listening on {host} without --api-key: anyone who can reach "
                   "this port can use the model.", err=True)
    max_pixels = max_image_pixels or DEFAULT_MAX_PIXELS
    model = LlavaEdge.load(bundle, vision_precision=vision_precision, llm_quant=llm_quant,
                           n_ctx=n_ctx, n_threads=n_threads, max_pixels=max_pixels,
                           max_tiles=max_tiles)
    worker = Worker(model, max_queue=max_queue).start()
    config = ServeConfig(model_name=model_name or Path(bundle).resolve().name, api_key=api_key,
                         max_body_bytes=int(max_body_mb * 1024 * 1024), timeout_s=timeout_s,
                         max_pixels=max_pixels, allow_remote_images=allow_remote_images)
    click.echo(f"serving '{config.model_name}' ({model.vision_precision} vision, "
               f"{model.llm_quant} LLM) on http://{host}:{port}/v1", err=True)
    try:
        uvicorn.run(create_app(worker, config), host=host, port=port, log_level="warning")
    finally:
        worker.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
