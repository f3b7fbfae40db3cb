"""Answers a program can parse: ``json_schema=`` and ``choices=`` as grammars.

    answer = model.ask(frame, "Describe the scene.", json_schema={
        "type": "object", "required": ["people", "indoors"],
        "properties": {"people": {"type": "integer"}, "indoors": {"type": "boolean"}}})
    answer.json()          # {"people": 2, "indoors": false}
    model.ask(frame, "Is the door open?", choices=["yes", "no"]).text   # "yes" or "no"

Both become a GBNF grammar that llama.cpp's grammar engine enforces token by token
(:class:`~llava_edge.runtimes.llama_cpp_lm.GrammarConstraint`): a JSON schema through
llama-cpp-python's converter (``llama_cpp.llama_grammar``'s ``SchemaConverter``, a port of
llama.cpp's ``json_schema_to_grammar.py``, with two fixes: literals escaped, no raw
control characters in strings), a list of choices as an alternation of the
exact strings. The sampler masks the logits with it before its usual filters, so greedy
and sampled answers alike stay inside the grammar, and generation ends when the grammar
is complete (llama.cpp allows end-of-generation tokens only then).

What the converter does with a schema (llama-cpp-python 0.3.36): objects (properties,
required, additionalProperties), arrays (items, prefixItems, minItems, maxItems),
strings (minLength, maxLength, pattern, formats date/time/date-time/uuid), integer,
number, boolean, null, enum, const, anyOf/oneOf, allOf of objects, local ``$ref``.
It *ignores* numeric bounds (minimum, maximum, multipleOf), uniqueItems, and string
formats it does not know: the answer then has the right shape but may break those.
A schema it cannot read (an unknown type, a remote ``$ref``, a malformed value) raises
:class:`StructuredOutputError` naming it. Whitespace is at most one space between tokens,
numbers at most 16 digits per part, so a schema whose strings have a ``maxLength`` and
whose arrays have a ``maxItems`` has answers of bounded length.

Stop strings: a constrained answer ends when its grammar is complete. The template's
stop strings (which catch a model that writes its end marker as text) are not applied,
since they could cut a JSON string that contains them; user ``stop`` strings together
with a schema or choices are refused.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from llava_edge.errors import StructuredOutputError

__all__ = ["choices_gbnf", "constraint_for", "schema_gbnf"]

# llama-cpp-python's converter lets raw control characters into JSON strings, which
# json.loads (and RFC 8259) refuse; llama.cpp's own converter has since excluded them.
_LOOSE_CHAR = 'char ::= [^"\\\\] | '
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] | '
_GBNF_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


def schema_gbnf(json_schema: Any) -> str:
    """The GBNF grammar of ``json_schema``: a dict, a JSON string, or True for any JSON
    object (OpenAI's ``json_object``)."""
    schema = _schema_dict(json_schema)
    try:
        gbnf = _convert(schema)
    except RecursionError:
        raise StructuredOutputError("the JSON schema is nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - the converter asserts and raises assorted types
        raise StructuredOutputError(f"the JSON schema cannot be turned into a grammar "
                                    f"({type(e).__name__}: {e})") from None
    return _strict_json_strings(gbnf)


def _schema_dict(json_schema: Any) -> dict:
    if json_schema is True:
        return {"type": "object"}
    if isinstance(json_schema, (str, bytes)):
        try:
            json_schema = json.loads(json_schema)
        except ValueError as e:
            raise StructuredOutputError(f"the JSON schema is not valid JSON ({e})") from None
    if not isinstance(json_schema, dict):
        raise StructuredOutputError(f"a JSON schema must be an object (a dict), got "
                                    f"{type(json_schema).__name__}")
    return json_schema


def _convert(schema: dict) -> str:
    """``llama_cpp.llama_grammar.json_schema_to_gbnf`` with its literals escaped right.

    Its ``_format_literal`` escapes quotes and newlines but not backslashes, so the JSON
    text of an enum value, a const or a property name holding ``\\`` or ``"`` (or any
    non-ASCII character, which ``json.dumps`` writes as ``\\uXXXX``) came out as another
    string or as a grammar llama.cpp cannot parse. The rest is the converter's own code,
    called as ``json_schema_to_gbnf`` calls it (remote ``$ref`` not fetched)."""
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        def _format_literal(self, literal: str) -> str:
            return _gbnf_literal(literal)

    converter = Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.visit(converter.resolve_refs(schema, "stdin"), "")
    return converter.format_grammar()


def _strict_json_strings(gbnf: str) -> str:
    lines = gbnf.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("char ::= "):
            if not line.startswith(_LOOSE_CHAR):  # the converter changed: say so in tests
                raise StructuredOutputError(f"unexpected string rule from the JSON schema "
                                            f"converter: {line}")
            lines[i] = _STRICT_CHAR + line[len(_LOOSE_CHAR):]
    return "\n".join(lines)


def choices_gbnf(choices: Sequence[str]) -> str:
    """A grammar whose only sentences are the exact strings of ``choices``."""
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        raise StructuredOutputError("choices must be a list of strings")
    if not choices:
        raise StructuredOutputError("choices must not be empty")
    for c in choices:
        if not isinstance(c, str) or not c:
            raise StructuredOutputError(f"each choice must be a non-empty string, got {c!r}")
        if c != c.strip():  # answers are stripped: " yes" could never come back as given
            raise StructuredOutputError(f"a choice must not start or end with whitespace, "
                                        f"got {c!r}")
    return "root ::= " + " | ".join(_gbnf_literal(c) for c in dict.fromkeys(choices))


def _gbnf_literal(text: str) -> str:
    def escape(m: re.Match) -> str:
        c = m.group(0)
        return _GBNF_ESCAPES.get(c) or f"\\x{ord(c):02X}"

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


def constraint_for(llm, json_schema: Any = None, choices: Sequence[str] | None = None,
                   stop: Sequence[str] = ()):
    """``(constraint, kind)`` for a request: a grammar constraint on ``llm`` and
    ``"json"`` / ``"choices"``, or ``(None, None)`` when neither option is given."""
    if json_schema is None and choices is None:
        return None, None
    if json_schema is not None and choices is not None:
        raise StructuredOutputError("give json_schema or choices, not both")
    if json_schema is False:
        raise StructuredOutputError("json_schema=False: leave it out (None) for free text")
    if stop:
        raise StructuredOutputError("stop strings cannot be combined with json_schema or "
                                    "choices (they could cut the answer mid-value; the "
                                    "grammar ends it)")
    kind = "json" if json_schema is not None else "choices"
    gbnf = schema_gbnf(json_schema) if kind == "json" else choices_gbnf(choices)
    make = getattr(llm, "grammar", None)
    if make is None:
        raise StructuredOutputError(f"{type(llm).__name__} cannot constrain decoding (no "
                                    "grammar support); use the llama.cpp backend")
    return make(gbnf), kind
