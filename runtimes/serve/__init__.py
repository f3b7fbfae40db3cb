"""``llava-edge serve``: a bundle behind an OpenAI-compatible HTTP API.

One model instance answers requests one at a time, in arrival order:

- :mod:`.openai_schema` parses and checks a ``/v1/chat/completions`` body into a
  :class:`ChatRequest` and builds OpenAI-shaped responses and error bodies;
- :mod:`.worker` owns the model (a :class:`~llava_edge.runtimes.pipeline.LlavaEdge`,
  which renders the whole chat -- system, earlier turns, images in place -- with the
  bundle's template: ``stream_messages``): a bounded FIFO queue and one thread that runs it, with
  cancellation between tokens;
- :mod:`.app` is the FastAPI app (routes, auth, body limit, server-sent events).

Needs the ``[server]`` extra (fastapi, uvicorn) for :mod:`.app` only.
"""
