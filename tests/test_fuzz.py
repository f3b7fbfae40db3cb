"""Property-based tests (hypothesis) over everything that parses untrusted input.

Each property says: whatever the input, the parser returns a valid answer or raises the
typed error the project promises (an :class:`ApiError` with a 4xx status for the server,
a :class:`~llava_edge.errors.LlavaEdgeError` subclass elsewhere); any other exception,
a hang (the per-example deadline) or a decompression bomb is a bug.

Inputs: the OpenAI request body (raw bytes, arbitrary JSON, near-valid requests), data
URLs, image bytes (mutated PNG / JPEG / WebP / GIF / TIFF / BMP written by Pillow), chat
templates' messages, the bundle manifest, GGUF headers and ONNX graphs (mutated copies
of small valid files built here, without torch).

Examples per property: each property's default below (a few hundred for the cheap ones,
fewer for the slow ones); ``LLAVA_EDGE_FUZZ_EXAMPLES=N`` runs N for every property.
``derandomize=True`` makes CI runs reproducible (the same examples every run).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from llava_edge.errors import BundleError, ImageError, LlavaEdgeError, PromptError
from llava_edge.runtimes.images import load_image
from llava_edge.runtimes.serve.openai_schema import (ApiError, ChatRequest, _decode_data_url,
                                                     _image_from_part, parse_chat_request)

_ENV = os.environ.get("LLAVA_EDGE_FUZZ_EXAMPLES")


def fuzz(default: int, deadline_ms: int = 2000):
    """Settings for one property: ``default`` examples (or the environment's count),
    reproducible, each example within ``deadline_ms``."""
    return settings(max_examples=int(_ENV) if _ENV else default, deadline=deadline_ms,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


MODEL = "llava-edge-fuzz"
MAX_PIXELS = 1_000_000  # every decode in this file is bounded by it

# -- shared strategies ------------------------------------------------------------------------

# Any JSON value (NaN and infinities included: Python's json reads and writes them).
json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
                | st.floats() | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12)

# Text with what breaks prompts: markers, special tokens, Jinja syntax, unicode, empties.
tricky_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "<image>", "<image>\n<image>", "</s>", "<s>", "<|im_start|>",
                     "<|im_end|>", "[INST]", "<<SYS>>", "{{ bos_token }}", "{% if %}",
                     "\x00", "\ud7ff\ue000", "👁️", "a" * 300]),
    st.lists(st.sampled_from(["<image>", "hi ", "</s>", "<|im_end|>", "é", "\n"]),
             max_size=6).map("".join),
)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _sample_image(mode: str = "RGB", size=(12, 9)) -> Image.Image:
    img = Image.new("RGB", size)
    img.putdata([((x * 20) % 256, (y * 28) % 256, (x * y) % 256)
                 for y in range(size[1]) for x in range(size[0])])
    return img.convert(mode)


# Small valid images of every format the server may be sent, in a few modes.
SEEDS: dict[str, bytes] = {
    "png": _encode(_sample_image(), "PNG"),
    "png_rgba": _encode(_sample_image("RGBA"), "PNG"),
    "png_palette": _encode(_sample_image("P"), "PNG"),
    "jpeg": _encode(_sample_image(), "JPEG", quality=80),
    "jpeg_progressive": _encode(_sample_image("L"), "JPEG", progressive=True),
    "webp": _encode(_sample_image(), "WEBP", quality=80),
    "webp_lossless": _encode(_sample_image("RGBA"), "WEBP", lossless=True),
    "gif": _encode(_sample_image("P"), "GIF"),
    "tiff": _encode(_sample_image(), "TIFF"),
    "tiff_lzw": _encode(_sample_image("RGBA"), "TIFF", compression="tiff_lzw"),
    "bmp": _encode(_sample_image(), "BMP"),
}
PNG = SEEDS["png"]


@st.composite
def mutated(draw, seed: bytes, header: int | None = None) -> bytes:
    """``seed`` with a few random edits: flipped, overwritten, inserted or deleted bytes,
    a field set to a huge or zero value, a truncation. ``header``: edit only the first
    ``header`` bytes (truncations may still cut anywhere)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        span = min(len(data), header or len(data))
        if span == 0:
            break
        at = draw(st.integers(0, span - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "field", "truncate"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "field":  # a width, height, count or length set to an extreme value
            fmt = draw(st.sampled_from([">I", "<I", ">H", "<H", "<Q"]))
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                                          0xFFFFFFFFFFFFFFFF, 100_000]))
            value &= (1 << (8 * struct.calcsize(fmt))) - 1
            data[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)
        else:
            del data[at:]
    return bytes(data)


