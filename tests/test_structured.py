"""``json_schema=`` and ``choices=``: llama.cpp's grammar engine constrains what the tiny
bundle's random model (it samples all over its vocabulary, the hard case) may say; the
answers parse and validate. Also the OpenAI server's ``response_format``."""

from __future__ import annotations

import http.client
import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llava_edge.errors import StructuredOutputError
from llava_edge.runtimes.pipeline import LlavaEdge
from llava_edge.runtimes.structured import choices_gbnf, schema_gbnf

PROMPT = "Describe the picture."


@pytest.fixture(scope="module")
def model(tiny_bundle):
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1) as m:
        yield m


# -- random schemas, and a bound on their answers' length ------------------------------------

_TEXT = st.text(alphabet=st.sampled_from('ab é"\\\n/'), min_size=0, max_size=4)
_NAMES = st.text(alphabet=st.sampled_from('abcxyz_ "\\é'), min_size=1, max_size=5)


def _leaf():
    return st.one_of(
        st.builds(lambda lo, hi: {"type": "string", "minLength": lo, "maxLength": max(lo, hi)},
                  st.integers(0, 1), st.integers(0, 6)),
        st.just({"type": "integer"}),
        st.just({"type": "number"}),
        st.just({"type": "boolean"}),
        st.builds(lambda vs: {"type": "string", "enum": vs},
                  st.lists(_TEXT, min_size=1, max_size=3, unique=True)))


def _array(items):
    return st.builds(lambda it, n: {"type": "array", "items": it, "maxItems": n},
                     items, st.integers(0, 3))


def _object(values):
    return st.dictionaries(_NAMES, values, min_size=1, max_size=3).map(
        lambda props: {"type": "object", "properties": props, "required": list(props)})


_VALUE = st.one_of(_leaf(), _array(_leaf()))
SCHEMAS = _object(st.one_of(_VALUE, _object(_VALUE)))  # nested one level


def _max_bytes(schema: dict) -> int:
    """The longest answer the converter's grammar allows for ``schema``: at most one space
    after each token, 16 digits per part of a number, 6 bytes per string character
    (a \\uXXXX escape)."""
    if "enum" in schema:
        return max(len(json.dumps(v).encode()) for v in schema["enum"]) + 1
    t = schema["type"]
    if t == "string":
        return 2 + 6 * schema["maxLength"] + 1
    if t == "integer":
        return 1 + 16 + 1
    if t == "number":
        return (1 + 16) + (1 + 16) + (2 + 16) + 1
    if t == "boolean":
        return 5 + 1
    if t == "array":
        return 2 + 2 + schema["maxItems"] * (_max_bytes(schema["items"]) + 2)
    return 2 + 2 + sum(len(json.dumps(k).encode()) + 4 + _max_bytes(v) + 1
                       for k, v in schema["properties"].items())


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(schema=SCHEMAS, seed=st.integers(0, 2**31 - 1))
def test_every_answer_to_a_random_schema_parses_and_validates(model, temperature, schema,
                                                               seed):
    # Every token adds at least one byte, so this many tokens always complete the answer.
    budget = _max_bytes(schema) + 1
    answer = model.ask(None, PROMPT, json_schema=schema, temperature=temperature, seed=seed,
                       max_new_tokens=budget)
    assert answer.stop_reason == "eos", (answer.text, answer.n_tokens, budget)
    value = answer.json()
    jsonschema.validate(value, schema)
    assert json.loads(answer.text) == value
    assert answer.timings.constrain_ms > 0


def test_a_schema_as_json_text_and_any_object():
    assert schema_gbnf('{"type": "boolean"}') == schema_gbnf({"type": "boolean"})
    assert "root ::=" in schema_gbnf(True)


def test_any_json_object(model):
    for seed in range(4):
        a = model.ask(None, PROMPT, json_schema=True, temperature=1.0, seed=seed,
                      max_new_tokens=400)
        if a.stop_reason == "eos":
            assert isinstance(a.json(), dict)
        else:  # an unbounded grammar: a random model may ramble on
            with pytest.raises(StructuredOutputError, match="max_new_tokens=400"):
                a.json()


# -- choices ---------------------------------------------------------------------------------

CHOICES = ["yes", "no", "maybe", 'a "quoted"\\ one', "two\nlines", "é"]


@pytest.mark.parametrize("seed", range(8))
def test_a_sampled_answer_is_one_of_the_choices(model, seed):
    a = model.ask(None, PROMPT, choices=CHOICES, temperature=1.0, seed=seed)
    assert a.stop_reason == "eos"
    assert a.text in CHOICES and a.choice() == a.text


def test_greedy_choices_are_deterministic(model):
    first = model.ask(None, PROMPT, choices=["red", "green", "blue"])
    again = model.ask(None, PROMPT, choices=["red", "green", "blue"])
    assert first.text in ("red", "green", "blue") and first.tokens == again.tokens


def test_a_stream_and_a_chat_turn_take_the_options(model):
    s = model.stream(None, PROMPT, choices=["up", "down"], temperature=1.0, seed=3)
    assert "".join(s) in ("up", "down") and s.answer.text in ("up", "down")
    chat = model.chat()
    a = chat.ask(PROMPT, json_schema={"type": "object", "required": ["ok"],
                                      "properties": {"ok": {"type": "boolean"}}})
    assert isinstance(a.json()["ok"], bool)
    assert chat.messages[-1]["content"] == a.text
    a = model.ask_messages([{"role": "user", "content": PROMPT}], choices=["x", "y"])
    assert a.text in ("x", "y")


