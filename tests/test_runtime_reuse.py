"""Reuse (KV prefix, image embeddings), chat sessions, threads and interrupted streams:
every reused answer equals the stateless one, token for token and logit for logit."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from llava_edge.errors import PromptError
from llava_edge.runtimes.embed_cache import EmbeddingCache, pixel_key
from llava_edge.runtimes.kv_reuse import KVPrefix, position_keys, remaining
from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM
from llava_edge.runtimes.pipeline import LlavaEdge
from scene_images import scene

N = 12  # new tokens per answer


def _load(bundle, **kw) -> LlavaEdge:
    return LlavaEdge.load(bundle, vision_precision="fp32", llm_quant="F16", n_threads=1, **kw)


@pytest.fixture(scope="module")
def reuse(tiny_bundle):
    with _load(tiny_bundle) as model:
        yield model


@pytest.fixture(scope="module")
def stateless(tiny_bundle):
    """The reference: every request evaluated from scratch, nothing cached."""
    with _load(tiny_bundle, reuse_prefix=False, embed_cache_size=0) as model:
        yield model


@pytest.fixture(autouse=True)
def _cold(reuse):
    reuse.clear_cache()  # each test starts from an empty KV cache and embedding cache


def _assert_same(model, answer, ref_model, ref_answer):
    """Same tokens, and the same logits at the last evaluated position. Not always bit for
    bit: a reused position may have been evaluated in a batch of another size (a chat's
    answer, one token at a time), and llama.cpp's kernels round differently per batch
    size; a misplaced or missing position would change the logits by far more."""
    assert answer.tokens == ref_answer.tokens
    assert answer.stop_reason == ref_answer.stop_reason
    np.testing.assert_allclose(model.llm.logits(), ref_model.llm.logits(), rtol=0, atol=1e-3)


def _sampled(model, *args, **kw):
    return model.ask(*args, max_new_tokens=N, temperature=0.9, seed=7, **kw)


# -- prefix reuse ---------------------------------------------------------------------------


@pytest.mark.parametrize("bundle", ["tiny_bundle", "tiny_qwen2_bundle"])
def test_second_question_on_the_same_image_evaluates_only_its_own_tokens(bundle, request):
    bundle_dir = request.getfixturevalue(bundle)
    with _load(bundle_dir) as model, _load(bundle_dir, reuse_prefix=False,
                                           embed_cache_size=0) as ref:
        image = scene(1)
        first = model.ask(image, "What is in the image?", max_new_tokens=N)
        _assert_same(model, first, ref, ref.ask(image, "What is in the image?",
                                                max_new_tokens=N))
        second = model.ask(image, "Which colour is the square?", max_new_tokens=N)
        _assert_same(model, second, ref, ref.ask(image, "Which colour is the square?",
                                                 max_new_tokens=N))

        ids = model.prompt_ids("Which colour is the square?", 1)
        after_image = ids.index(model.image_token_id) + model.n_image_tokens
        t1, t2 = first.timings, second.timings
        assert (t1.reused_tokens, t1.prefill_tokens) == (0, first.n_prompt_tokens)
        assert t2.reused_tokens >= after_image  # the image and all before it are kept
        assert t2.prefill_tokens == second.n_prompt_tokens - t2.reused_tokens
        assert t2.prefill_tokens <= len(ids) - ids.index(model.image_token_id)
        assert t2.images_encoded == 0 and t2.vision_ms == 0
        # sampling goes through the same logits: identical draws
        _assert_same(model, _sampled(model, image, "Describe it."),
                     ref, _sampled(ref, image, "Describe it."))


def test_system_prefix_is_reused_across_images(reuse, stateless):
    for system in (None, "You answer in one word."):
        reuse.clear_cache()
        prefix = reuse.prompt_ids("What is it?", 1, system).index(reuse.image_token_id)
        for i, seed in enumerate((1, 2, 3)):
            a = reuse.ask(scene(seed), "What is it?", max_new_tokens=N, system=system)
            _assert_same(reuse, a, stateless,
                         stateless.ask(scene(seed), "What is it?", max_new_tokens=N,
                                       system=system))
            assert a.timings.reused_tokens == (0 if i == 0 else prefix)
            assert a.timings.images_encoded == 1


def test_text_only_prompts_reuse_the_common_start(reuse, stateless):
    a = reuse.ask(None, "Count to three.", max_new_tokens=N)
    b = reuse.ask(None, "Count to five.", max_new_tokens=N)
    _assert_same(reuse, b, stateless, stateless.ask(None, "Count to five.", max_new_tokens=N))
    assert 0 < b.timings.reused_tokens < b.n_prompt_tokens
    # the very same request again: everything but the last position is reused
    c = reuse.ask(None, "Count to five.", max_new_tokens=N)
    assert c.tokens == b.tokens and c.timings.prefill_tokens == 1
    assert a.timings.reused_tokens == 0


def test_reuse_can_be_turned_off(tiny_bundle):
    with _load(tiny_bundle, reuse_prefix=False) as model:
        model.ask(scene(1), "What is it?", max_new_tokens=2)
        again = model.ask(scene(1), "What is it?", max_new_tokens=2)
    assert again.timings.reused_tokens == 0
    assert again.timings.prefill_tokens == again.n_prompt_tokens
    assert again.timings.embedding_cache_hits == 1  # the embedding cache is separate


def test_clear_cache_forgets_kv_and_embeddings(reuse):
    reuse.ask(scene(1), "What is it?", max_new_tokens=2)
    reuse.clear_cache()
    a = reuse.ask(scene(1), "What is it?", max_new_tokens=2)
    assert (a.timings.reused_tokens, a.timings.images_encoded) == (0, 1)


def test_truncate_then_evaluate_equals_a_fresh_evaluation(reuse):
    lm: LlamaCppLM = reuse.llm
    ids = lm.tokenize("the quick brown fox jumps over the lazy dog")
    lm.reset()
    lm.eval_tokens(ids)
    full = lm.logits()
    lm.eval_tokens(lm.tokenize(" and runs away", add_bos=False))
    assert lm.truncate(len(ids) - 1) and lm.n_past == len(ids) - 1
    lm.eval_tokens(ids[-1:])
    # The last position was evaluated in a batch of 1 here and in a batch of len(ids)
    # before: llama.cpp picks other kernels per batch size (on AVX2 the two differ in the
    # 5th digit), so the same tolerance as _assert_same, and the same greedy token.
    again = lm.logits()
    np.testing.assert_allclose(again, full, rtol=0, atol=1e-3)
    assert int(np.argmax(again)) == int(np.argmax(full))
    assert lm.truncate(0) and lm.n_past == 0
    reuse.clear_cache()


def test_prefix_bookkeeping_splits_text_and_image_runs():
    from llava_edge.runtimes.prompt import Segment

    segs = [Segment(tokens=(1, 2, 3)), Segment(image_index=0), Segment(tokens=(4, 5))]
    keys = position_keys(segs, [b"img"], [4])
    assert keys == [1, 2, 3, (b"img", 0), (b"img", 1), (b"img", 2), (b"img", 3), 4, 5]
    assert remaining(segs, [4], 0) == [(segs[0], 0), (segs[1], 0), (segs[2], 0)]
    assert remaining(segs, [4], 5) == [(segs[1], 2), (segs[2], 0)]  # inside the image
    assert remaining(segs, [4], 8) == [(segs[2], 1)]
    kv = KVPrefix()
    kv.extend(keys[:6])
    assert kv.reusable(keys, n_past=6) == 6
    assert kv.reusable(keys, n_past=5) == 0  # the backend changed behind our back
    assert kv.reusable(keys[:6], n_past=6) == 5  # the last position is always evaluated
    assert kv.reusable(position_keys(segs, [b"other"], [4]), n_past=6) == 3


# -- image embeddings cache -----------------------------------------------------------------


def test_embedding_cache_hit_when_the_kv_cache_moved_on(reuse, stateless):
    a, b = scene(1), scene(2)
    reuse.ask(a, "What is it?", max_new_tokens=2)
    reuse.ask(b, "What is it?", max_new_tokens=2)
    again = reuse.ask(a, "What is it?", max_new_tokens=N)
    _assert_same(reuse, again, stateless, stateless.ask(a, "What is it?", max_new_tokens=N))
    t = again.timings
    assert (t.embedding_cache_hits, t.images_encoded, t.vision_ms) == (1, 0, 0.0)
    assert t.prefill_tokens > reuse.n_image_tokens  # the image itself was evaluated again


def test_same_pixels_same_key_whatever_the_input_kind(reuse, tmp_path):
    img = scene(4)
    img.save(tmp_path / "x.png")
    rgb = np.asarray(img)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    answers = [reuse.ask(x, "What is it?", max_new_tokens=N, bgr=flag)
               for x, flag in ((img, False), (tmp_path / "x.png", False),
                               ((tmp_path / "x.png").read_bytes(), False), (rgb, False),
                               (bgr, True))]
    assert len({tuple(a.tokens) for a in answers}) == 1
    assert [a.timings.images_encoded for a in answers] == [1, 0, 0, 0, 0]
    assert pixel_key(img) != pixel_key(scene(5))


def test_embedding_cache_is_lru_and_read_only():
    cache = EmbeddingCache(capacity=2)
    cache.put(b"a", np.zeros((2, 3)))
    cache.put(b"b", np.ones((2, 3)))
    assert cache.get(b"a") is not None  # "a" is now the most recent
    cache.put(b"c", np.ones((2, 3)))
    assert cache.get(b"b") is None and cache.get(b"a") is not None and len(cache) == 2
    with pytest.raises(ValueError):
        cache.get(b"a")[0, 0] = 5.0
    off = EmbeddingCache(capacity=0)
    off.put(b"a", np.zeros(2))
    assert off.get(b"a") is None


# -- chat -----------------------------------------------------------------------------------


def test_chat_turns_equal_stateless_calls_with_the_full_history(reuse, stateless):
    chat = reuse.chat(max_new_tokens=N)
    turns = [("What is in the image?", scene(1)), ("What colour is the square?", None),
             ("And in this one?", scene(2)), ("Compare them.", None)]
    for i, (prompt, image) in enumerate(turns):
        history = chat.history()
        n_images = len(chat.images)
        answer = chat.ask(prompt, image=image)
        user = chat.messages[-2]
        ref = stateless.ask_messages(history + [user], chat.images, max_new_tokens=N)
        _assert_same(reuse, answer, stateless, ref)
        t = answer.timings
        if i:  # earlier turns stay in the KV cache: only the tail is evaluated
            assert t.reused_tokens > 0 and t.prefill_tokens < answer.n_prompt_tokens / 2
            assert t.images_encoded == (1 if image is not None else 0)
        assert len(chat.images) == n_images + (image is not None)
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 4
    # a long history: turn 4 costs a fraction of what the stateless call evaluates
    assert answer.timings.prefill_tokens < answer.n_prompt_tokens / 4


def test_chat_system_prompt_and_several_images_in_one_turn(reuse, stateless):
    chat = reuse.chat(system="You are terse.", max_new_tokens=N)
    chat.add_image(scene(1))
    two = chat.ask("Left: <image> right: <image> -- which is brighter?", image=scene(2))
    assert len(chat.images) == 2 and two.timings.images_encoded == 2
    ref = stateless.ask_messages(chat.history()[:-1], chat.images, max_new_tokens=N)
    _assert_same(reuse, two, stateless, ref)
    assert chat.history()[0] == {"role": "system", "content": "You are terse."}
    follow = chat.ask("Why?")
    ref = stateless.ask_messages(chat.history()[:-1], chat.images, max_new_tokens=N)
    _assert_same(reuse, follow, stateless, ref)


def test_chat_reset_really_clears(reuse, tiny_bundle):
    chat = reuse.chat(max_new_tokens=N)
    chat.ask("What is it?", image=scene(1))
    chat.ask("Tell me more.")
    chat.add_image(scene(2))
    chat.reset()
    assert chat.messages == [] and chat.images == [] and chat.pending == []
    after = chat.ask("Tell me more.")
    with _load(tiny_bundle) as fresh:
        first = fresh.chat(max_new_tokens=N).ask("Tell me more.")
        assert after.tokens == first.tokens
        np.testing.assert_allclose(reuse.llm.logits(), fresh.llm.logits(), rtol=0, atol=1e-3)
    # nothing of the old conversation was reused: at most what precedes its first image
    old_start = reuse.prompt_ids("What is it?", 1).index(reuse.image_token_id)
    assert after.timings.reused_tokens <= old_start
    assert after.n_prompt_tokens == len(reuse.prompt_ids("Tell me more.", 0))


def test_multi_image_markers_are_filled_in_order(reuse, stateless):
    a, b = scene(1), scene(2)
    prompt = "First <image> then <image>: what changed?"
    ab = reuse.ask([a, b], prompt, max_new_tokens=N)
    ab_logits = reuse.llm.logits()
    _assert_same(reuse, ab, stateless, stateless.ask([a, b], prompt, max_new_tokens=N))
    ba = reuse.ask([b, a], prompt, max_new_tokens=N)
    _assert_same(reuse, ba, stateless, stateless.ask([b, a], prompt, max_new_tokens=N))
    assert not np.array_equal(reuse.llm.logits(), ab_logits)  # the order matters
    assert ba.timings.embedding_cache_hits == 2 and ba.timings.images_encoded == 0
    ids = reuse.prompt_ids(prompt, 2)
    assert ids.count(reuse.image_token_id) == 2
    assert ids.index(reuse.image_token_id) < len(ids) - 1 - ids[::-1].index(
        reuse.image_token_id)
    with pytest.raises(PromptError, match="2 <image> marker.*3 image"):
        reuse.ask([a, b, a], prompt)


# -- interrupted streams --------------------------------------------------------------------


def test_breaking_out_of_a_stream_leaves_the_instance_usable(reuse, stateless):
    image, prompt = scene(3), "Describe the image in detail."
    stream = reuse.stream(image, prompt, max_new_tokens=N)
    for _ in stream:
        break
    assert stream.answer is not None and 1 <= stream.answer.n_tokens < N
    answer = reuse.ask(image, prompt, max_new_tokens=N)
    _assert_same(reuse, answer, stateless, stateless.ask(image, prompt, max_new_tokens=N))
    assert answer.timings.reused_tokens > 0  # what the broken stream evaluated is reused


def test_a_new_request_ends_an_open_stream_of_the_same_thread(reuse, stateless):
    pieces = iter(reuse.stream(scene(1), "Describe the image.", max_new_tokens=N))
    next(pieces)  # suspended, holding the model; waiting for it here would deadlock
    answer = reuse.ask(scene(2), "What is it?", max_new_tokens=N)
    _assert_same(reuse, answer, stateless, stateless.ask(scene(2), "What is it?",
                                                         max_new_tokens=N))
    rest = list(pieces)  # the old stream stops without evaluating anything more
    assert len(rest) <= 1
    again = reuse.ask(scene(2), "What is it?", max_new_tokens=N)
    _assert_same(reuse, again, stateless, stateless.ask(scene(2), "What is it?",
                                                        max_new_tokens=N))


def test_interrupted_chat_stream_keeps_the_partial_turn(reuse, stateless):
    chat = reuse.chat(max_new_tokens=N)
    stream = chat.stream("Describe the image in detail.", image=scene(5))
    pieces = iter(stream)
    next(pieces)
    pieces.close()  # what Ctrl-C in `llava-edge chat` does
    assert chat.messages[-1]["content"] == stream.answer.text
    assert len(chat.images) == 1
    answer = chat.ask("Go on.")
    ref = stateless.ask_messages(chat.history()[:-1], chat.images, max_new_tokens=N)
    _assert_same(reuse, answer, stateless, ref)


# -- threads --------------------------------------------------------------------------------


def test_two_threads_on_one_instance_get_the_sequential_answers(reuse, stateless):
    jobs = {0: [(scene(1), "What is it?"), (scene(1), "What colour?"),
                (scene(2), "Describe it.")],
            1: [(scene(3), "What is it?"), (scene(1), "Where is the square?"),
                (None, "Count to three.")]}
    expected = {k: [stateless.ask(img, q, max_new_tokens=N).tokens for img, q in v]
                for k, v in jobs.items()}
    got: dict[int, list] = {0: [], 1: []}
    errors = []
    barrier = threading.Barrier(2)

    def work(k):
        try:
            barrier.wait()
            for _ in range(2):
                for img, q in jobs[k]:
                    if q == "Describe it.":  # a stream, to hold the lock across pieces
                        s = reuse.stream(img, q, max_new_tokens=N)
                        list(s)
                        got[k].append(s.answer.tokens)
                    else:
                        got[k].append(reuse.ask(img, q, max_new_tokens=N).tokens)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == {k: v * 2 for k, v in expected.items()}


def test_a_backend_used_behind_the_pipelines_back_is_not_reused(reuse, stateless):
    reuse.ask(scene(1), "What is it?", max_new_tokens=N)
    reuse.llm.reset()
    reuse.llm.eval_tokens(reuse.llm.tokenize("something else entirely"))
    answer = reuse.ask(scene(1), "What is it?", max_new_tokens=N)
    assert answer.timings.reused_tokens == 0
    _assert_same(reuse, answer, stateless, stateless.ask(scene(1), "What is it?",
                                                         max_new_tokens=N))


def test_clear_cache_with_an_open_stream_of_the_same_thread(reuse):
    pieces = iter(reuse.stream(scene(1), "Describe the image.", max_new_tokens=N))
    next(pieces)
    reuse.clear_cache()  # takes the model over instead of waiting for the stream
    assert len(list(pieces)) <= 1
    assert reuse.ask(scene(1), "What is it?", max_new_tokens=2).timings.reused_tokens == 0