def _data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


# -- 1. the OpenAI request body ------------------------------------------------------------


def _check_parse(raw: bytes) -> ChatRequest | None:
    """The property of parse_chat_request: a checked request or a 4xx ApiError."""
    try:
        req = parse_chat_request(raw, MODEL, MAX_PIXELS)
    except ApiError as e:
        assert 400 <= e.status < 500, (e.status, e.message)
        assert e.message and isinstance(e.body()["error"]["message"], str)
        json.dumps(e.body())  # the error body must be serialisable
        return None
    # A request that passed is one the pipeline can run.
    assert req.model == MODEL and req.messages and req.messages[-1]["role"] == "user"
    n_parts = sum(1 for m in req.messages if m["role"] == "user"
                  for p in m["content"] if p["type"] == "image")
    assert n_parts == len(req.images)
    assert all(im.mode == "RGB" and im.width * im.height <= MAX_PIXELS for im in req.images)
    assert req.max_tokens is None or (type(req.max_tokens) is int and req.max_tokens >= 1)
    assert 0.0 <= req.temperature <= 2.0 and 0.0 < req.top_p <= 1.0
    assert req.seed is None or type(req.seed) is int
    assert all(isinstance(s, str) and s for s in req.stop) and len(req.stop) <= 4
    return req


@fuzz(300)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_request_or_a_4xx(raw):
    # Protects: a body that is not JSON, not UTF-8, or truncated is a 400, not a 500.
    _check_parse(raw)


@fuzz(300)
@given(json_values)
def test_any_json_value_is_a_request_or_a_4xx(value):
    # Protects: a JSON body of the wrong shape (array, number, nested garbage) is a 400.
    _check_parse(json.dumps(value).encode())


# Near-valid bodies: every field either a value of the right kind or anything at all.
def _or_garbage(valid):
    return st.one_of(valid, json_values)


image_urls = st.one_of(
    st.just(_data_url(PNG)),
    st.sampled_from([_data_url(SEEDS["jpeg"], "image/jpeg"), _data_url(PNG, ""),
                     "http://127.0.0.1/x.png", "https://example.com/x.png",
                     "data:image/png;base64,", "data:,", "data:image/png,abc",
                     "data:text/plain;base64,aGk=", "file:///etc/passwd"]),
    mutated(_data_url(PNG).encode()).map(lambda b: b.decode("latin-1")),
    st.text(max_size=40),
)
content_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _or_garbage(tricky_text)}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.one_of(
                               st.fixed_dictionaries({"url": image_urls},
                                                     optional={"detail": json_values}),
                               image_urls, json_values)}),
    st.dictionaries(st.sampled_from(["type", "text", "image_url"]), json_values, max_size=3),
    json_values,
)
messages = st.fixed_dictionaries(
    {"role": _or_garbage(st.sampled_from(["system", "developer", "user", "assistant",
                                          "tool", "User"]))},
    optional={"content": st.one_of(tricky_text, st.lists(content_parts, max_size=3),
                                   json_values),
              "name": json_values})
numbers = st.one_of(st.integers(-5, 5), st.floats(-3, 3), st.floats(), st.integers())
requests = st.fixed_dictionaries(
    {"model": _or_garbage(st.just(MODEL)),
     "messages": st.one_of(st.lists(messages, min_size=1, max_size=3), json_values)},
    optional={
        "max_tokens": _or_garbage(st.integers(-2, 10**12)),
        "max_completion_tokens": _or_garbage(st.integers(-2, 64)),
        "temperature": _or_garbage(numbers), "top_p": _or_garbage(numbers),
        "seed": _or_garbage(st.integers(-2**80, 2**80)),
        "stop": _or_garbage(st.one_of(tricky_text, st.lists(tricky_text, max_size=6))),
        "stream": _or_garbage(st.booleans()),
        "stream_options": _or_garbage(st.fixed_dictionaries(
            {}, optional={"include_usage": _or_garbage(st.booleans())})),
        "response_format": _or_garbage(st.one_of(
            st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object",
                                                            "json_schema", "xml"])}),
            st.fixed_dictionaries(
                {"type": st.just("json_schema"),
                 "json_schema": _or_garbage(st.fixed_dictionaries(
                     {"name": _or_garbage(st.just("answer"))},
                     optional={"strict": _or_garbage(st.booleans()),
                               "schema": _or_garbage(st.fixed_dictionaries(
                                   {"type": st.sampled_from(["object", "string", "array",
                                                             "integer", "nonsense"])},
                                   optional={"properties": json_values,
                                             "required": json_values,
                                             "enum": json_values,
                                             "items": json_values}))}))}))),
        "n": _or_garbage(st.integers(0, 3)),
        "frequency_penalty": json_values, "logprobs": json_values, "user": json_values,
    })