# -- free text is unchanged --------------------------------------------------------------------

def test_a_free_text_answer_is_unchanged(model):
    plain = model.ask(None, PROMPT, max_new_tokens=24)
    again = model.ask(None, PROMPT, max_new_tokens=24, json_schema=None, choices=None)
    assert again.tokens == plain.tokens and again.text == plain.text
    assert again.timings.constrain_ms == 0.0 and again.structured is None


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"json_schema": {"type": "boolean"}, "choices": ["a"]}, "not both"),
    ({"json_schema": {"type": "nonsense"}}, "Unrecognized schema"),
    ({"json_schema": {"type": "object", "properties": ["a"]}}, "cannot be turned"),
    ({"json_schema": "{not json"}, "not valid JSON"),
    ({"json_schema": ["a"]}, "must be an object"),
    ({"json_schema": {"$ref": "https://example.com/s.json"}}, "remote"),
    ({"choices": []}, "must not be empty"),
    ({"choices": "yes"}, "list of strings"),
    ({"choices": ["ok", ""]}, "non-empty"),
    ({"choices": [" ok"]}, "whitespace"),
    ({"choices": ["a"], "stop": ["."]}, "stop strings"),
])
def test_options_that_cannot_constrain_are_refused(model, kwargs, message):
    with pytest.raises(StructuredOutputError, match=message):
        model.ask(None, PROMPT, **kwargs)
    assert model.ask(None, PROMPT, choices=["ok"]).text == "ok"  # still usable


def test_an_invalid_grammar_names_llama_cpp_s_complaint(model):
    with pytest.raises(StructuredOutputError, match="could not parse the grammar"):
        model.llm.grammar('root ::= "a" undefined-rule')
    with pytest.raises(StructuredOutputError, match="empty"):
        model.llm.grammar("  ")


def test_a_cut_answer_says_so(model):
    schema = {"type": "object", "required": ["words"],
              "properties": {"words": {"type": "string", "minLength": 30}}}
    a = model.ask(None, PROMPT, json_schema=schema, max_new_tokens=5)
    assert a.stop_reason == "length" and a.n_tokens == 5
    with pytest.raises(StructuredOutputError,
                       match="cut at max_new_tokens=5 before the JSON was complete"):
        a.json()
    a = model.ask(None, PROMPT, choices=["a long choice here"], max_new_tokens=2)
    with pytest.raises(StructuredOutputError, match="max_new_tokens=2 before the choice"):
        a.choice()


def test_choices_grammar_escapes():
    assert choices_gbnf(['a"b', "c\\d", "e\nf", "x", "x"]) == \
        'root ::= "a\\"b" | "c\\\\d" | "e\\nf" | "x"'


# -- the OpenAI server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_bundle):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from llava_edge.runtimes.serve.app import ServeConfig, create_app
    from uvicorn_thread import serving
    from llava_edge.runtimes.serve.worker import Worker

    worker = Worker(LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                                   n_threads=1), max_queue=2).start()
    with serving(create_app(worker, ServeConfig(model_name="tiny"))) as port:
        yield port
    worker.close()


def _post(port: int, body: dict) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read().decode()
    finally:
        conn.close()
    if body.get("stream") and resp.status == 200:
        chunks = [json.loads(line[6:]) for line in raw.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        return resp.status, chunks
    return resp.status, json.loads(raw)


SERVER_SCHEMA = {"type": "object", "required": ["colour", "count"],
                 "properties": {"colour": {"enum": ["red", "green"]},
                                "count": {"type": "integer"}}}
FORMATS = [{"type": "json_object"},
           {"type": "json_schema", "json_schema": {"name": "scene", "schema": SERVER_SCHEMA,
                                                   "strict": True}}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fmt", FORMATS, ids=["json_object", "json_schema"])
def test_server_response_format_gives_valid_json(server, fmt, stream):
    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}],
            "response_format": fmt, "temperature": 0, "max_tokens": 300, "stream": stream}
    status, got = _post(server, body)
    assert status == 200, got
    if stream:
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got
                       if c["choices"])
        finish = [c["choices"][0]["finish_reason"] for c in got if c["choices"]][-1]
    else:
        text, finish = got["choices"][0]["message"]["content"], got["choices"][0][
            "finish_reason"]
    if finish == "length":  # json_object is unbounded: a random model may not close it
        assert fmt["type"] == "json_object"
        return
    value = json.loads(text)
    assert isinstance(value, dict)
    if fmt["type"] == "json_schema":
        jsonschema.validate(value, SERVER_SCHEMA)


def test_openai_client_json_schema(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="x",
                           max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user",
                                                                 "content": PROMPT}],
                                       response_format=FORMATS[1], temperature=1.0, seed=5)
    jsonschema.validate(json.loads(r.choices[0].message.content), SERVER_SCHEMA)


@pytest.mark.parametrize("fmt", [
    "json", {"type": "yaml"}, {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"schema": SERVER_SCHEMA}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}},
])
def test_server_malformed_response_format_is_a_400_naming_it(server, fmt):
    status, got = _post(server, {"model": "tiny", "response_format": fmt,
                                 "messages": [{"role": "user", "content": PROMPT}]})
    assert status == 400
    assert got["error"]["param"] == "response_format"
    assert "response_format" in got["error"]["message"]


def test_server_refuses_stop_with_a_json_format(server):
    status, got = _post(server, {"model": "tiny", "response_format": FORMATS[0], "stop": "x",
                                 "messages": [{"role": "user", "content": PROMPT}]})
    assert status == 400 and got["error"]["param"] == "response_format"
