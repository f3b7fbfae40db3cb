"""The OpenAI chat-completions wire format: request parsing and checking, response and
error bodies.

Parsing is strict about what we use and lenient about what we ignore: a field we read
must have the right type and range (else :class:`ApiError`, a 4xx with an OpenAI-style
error body), while fields we do not implement (``frequency_penalty``, ``logprobs``,
``user``, ...) are ignored, as OpenAI-compatible servers commonly do, so that stock
clients work. Images come as ``image_url`` content parts holding base64 ``data:`` URLs
(or, only with ``--allow-remote-images``, http(s) URLs fetched under a
:class:`~llava_edge.runtimes.remote_fetch.RemotePolicy`); they are decoded here (with the
pixel-limit guard of :func:`load_image`), so a bad image is refused before the request is
queued. ``response_format`` (``text``, ``json_object``,
``json_schema``) constrains the answer with a grammar (:mod:`llava_edge.runtimes.structured`);
its schema is converted here, so a bad one is a 400 naming ``response_format``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from llava_edge.errors import ImageError, RemoteFetchError, StructuredOutputError
from llava_edge.runtimes.images import load_image
from llava_edge.runtimes.remote_fetch import RemotePolicy, fetch_image_bytes
from llava_edge.runtimes.structured import schema_gbnf

MAX_STOP_STRINGS = 4  # as OpenAI
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """A request we refuse: an HTTP status plus the fields of OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None,
               code: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class ChatRequest:
    """A checked chat-completions request.

    ``messages`` are in the Hugging Face chat shape the bundle's template expects: user
    content is a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts in
    the order the client gave them; system and assistant content are strings. ``images``
    holds the decoded images in the same order as the image parts.
    """

    model: str
    messages: list[dict]
    images: list[Image.Image] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float = 1.0  # OpenAI's default
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # response_format: None for text, True for json_object, the schema for json_schema
    json_schema: dict | bool | None = None