@fuzz(400)
@given(requests)
def test_near_valid_requests_are_a_request_or_a_4xx(body):
    # Protects: every field of the OpenAI body, with any type in it, gives a 400 naming
    # the field or a checked request; none of them reaches the worker as a crash.
    _check_parse(json.dumps(body).encode())


# -- 2. data URLs ------------------------------------------------------------------------------

b64_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n",
                   max_size=60)
data_urls = st.one_of(
    # well-formed prefix, payload: a valid image, random bytes, or base64-ish text
    st.tuples(st.sampled_from(["image/png", "image/jpeg", "image/webp", "", "image/",
                               "text/html", "image/png;charset=utf-8", "IMAGE/PNG",
                               "application/octet-stream"]),
              st.one_of(st.sampled_from(list(SEEDS.values())).map(
                  lambda b: base64.b64encode(b).decode()),
                  st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
                  b64_text))
    .map(lambda t: f"data:{t[0]};base64,{t[1]}"),
    # a valid URL with a few characters changed anywhere (prefix included)
    st.sampled_from([_data_url(b) for b in SEEDS.values()]).flatmap(
        lambda u: mutated(u.encode())).map(lambda b: b.decode("latin-1")),
    st.text(max_size=60),
)


@fuzz(300)
@given(data_urls)
def test_data_urls_are_an_image_or_a_4xx(url):
    # Protects: _decode_data_url and the image path behind it (media type, base64,
    # decoding under max_pixels): a bad URL is a 400 naming the content part.
    where = "messages[0].content[0]"
    try:
        data = _decode_data_url(url, where)
    except ApiError as e:
        assert 400 <= e.status < 500 and where in e.message
    else:
        assert isinstance(data, bytes)
    try:
        img = _image_from_part({"type": "image_url", "image_url": {"url": url}}, where,
                               MAX_PIXELS, None)
    except ApiError as e:
        assert 400 <= e.status < 500 and where in e.message
    else:
        assert img.mode == "RGB" and img.width * img.height <= MAX_PIXELS


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (its pixel data is 1x1's)."""
    import zlib
    data = bytearray(PNG)
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@fuzz(50)
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_a_huge_declared_size_is_refused_from_the_header(w, h):
    # Protects: a decompression bomb (a small file declaring billions of pixels) is
    # refused from its header, before any pixel is decoded (the deadline would catch a
    # decode attempt of that size).
    assume(w * h > MAX_PIXELS)
    for load in (lambda d: load_image(d, MAX_PIXELS),
                 lambda d: _image_from_part({"image_url": {"url": _data_url(d)}}, "m",
                                            MAX_PIXELS, None)):
        with pytest.raises((ImageError, ApiError), match="over the limit|too large"):
            load(_png_claiming(w, h))


# -- 3. image bytes ------------------------------------------------------------------------------


def _check_image(data: bytes) -> None:
    try:
        img = load_image(data, max_pixels=MAX_PIXELS)
    except ImageError as e:
        assert str(e)
        return
    assert img.mode == "RGB" and 0 < img.width * img.height <= MAX_PIXELS
    img.tobytes()  # the pixels are there


@pytest.mark.parametrize("fmt", sorted(SEEDS))
@fuzz(120)
@given(data=st.data())
def test_mutated_images_are_rgb_or_an_image_error(fmt, data):
    # Protects: load_image on corrupt files of each format (bad headers, chunks, lengths,
    # truncations, huge dimensions): an RGB image within max_pixels or an ImageError;
    # never Pillow's own exception types, never a hang.
    seed = SEEDS[fmt]
    _check_image(data.draw(st.one_of(mutated(seed), mutated(seed, header=64)), label="bytes"))


def test_the_seed_images_load():
    for data in SEEDS.values():
        assert load_image(data).size == (12, 9)


# -- 4. chat templates' inputs ------------------------------------------------------------------

from llava_edge.runtimes.prompt import render, user_message  # noqa: E402
from llava_edge.templates import IMAGE_TOKEN, TEMPLATES  # noqa: E402

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
parts = st.one_of(st.just({"type": "image"}),
                  st.fixed_dictionaries({"type": st.just("text"), "text": tricky_text}))
hf_messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant"]),
    "content": st.one_of(tricky_text, st.lists(parts, max_size=4))}), min_size=1, max_size=5)
