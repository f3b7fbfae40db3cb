"""A fixed corpus of varied strings for checking that two tokenizers agree.

:func:`corpus_strings` returns the same list every time (well over 500 strings): plain
prose, several scripts and emoji (with ZWJ sequences, flags, skin tones, and decomposed
accents that NFC recombines), whitespace runs (spaces, tabs, newlines, ``\\r\\n``,
leading and trailing), digits and numbers, code, URLs and JSON, punctuation and
contractions, plus strings built around the tokenizer's special tokens (``<image>``,
``</s>``, ``<|im_start|>``, ...) at the start, middle and end, adjacent to text and
whitespace. :func:`corpus_conversations` gives chat messages (with and without images,
multi-turn, system prompts) for rendering through the model's chat template.

Only the standard library is used, with a seeded ``random.Random`` so the corpus does not
change between runs or machines.
"""

from __future__ import annotations

import random
from typing import Sequence

WORDS = (
    "the a an image picture photo shows red green blue yellow purple orange circle square "
    "triangle star large small tiny left right top bottom middle center corner there is are "
    "what which how many color colour shape answer question describe detail count robot "
    "camera frame edge device model token vision language assistant user system hello world "
    "quick brown fox jumps over lazy dog don't can't it's we're they've I'm you'll she'd "
    "naïve café résumé coöperate façade jalapeño über Straße"
).split()

UNICODE_SNIPPETS = (
    "こんにちは世界", "日本語のテキストです。", "中文分词测试：你好，世界！", "한국어 문장입니다",
    "Привет, мир!", "Ελληνικά γράμματα", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया",
    "ภาษาไทย", "Tiếng Việt có dấu", "Ünïcödé ñ ç ø å ß", "e\u0301te\u0301 (decomposed)",
    "A\u030a and \u00c5", "ﬁ ligature ﬀ", "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ", "½ ⅓ ¼ ² ³ µ",
    "∑ ∫ √ ∞ ≠ ≤ ≥ ∈ ∀ ∃", "→ ← ↑ ↓ ⇒ ⇔", "“smart quotes” and ‘single’", "em—dash en–dash…",
    "🙂", "😀😃😄", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "🐶🐱 pets",
    "zero\u200bwidth", "tab\u00a0nbsp", "\ufeffBOM start", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math", "🀄 mahjong",
)

WHITESPACE = (
    " ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", " \n", "\n ",
    " \t \n", "        ", "\n    ", "\t\n\t",
)

CODE = (
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "const add = (a, b) => a + b;",
    "import numpy as np\narr = np.zeros((3, 4), dtype=np.float32)",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    '{"id": 42, "image": "images/000001.png", "conversations": []}',
    "<div class=\"box\"><p>Hello</p></div>",
    "https://example.com/path/to/page?query=1&lang=en#section",
    "/usr/local/bin/python3 -m pip install -e '.[all]'",
    "if __name__ == \"__main__\":\n\tmain()",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }",
    "regex: ^[A-Za-z0-9_.+-]+@[A-Za-z0-9-]+\\.[a-z]{2,}$",
    "a += b; c -= d; e *= f; g /= h; i %= j;",
    "git commit -m \"fix: handle empty input\"",
    "    indented    with    runs    of    spaces",
)

NUMBERS = (
    "0", "7", "42", "123", "2024", "3.14159", "-17", "1e-5", "6.022e23", "1,000,000",
    "00123", "12:30:45", "2024-06-01", "+1 (555) 010-9999", "v1.2.3", "0x1F", "99%",
    "$19.99", "€5,50", "1234567890123", "3/4", "10km", "42nd", "1st 2nd 3rd",
)

PUNCTUATION = (
    "Hello, world!", "Wait... what?!", "(parentheses) [brackets] {braces}", "a-b_c.d",
    "He said: \"yes\".", "it's, it'll, it'd, I've, we're", "#hashtag @mention",
    "semi;colon:colon", "~tilde`backtick^caret", "***bold*** __under__", "--- *** ___",
    "?!?!", "¿Qué? ¡Sí!", "«guillemets»", "a/b\\c|d", "&amp; &lt; &gt;",
)