def parse_chat_request(raw: bytes, served_model: str, max_pixels: int,
                       allow_remote_images: bool = False,
                       remote_policy: RemotePolicy | None = None) -> ChatRequest:
    """Parse and check a request body; raise :class:`ApiError` saying what is wrong.

    http(s) image URLs are refused unless ``allow_remote_images``; then they are fetched
    under ``remote_policy`` (default: public addresses only, 32 MB, 10 s)."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string", param="model",
                       code="invalid_type" if "model" in body else "missing_required_parameter")
    if model != served_model:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves "
                       f"'{served_model}'", param="model", code="model_not_found")

    n = body.get("n", 1)
    if n is not None and (not _is_int(n) or n != 1):
        raise ApiError(400, "only n=1 is supported", param="n", code="unsupported_value")

    remote = (remote_policy or RemotePolicy()) if allow_remote_images else None
    messages, images = _parse_messages(body.get("messages"), max_pixels, remote)
    stream = _opt_bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options",
                       code="invalid_type")
    include_usage = _opt_bool(options or {}, "include_usage", False, "stream_options.include_usage")

    # max_completion_tokens is the newer name; the openai client sends either.
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise ApiError(400, f"'{key}' must be an integer of at least 1", param=key,
                       code="invalid_value")

    temperature = _opt_number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _opt_number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0.0:
        raise ApiError(400, "'top_p' must be greater than 0", param="top_p", code="invalid_value")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError(400, "'seed' must be an integer", param="seed", code="invalid_type")
    stop = _parse_stop(body.get("stop"))
    json_schema = _parse_response_format(body.get("response_format"))
    if json_schema is not None and stop:
        raise ApiError(400, "'stop' cannot be combined with a JSON 'response_format' (it "
                       "could cut the JSON; the answer ends when the JSON is complete)",
                       param="response_format", code="invalid_value")
    return ChatRequest(model=model, messages=messages, images=images, stream=stream,
                       include_usage=include_usage, max_tokens=max_tokens,
                       temperature=temperature, top_p=top_p, seed=seed, stop=stop,
                       json_schema=json_schema)


def _parse_response_format(spec: Any) -> dict | bool | None:
    """``response_format`` as the pipeline's ``json_schema``: None (``text``), True
    (``json_object``: any JSON object) or the schema of ``json_schema``, checked here
    (converted to a grammar once) so that a bad one is a 400 before the queue."""
    param = "response_format"
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ApiError(400, f"'{param}' must be an object", param=param, code="invalid_type")
    kind = spec.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return True
    if kind != "json_schema":
        raise ApiError(400, f"'{param}.type' must be 'text', 'json_object' or 'json_schema' "
                       f"(got {kind!r})", param=param, code="invalid_value")
    inner = spec.get("json_schema")
    if not isinstance(inner, dict):
        raise ApiError(400, f"'{param}.json_schema' must be an object with 'name' and "
                       "'schema'", param=param, code="invalid_type")
    if not isinstance(inner.get("name"), str) or not inner["name"]:
        raise ApiError(400, f"'{param}.json_schema.name' must be a non-empty string",
                       param=param, code="invalid_type")
    if inner.get("strict") is not None and not isinstance(inner["strict"], bool):
        raise ApiError(400, f"'{param}.json_schema.strict' must be a boolean", param=param,
                       code="invalid_type")
    # The grammar always holds the answer to the schema: "strict" changes nothing here.
    schema = inner.get("schema", True)  # OpenAI: optional; without it, any JSON object
    if schema is not True and not isinstance(schema, dict):
        raise ApiError(400, f"'{param}.json_schema.schema' must be an object", param=param,
                       code="invalid_type")
    try:
        schema_gbnf(schema)
    except StructuredOutputError as e:
        raise ApiError(400, f"'{param}.json_schema.schema': {e}", param=param,
                       code="invalid_value") from None
    return schema


def _parse_messages(messages: Any, max_pixels: int,
                    remote: RemotePolicy | None) -> tuple[list[dict], list[Image.Image]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages",
                       code="invalid_type" if messages is not None else
                       "missing_required_parameter")
    out: list[dict] = []
    images: list[Image.Image] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ApiError(400, f"{where} must be an object", param=where, code="invalid_type")
        role = msg.get("role")
        role = _ROLES.get(role) if isinstance(role, str) else None
        if role is None:
            raise ApiError(400, f"{where}.role must be one of system, developer, user, "
                           f"assistant (got {msg.get('role')!r})", param=f"{where}.role",
                           code="invalid_value")
        # Chat templates read the system prompt from the first message only.
        if role == "system" and i != 0:
            raise ApiError(400, f"{where}: a system message must come first", param=where,
                           code="invalid_value")
        parts = _content_parts(msg.get("content"), f"{where}.content")
        if role == "user":
            content = []
            for j, part in enumerate(parts):
                if part["type"] == "text":
                    content.append({"type": "text", "text": part["text"]})
                else:
                    images.append(_image_from_part(part, f"{where}.content[{j}]", max_pixels,
                                                   remote))
                    content.append({"type": "image"})
            out.append({"role": "user", "content": content})
        else:
            if any(p["type"] != "text" for p in parts):
                raise ApiError(400, f"{where}: only user messages may hold images",
                               param=f"{where}.content", code="invalid_value")
            out.append({"role": role, "content": "".join(p["text"] for p in parts)})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be from the user", param="messages",
                       code="invalid_value")
    return out, images


def _content_parts(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(400, f"{where} must be a string or an array of content parts",
                       param=where, code="invalid_type")
    parts = []
    for j, part in enumerate(content):
        p = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise ApiError(400, f"{p} must be an object", param=p, code="invalid_type")
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{p}.text must be a string", param=f"{p}.text",
                               code="invalid_type")
        elif kind != "image_url":
            raise ApiError(400, f"{p}.type must be 'text' or 'image_url' (got {kind!r})",
                           param=f"{p}.type", code="invalid_value")
        parts.append(part)
    return parts


def _image_from_part(part: dict, where: str, max_pixels: int,
                     remote: RemotePolicy | None) -> Image.Image:
    """The image of an ``image_url`` part; ``remote`` is None when http(s) URLs are
    refused."""
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise ApiError(400, f"{where}.image_url.url must be a string",
                       param=f"{where}.image_url", code="invalid_type")
    if url.startswith(("http://", "https://")):
        if remote is None:
            raise ApiError(400, f"{where}: remote image URLs are refused by this server (send "
                           "a base64 data: URL, or start it with --allow-remote-images)",
                           param=f"{where}.image_url", code="remote_image_refused")
        data = _fetch(url, where, remote)
    else:
        data = _decode_data_url(url, where)
    try:
        return load_image(data, max_pixels)
    except ImageError as e:
        raise ApiError(400, f"{where}: {e}", param=f"{where}.image_url",
                       code="invalid_image") from None


def _fetch(url: str, where: str, policy: RemotePolicy) -> bytes:
    """Download a remote image (only with --allow-remote-images) under ``policy``: public
    addresses unless allowed, redirects re-checked, bounded in size and time."""
    try:
        return fetch_image_bytes(url, policy)
    except RemoteFetchError as e:
        raise ApiError(400, f"{where}: {e}", param=f"{where}.image_url",
                       code="invalid_image_url") from None


def _decode_data_url(url: str, where: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL."""
    head, sep, payload = url.partition(",")
    if not url.startswith("data:") or not sep or not head.endswith(";base64"):
        raise ApiError(400, f"{where}: image_url must be a base64 data: URL "
                       "(data:image/png;base64,...)", param=f"{where}.image_url",
                       code="invalid_image_url")
    media_type = head[len("data:"):-len(";base64")].split(";")[0]
    if media_type and not media_type.startswith("image/"):
        raise ApiError(400, f"{where}: the data URL holds {media_type}, not an image",
                       param=f"{where}.image_url", code="invalid_image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: the data URL is not valid base64",
                       param=f"{where}.image_url", code="invalid_image_url") from None


def _parse_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)
            or len(stop) > MAX_STOP_STRINGS):
        raise ApiError(400, f"'stop' must be a non-empty string or an array of up to "
                       f"{MAX_STOP_STRINGS} of them", param="stop", code="invalid_type")
    return tuple(stop)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_bool(body: dict, key: str, default: bool, name: str | None = None) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, f"'{name or key}' must be a boolean", param=name or key,
                       code="invalid_type")
    return v


def _opt_number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ApiError(400, f"'{key}' must be a number", param=key, code="invalid_type")
    if not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be between {lo:g} and {hi:g}, got {v}", param=key,
                       code="invalid_value")
    return float(v)


# -- responses ------------------------------------------------------------------------------

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion}


def completion_body(cid: str, model: str, text: str, stop_reason: str, n_prompt: int,
                    n_completion: int) -> dict:
    """A non-streamed ``chat.completion`` object."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None,
                         "finish_reason": FINISH_REASONS.get(stop_reason, stop_reason)}],
            "usage": usage(n_prompt, n_completion)}


def chunk_body(cid: str, model: str, created: int, delta: dict | None,
               finish_reason: str | None = None, usage_: dict | None = None) -> dict:
    """One ``chat.completion.chunk`` of a stream (``delta=None``: the usage-only chunk)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}]
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return body