# Shapes a caller of the Python API may pass by mistake.
bad_messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": json_values, "content": json_values}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                           "content": st.lists(json_values, max_size=3)}),
    json_values), max_size=4)


def _image_parts(msgs: list[dict], roles: tuple[str, ...] = ("user",)) -> int:
    """Image parts of the messages of ``roles``. Templates always render a user message's
    images; a system or assistant message's images are rendered by some (ChatML) and
    dropped by others (LLaVA's own formats drop a system message that is not first);
    messages_ids then refuses a count that differs from the images given."""
    return sum(1 for m in msgs if m["role"] in roles and isinstance(m["content"], list)
               for p in m["content"] if p["type"] == "image")


def _markers_in_text(msgs: list[dict]) -> int:
    def text(c):
        return c if isinstance(c, str) else "".join(p.get("text", "") for p in c)
    return sum(text(m["content"]).count(IMAGE_TOKEN) for m in msgs)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@fuzz(150)
@given(msgs=hf_messages, gen=st.booleans())
def test_templates_render_any_conversation(name, msgs, gen):
    # Protects: every built-in template over any conversation in the Hugging Face shape
    # (any order of roles, markers and special tokens in user text, unicode, empty
    # strings): a string holding every image part's marker, or a PromptError.
    try:
        text = render(TEMPLATES[name].jinja, msgs, SPECIAL, add_generation_prompt=gen)
    except PromptError:
        return
    assert isinstance(text, str)
    # Every image part is a marker; text may add more (messages_ids counts the tokens
    # and refuses a mismatch with a PromptError).
    assert text.count(IMAGE_TOKEN) >= _image_parts(msgs)
    if not _markers_in_text(msgs) and "<im" not in json.dumps(msgs):
        assert (_image_parts(msgs) <= text.count(IMAGE_TOKEN)
                <= _image_parts(msgs, ("user", "system", "assistant")))


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@fuzz(100)
@given(msgs=bad_messages)
def test_templates_refuse_malformed_messages_with_a_prompt_error(name, msgs):
    # Protects: a malformed message list (content a number, parts of any shape, roles
    # that are not strings) is a PromptError from render, not a Jinja or TypeError.
    try:
        assert isinstance(render(TEMPLATES[name].jinja, msgs, SPECIAL), str)
    except PromptError:
        pass


@fuzz(300)
@given(prompt=tricky_text, n_images=st.integers(0, 4))
def test_user_message_places_images_or_refuses(prompt, n_images):
    # Protects: the marker count check of user_message (markers must match images).
    try:
        msg = user_message(prompt, n_images)
    except PromptError:
        return
    assert _image_parts([msg]) + msg_markers(msg) == n_images


def msg_markers(msg: dict) -> int:
    return msg["content"].count(IMAGE_TOKEN) if isinstance(msg["content"], str) else 0


# -- 5. the manifest ------------------------------------------------------------------------------

import dataclasses  # noqa: E402

from llava_edge.bundle import MANIFEST_NAME, open_bundle  # noqa: E402
from llava_edge.manifest import (AnyresSpec, FileEntry, Manifest, Source,  # noqa: E402
                                 TensorrtEngine)
from manifests import make_manifest  # noqa: E402