CHAT_QUESTIONS = (
    "What is in the picture?", "How many shapes are there?", "What color is the circle?",
    "Describe the image in detail.", "Is there a red square on the left?",
    "Which shape is the largest?", "Answer with a single word.",
    "What is the position of the blue triangle?", "Count the stars.",
)


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 14))]
    text = " ".join(words)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + rng.choice(("", ".", "?", "!", ",", ":"))


def corpus_strings(special_tokens: Sequence[str] = (), seed: int = 0) -> list[str]:
    """The corpus: fixed strings, then seeded random combinations, then strings around
    each of ``special_tokens``."""
    rng = random.Random(seed)
    out: list[str] = ["", "a", "A", " a", "a ", "hello", "Hello world", "hello  world"]
    out += list(UNICODE_SNIPPETS) + list(WHITESPACE) + list(CODE) + list(NUMBERS)
    out += list(PUNCTUATION) + list(CHAT_QUESTIONS)

    for _ in range(150):  # prose
        out.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))))
    for _ in range(60):  # prose mixed with other scripts and emoji
        parts = [_sentence(rng), rng.choice(UNICODE_SNIPPETS), _sentence(rng)]
        rng.shuffle(parts)
        out.append(rng.choice((" ", "", "\n")).join(parts))
    for _ in range(60):  # whitespace runs inside, before and after text
        ws = rng.choice(WHITESPACE)
        out.append(rng.choice((
            f"{ws}{_sentence(rng)}", f"{_sentence(rng)}{ws}",
            f"{_sentence(rng)}{ws}{_sentence(rng)}",
            ws.join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))),
        )))
    for _ in range(40):  # numbers in text
        out.append(f"{_sentence(rng)} {rng.choice(NUMBERS)} {rng.choice(WORDS)} "
                   f"{rng.randint(0, 10 ** rng.randint(1, 9))}")
    for _ in range(30):  # code with prose
        out.append(f"{_sentence(rng)}\n```\n{rng.choice(CODE)}\n```")
    for _ in range(20):  # long mixed strings
        out.append(" ".join(rng.choice((_sentence(rng), rng.choice(CODE), rng.choice(NUMBERS),
                                        rng.choice(UNICODE_SNIPPETS), rng.choice(PUNCTUATION)))
                            for _ in range(8)))

    for token in special_tokens:  # special tokens at the edges and inside text
        q = rng.choice(CHAT_QUESTIONS)
        out += [token, token + token, f"{token}{q}", f"{q}{token}", f"{token}\n{q}",
                f"{q} {token} {q}", f"{token} {q}", f"  {token}", f"{token}  ",
                f"\n{token}\n", f"USER: {token}\n{q} ASSISTANT:", f"x{token}y",
                f"{token}{rng.choice(UNICODE_SNIPPETS)}", f"{rng.choice(NUMBERS)}{token}"]
    return out


def corpus_conversations(seed: int = 0) -> list[list[dict]]:
    """Chat conversations (Hugging Face message format) for rendering with a chat
    template: single and multi-turn, with and without an image, with a system prompt."""
    rng = random.Random(seed + 1)
    conversations = []
    for i in range(24):
        messages: list[dict] = []
        if i % 4 == 3:
            messages.append({"role": "system", "content": _sentence(rng)})
        for turn in range(1 + i % 3):
            question = rng.choice(CHAT_QUESTIONS)
            if turn == 0 and i % 2 == 0:
                content = [{"type": "image"}, {"type": "text", "text": question}]
            else:
                content = question
            messages.append({"role": "user", "content": content})
            if turn < i % 3 or i % 5 == 0:
                messages.append({"role": "assistant", "content": _sentence(rng)})
        conversations.append(messages)
    return conversations
