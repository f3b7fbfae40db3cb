"""``llava-edge serve``: a bundle behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import ipaddress

import click

from llava_edge.cli.run_cmd import (bundle_vision_backend_option, max_tiles_option,
                                    runtime_options, threads_option, tune_option)
from llava_edge.runtimes.embed_cache import DEFAULT_EMBED_CACHE_MB


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Loopback by default; anything else exposes the "
                   "model to the network (use --api-key).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-queue", default=16, show_default=True, type=click.IntRange(0),
              help="Requests that may wait behind the running one; more get 429.")
@click.option("--max-queue-image-mb", default=1024.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Decoded images (width x height x 3 bytes each) that waiting and running "
                   "requests may hold in all; a request that would go over gets 429, one "
                   "over it alone 413.")
@click.option("--embed-cache-mb", default=DEFAULT_EMBED_CACHE_MB, show_default=True,
              type=click.FloatRange(min=0),
              help="Image embeddings kept for reuse, at most this many MiB (0: none).")
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
                   "requests on a client's behalf). Only public addresses are fetched.")
@click.option("--allow-remote-hosts", "allow_remote_hosts", multiple=True,
              metavar="HOST[,HOST...]",
              help="With --allow-remote-images, also fetch from these host names, IPs or "
                   "CIDR networks, private or loopback ones included (repeatable).")
@click.option("--max-remote-image-mb", default=32.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Largest remote image fetched.")
@click.option("--remote-image-timeout", "remote_timeout_s", default=10.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds a remote image fetch may take in all (redirects included).")
@click.option("--vision-precision", default=None, help="Which vision graph of the bundle.")
@click.option("--llm-quant", default=None, help="Which GGUF of the bundle.")
@click.option("--n-ctx", type=int, default=None, help="Context length (default: bundle's).")
@threads_option
@tune_option
@runtime_options
@bundle_vision_backend_option
@max_tiles_option
def serve(bundle, host, port, max_queue, max_queue_image_mb, embed_cache_mb, api_key,
          model_name, timeout_s, max_body_mb, max_image_pixels, allow_remote_images,
          allow_remote_hosts, max_remote_image_mb, remote_timeout_s, vision_precision,
          llm_quant, n_ctx, n_threads, use_tune, max_tiles, **runtime):
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
    from llava_edge.runtimes.remote_fetch import RemotePolicy
    from llava_edge.runtimes.serve.app import ServeConfig, create_app
    from llava_edge.runtimes.pipeline import LlavaEdge
    from llava_edge.runtimes.serve.worker import Worker

    if not _is_loopback(host) and api_key is None:
        click.echo(f"Warning: listening on {host} without --api-key: anyone who can reach "
                   "this port can use the model.", err=True)
    try:
        remote_policy = RemotePolicy.from_allow_list(
            [h for spec in allow_remote_hosts for h in spec.split(",")],
            max_bytes=int(max_remote_image_mb * 1024 * 1024), timeout_s=remote_timeout_s)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--allow-remote-hosts") from None
    if allow_remote_hosts and not allow_remote_images:
        click.echo("Warning: --allow-remote-hosts has no effect without "
                   "--allow-remote-images.", err=True)
    max_pixels = max_image_pixels or DEFAULT_MAX_PIXELS
    model = LlavaEdge.load(bundle, vision_precision=vision_precision, llm_quant=llm_quant,
                           n_ctx=n_ctx, n_threads=n_threads, max_pixels=max_pixels,
                           max_tiles=max_tiles, embed_cache_mb=embed_cache_mb,
                           tune=use_tune, **runtime)
    worker = Worker(model, max_queue=max_queue,
                    max_image_bytes=int(max_queue_image_mb * 1024 * 1024)).start()
    config = ServeConfig(model_name=model_name or Path(bundle).resolve().name, api_key=api_key,
                         max_body_bytes=int(max_body_mb * 1024 * 1024), timeout_s=timeout_s,
                         max_pixels=max_pixels, allow_remote_images=allow_remote_images,
                         remote_policy=remote_policy)
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