def _full_manifest() -> dict:
    """A valid manifest with every section filled (anyres, TensorRT, mmproj, files)."""
    m = make_manifest(vision=("fp32", "int8"), llm=("F16", "Q4_K_M"), mmproj=True)
    m = dataclasses.replace(
        m, source=Source(checkpoint="c", preset="tiny", vision="clip", text="llama"),
        tensorrt=(TensorrtEngine(precision="fp16", file="vision.engine", sidecar="v.json"),),
        anyres=AnyresSpec(pinpoints=((64, 128), (128, 64)), tile_size=64, patch_size=8,
                          strategy="default", num_additional_image_tokens=1,
                          newline_file="image_newline.npy"),
        parity={"cosine": 0.99}, tools={"llava_edge": "0"}, created="2026-01-01")
    files = {name: FileEntry(size=10, sha256="0" * 64) for name in m.referenced_files()}
    return dataclasses.replace(m, files=files).to_dict()


VALID_MANIFEST = _full_manifest()


@st.composite
def mutated_json(draw, value, depth: int = 0):
    """``value`` with one random change somewhere inside: a key dropped or added, a value
    replaced by any JSON value (or a string / number of the same kind)."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)) and depth < 6:
        key = draw(st.sampled_from(sorted(value)))
        out = dict(value)
        op = draw(st.sampled_from(["recurse", "recurse", "drop", "add"]))
        if op == "drop":
            del out[key]
        elif op == "add":
            out[draw(st.text(max_size=6))] = draw(json_values)
        else:
            out[key] = draw(mutated_json(value[key], depth + 1))
        return out
    if isinstance(value, list) and value and draw(st.integers(0, 3)) and depth < 6:
        i = draw(st.integers(0, len(value) - 1))
        out = list(value)
        op = draw(st.sampled_from(["recurse", "recurse", "drop", "add"]))
        if op == "drop":
            del out[i]
        elif op == "add":
            out.insert(i, draw(json_values))
        else:
            out[i] = draw(mutated_json(value[i], depth + 1))
        return out
    return draw(st.one_of(json_values, st.sampled_from(
        [0, -1, 1, 2**63, 1.5, float("nan"), float("inf"), -0.0, "", "x", True, None, [],
         {}, [[64, 64]], "0" * 64])))


@fuzz(400)
@given(st.integers(1, 4).flatmap(
    lambda n: st.lists(st.just(None), min_size=n, max_size=n)).flatmap(
    lambda ns: _chain(VALID_MANIFEST, len(ns))))
def test_mutated_manifests_are_a_manifest_or_a_bundle_error(data):
    # Protects: Manifest.from_dict and check_consistent over any change to a valid
    # manifest: a Manifest (that round-trips) or a BundleError naming the field; never a
    # KeyError / TypeError / AttributeError.
    try:
        m = Manifest.from_dict(data)
        m.check_consistent()
        m.referenced_files(), m.exact_pair, m.vision_entry(), m.llm_entry()
    except BundleError as e:
        assert str(e)
        return
    # Round trip = the same JSON written again (compared as text: a NaN in a reported
    # figure, e.g. tools or parity, is kept as NaN and never equals itself).
    again = Manifest.from_dict(m.to_dict())
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(m.to_dict(), sort_keys=True)
    # Floats the runtime computes with are numbers, and the pixel statistics usable.
    r = m.preprocess
    assert all(x == x and abs(x) != float("inf") for x in (*r.image_mean, *r.image_std,
                                                            r.rescale_factor))
    assert all(x > 0 for x in r.image_std)


def _chain(value, n: int):
    s = st.just(value)
    for _ in range(n):
        s = s.flatmap(mutated_json)
    return s


_BUNDLE_DIR = Path(tempfile.mkdtemp(prefix="llava-edge-fuzz-"))


@fuzz(150)
@given(mutated(json.dumps(VALID_MANIFEST, indent=1).encode()))
def test_mutated_manifest_files_are_refused_with_a_bundle_error(raw):
    # Protects: open_bundle on a manifest.json with corrupt bytes (invalid JSON, bad
    # UTF-8, changed values): a BundleError naming the manifest, never a crash.
    (_BUNDLE_DIR / MANIFEST_NAME).write_bytes(raw)
    with pytest.raises(BundleError):
        open_bundle(_BUNDLE_DIR, verify="none")  # the files are not there: always refused


# -- 6. GGUF headers and ONNX graphs --------------------------------------------------------------

from llava_edge.runtimes.gguf_check import (GGUFFormatError, GGUFInfo,  # noqa: E402
                                            check_gguf)
from llava_edge.runtimes.llama_cpp_vocab import HFRules  # noqa: E402


def _small_gguf() -> bytes:
    """A small valid GGUF: metadata of every kind (strings, ints, floats, bools, arrays)
    and three tensors, as llama.cpp's files hold them."""
    import numpy as np
    from gguf import GGUFWriter

    path = _BUNDLE_DIR / "seed.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_string("general.name", "fuzz")
    w.add_uint32("llama.embedding_length", 8)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "a", "b"])
    w.add_array("tokenizer.ggml.scores", [0.0, 0.0, 0.0, -1.0, -2.0])
    w.add_array("tokenizer.ggml.token_type", [2, 3, 3, 1, 1])
    w.add_array("fuzz.many", list(range(100)))  # summarised, not kept
    w.add_tensor("token_embd.weight", np.ones((5, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    w.add_tensor("output.weight", np.zeros((5, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


GGUF_SEED = _small_gguf()
_GGUF_PATH = _BUNDLE_DIR / "fuzz.gguf"


def _header_size(data: bytes) -> int:
    info = check_gguf(_BUNDLE_DIR / "seed.gguf")
    return info.data_offset


@fuzz(400)
@given(mutated(GGUF_SEED, header=_header_size(GGUF_SEED)))
def test_mutated_gguf_headers_are_info_or_a_format_error(raw):
    # Protects: check_gguf, which stands between a corrupt file and llama.cpp (which
    # may abort the process): magic, version, counts, metadata keys / types / arrays,
    # tensor table, truncations: a GGUFInfo whose tensors fit in the file, or a
    # GGUFFormatError naming the file.
    _GGUF_PATH.write_bytes(raw)
    try:
        info = check_gguf(_GGUF_PATH, architectures=("llama", "qwen2"))
    except GGUFFormatError as e:
        assert str(_GGUF_PATH) in str(e)
        return
    assert isinstance(info, GGUFInfo) and info.required_size <= info.file_size == len(raw)
    assert info.data_offset % info.alignment == 0
    HFRules.from_metadata(info.metadata)  # what the loaders read from it next


def test_a_deeply_nested_gguf_array_is_a_format_error():
    # Found by reading the recursion the fuzzer exercises: arrays of arrays, nested
    # deeper than Python's stack, must be a GGUFFormatError, not a RecursionError.
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    key = struct.pack("<Q", 1) + b"k"
    nested = struct.pack("<I", 9) + (struct.pack("<IQ", 9, 1) * 5000) + struct.pack("<IQ", 4, 0)
    _GGUF_PATH.write_bytes(header + key + nested)
    with pytest.raises(GGUFFormatError):
        check_gguf(_GGUF_PATH)


def _small_onnx() -> bytes:
    """A tiny vision-graph stand-in: pixel_values [B, 3, 4, 4] -> image_embeds [B, 4, 12]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["B", 3, 4, 4])
    y = helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["B", 4, 12])
    w = numpy_helper.from_array(np.eye(12, dtype=np.float32), "proj")
    shape = numpy_helper.from_array(np.array([0, 4, 12], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["pixel_values", "shape"], ["tokens"]),
         helper.make_node("MatMul", ["tokens", "proj"], ["image_embeds"])],
        "vision", [x], [y], [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


ONNX_SEED = _small_onnx()


@fuzz(60, deadline_ms=5000)
@given(mutated(ONNX_SEED))
def test_mutated_onnx_graphs_are_a_session_or_a_typed_error(raw):
    # Protects: OnnxVisionEncoder's load on a corrupt graph: ONNX Runtime's own
    # exceptions come out as a LlavaEdgeError naming the file; a graph that loads can
    # be run or refuses the input with a typed error.
    import numpy as np

    from llava_edge.runtimes.vision_onnx import OnnxVisionEncoder

    path = _BUNDLE_DIR / "fuzz.onnx"
    path.write_bytes(raw)
    try:
        enc = OnnxVisionEncoder(path, providers="cpu", n_threads=1)
    except LlavaEdgeError as e:
        assert str(path) in str(e)
        return
    try:
        out = enc.encode(np.zeros((1, 3, 4, 4), np.float32))
    except LlavaEdgeError:
        return
    assert out.dtype == np.float32
