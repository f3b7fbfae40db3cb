"""`llava-edge tune`: the search (with a stand-in measurement, to test its rules), the
profile (written, applied by LlavaEdge.load, ignored for another machine or bundle), and
one real run on the tiny bundle (measurements in subprocesses, as users run it)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from llava_edge.cli import run
from llava_edge.runtimes.pipeline import LlavaEdge
from llava_edge.runtimes.tune.profile import (DEFAULTS, RuntimeSettings, TuneProfile,
                                              TuneProfileError, bundle_key, lookup,
                                              machine_description, resolve, save_profile)
from llava_edge.runtimes.tune.search import TuneError, TuneOptions, file_choices, tune


@pytest.fixture
def tune_dir(tmp_path, monkeypatch):
    d = tmp_path / "profiles"
    monkeypatch.setenv("LLAVA_EDGE_TUNE_DIR", str(d))
    return d


def test_explicit_settings_win_over_the_profile_which_wins_over_defaults():
    profile = TuneProfile(machine={}, bundle="b", bundle_path="p", objective="first-token",
                          settings=RuntimeSettings(flash_attn=True, n_ubatch=128, n_threads=1))
    s = resolve(RuntimeSettings(n_ubatch=256), profile)
    assert (s.flash_attn, s.n_ubatch, s.n_threads, s.repack) == (True, 256, 1, DEFAULTS.repack)
    assert resolve(RuntimeSettings(), None) == DEFAULTS


# -- the search's rules, with a stand-in measurement ----------------------------------------

def fake_measure(table, gives_up=False):
    """A measurement from a table: settings -> (first token ms, tokens[, fidelity]);
    ms/token 10. The references it is given are kept in ``measure.references``, the
    give-up bounds in ``measure.bounds``; ``gives_up``: stop as the real one does (the
    first token over the bound: that figure, no tokens, no reference written).
    No stage figures (vision_ms, prefill_ms None): a candidate is compared whole and
    gives no noise figure, so the rules here are tested apart from the stages (for those,
    see test_a_setting_is_compared_on_the_stage_it_moves and
    test_a_setting_must_beat_the_noise_seen_between_runs_of_its_stage)."""
    calls, references, bounds = [], [], []

    def measure(bundle, settings, opts, reference=None, give_up=None):
        calls.append(settings)
        references.append(reference)
        bounds.append(give_up and give_up["above"])
        s = RuntimeSettings(**settings)
        ms, tokens, *fidelity = table(s)
        if gives_up and give_up is not None and ms > give_up["above"]:
            return {"first_token_ms": ms, "ms_per_token": 10.0, "peak_rss_mb": 100.0,
                    "vision_ms": None, "prefill_ms": None, "decode_tokens_per_s": 100.0,
                    "load_s": 0.1, "tokens": None, "n_requests": 1, "fidelity": None,
                    "gave_up": ms}
        if reference and "write" in reference:  # as the real one does: the logits
            open(reference["write"], "wb").close()
        return {"first_token_ms": ms, "ms_per_token": 10.0, "peak_rss_mb": 100.0 + ms / 10,
                "vision_ms": ms - 1, "prefill_ms": ms - 1, "decode_tokens_per_s": 100.0,
                "load_s": 0.1, "tokens": tokens, "fidelity": (fidelity or [None])[0]}
    measure.calls, measure.references, measure.bounds = calls, references, bounds
    return measure


def stage_measure(stages):
    """A measurement from a function: settings -> (vision ms, prefill ms); the first token
    is their sum + 10 ms, the same tokens whatever the settings."""
    def measure(bundle, settings, opts, reference=None, give_up=None):
        vision, prefill = stages(RuntimeSettings(**settings))
        return {"first_token_ms": vision + prefill + 10.0, "vision_ms": vision,
                "prefill_ms": prefill, "ms_per_token": 30.0, "peak_rss_mb": 100.0,
                "decode_tokens_per_s": 33.3, "load_s": 0.1, "tokens": [[1]],
                "fidelity": None}
    return measure


def test_a_faster_setting_that_changes_the_answer_is_not_taken(tiny_bundle, tune_dir):
    def table(s):
        if s.flash_attn:  # fastest, but another answer
            return 50.0, [[1, 2, 3], [9]]
        if s.n_ubatch == 128:  # faster, same answer
            return 80.0, [[1, 2, 3], [4]]
        return 100.0, [[1, 2, 3], [4]]

    measure = fake_measure(table)
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("flash_attn", "n_ubatch")), measure=measure)
    assert p.settings.flash_attn is False and p.settings.n_ubatch == 128
    verdicts = {c["changed"]: (c["eligible"], c["why"]) for c in p.candidates}
    assert verdicts["flash_attn=True"][0] is False
    assert "differ" in verdicts["flash_attn=True"][1]
    assert p.figures["objective_defaults"] == 100.0 and p.figures["objective_tuned"] == 80.0


def test_noise_does_not_pick_a_setting_and_each_pair_is_its_own_reference(tiny_bundle,
                                                                          tune_dir):
    def table(s):  # int8 is 2% faster: under the tolerance; Q4_K_M 10% and other tokens
        ms = (98.0 if s.vision_precision == "int8" else 100.0) - (10 if s.llm_quant ==
                                                                   "Q4_K_M" else 0)
        return ms, [[s.llm_quant == "F16"]]

    p = tune(TuneOptions(bundle=tiny_bundle, dims=("vision_precision", "llm_quant")),
             measure=fake_measure(table))
    assert (p.settings.vision_precision, p.settings.llm_quant) == ("fp32", "Q4_K_M")
    assert [c["changed"] for c in p.candidates] == [
        "defaults", "vision_precision=int8", "llm_quant=Q4_K_M"]
    assert all(c["eligible"] for c in p.candidates)  # a new pair: its own reference
    # the tiny bundle records no LLM gate: its references say so rather than "passed"
    assert p.candidates[2]["why"] == ("reference tokens of its pair (vision fp32: gate "
                                      "passed; Q4_K_M: no gate recorded at export)")


def test_a_graph_or_gguf_that_missed_its_gate_is_never_measured(tiny_bundle, tune_dir,
                                                                 monkeypatch):
    from llava_edge.bundle import open_bundle
    from llava_edge.runtimes.tune import search

    m = open_bundle(tiny_bundle, verify="size").manifest
    failed = replace(m, vision=tuple(replace(v, passed=False) if v.precision == "int8" else v
                                     for v in m.vision),
                     parity={**m.parity, "llm": {"logits": {"Q4_K_M": {"ok": False}}}})
    choices = file_choices(failed)
    assert choices["vision_precision"] == {"fp32": "", "int8": "vision int8 missed its "
                                                              "parity gate"}
    assert choices["llm_quant"] == {"F16": "", "Q4_K_M": "Q4_K_M missed its logit parity"}
    monkeypatch.setattr(search, "file_choices", lambda _m: choices)
    measure = fake_measure(lambda s: (50.0, [[1]]))
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("vision_precision", "llm_quant")),
             measure=measure)
    assert len(measure.calls) == 1 and p.settings.vision_precision == "fp32"
    assert [c["why"] for c in p.candidates[1:]] == [
        "not measured: vision int8 missed its parity gate",
        "not measured: Q4_K_M missed its logit parity"]


def test_the_budget_stops_the_search(tiny_bundle, tune_dir):
    measure = fake_measure(lambda s: (100.0, [[1]]))
    p = tune(TuneOptions(bundle=tiny_bundle, budget_s=1e-9, dims=("n_ubatch",)), measure=measure)
    assert len(measure.calls) == 1  # the defaults only
    assert all("budget" in c["why"] for c in p.candidates[1:])


def test_a_candidate_far_behind_on_its_first_request_is_stopped_there(tiny_bundle, tune_dir):
    """A candidate more than give_up behind the best is given the bound and, stopped, is
    listed as such and not eligible; the next setting is still measured against the best
    pair's reference; give_up=0 passes no bound."""
    def table(s):
        ms = {"F16": 100.0, "Q4_K_M": 80.0}[s.llm_quant] - 10 * bool(s.flash_attn)
        return ms, [[1, 2]]

    measure = fake_measure(table, gives_up=True)
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("llm_quant", "flash_attn")),
             measure=measure)
    # the tiny bundle's default GGUF is F16. The defaults get no bound, Q4_K_M 100 x 1.15
    # (not reached), flash attention 80 x 1.15 (Q4_K_M's)
    assert measure.bounds == [None, 100.0 * 1.15, 80.0 * 1.15]
    assert (p.settings.llm_quant, p.settings.flash_attn) == ("Q4_K_M", True)
    assert p.figures["gave_up"] == 0

    def slow_q4(s):  # Q4_K_M 40% slower than F16: stopped after its first request
        return (140.0 if s.llm_quant == "Q4_K_M" else 100.0) - 10 * bool(s.flash_attn), [[1]]

    measure = fake_measure(slow_q4, gives_up=True)
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("llm_quant", "flash_attn")),
             measure=measure)
    c = {c["changed"]: c for c in p.candidates}
    assert c["llm_quant=Q4_K_M"]["eligible"] is False
    assert c["llm_quant=Q4_K_M"]["why"] == ("gave up after its first timed request: "
                                            "first-token 140.0, over 115.0 (the best so far, "
                                            "100.0, + 15%)")
    assert c["flash_attn=True"]["eligible"] and p.settings.flash_attn is True
    assert p.figures["gave_up"] == 1 and p.figures["measured"] == 3
    # flash attention, at the best pair (F16), is compared with that pair's reference
    assert measure.references[2] == {"against": measure.references[0]["write"]}

    off = fake_measure(slow_q4, gives_up=True)
    tune(TuneOptions(bundle=tiny_bundle, dims=("llm_quant",), give_up=0), measure=off)
    assert off.bounds == [None, None]


def test_a_setting_is_compared_on_the_stage_it_moves(tiny_bundle, tune_dir):
    """The vision graph's settings are compared on the vision stage, the others on the
    prefill, the best's figures standing in for the other stage: noise in the stage a
    setting does not touch decides nothing (the int8 graph on an AVX-512 EPYC: vision
    1,392 -> 842 ms, but a prefill 450 ms slower by chance in its run)."""
    def noisy(s):  # int8 halves the vision stage; its run's prefill is 450 ms slower
        vision = 500.0 if s.vision_precision == "int8" else 1000.0
        prefill = 4000.0 if s.vision_precision == "fp32" else 4450.0
        return vision - 20 * s.flash_attn, prefill - 1450 * s.flash_attn

    p = tune(TuneOptions(bundle=tiny_bundle, dims=("vision_precision", "flash_attn")),
             measure=stage_measure(noisy))
    assert (p.settings.vision_precision, p.settings.flash_attn) == ("int8", True)
    by = {c["changed"]: c for c in p.candidates}
    int8 = by["vision_precision=int8"]
    assert int8["figures"]["first_token_ms"] == 4960.0  # whole: 1% better, under 3%
    # its vision stage, the defaults' prefill (and decode)
    assert int8["score"] == 5010.0 - 1000.0 + 500.0
    assert (int8["compared"]["prefill_ms"], int8["compared"]["stage"]) == (4000.0, "vision")
    # flash attention at int8, on the prefill: the best's 4,510 with its prefill for the
    # compared one's (4,000); its own run's vision stage (480) is not counted
    fa = by["flash_attn=True"]
    assert fa["score"] == 4510.0 - 4000.0 + 3000.0 and fa["compared"]["vision_ms"] == 500.0
    assert p.figures["objective_tuned"] == 3510.0
    assert p.figures["tuned"]["compared"] == fa["compared"]

    def lucky(s):  # int8 no faster at all; its run's prefill 600 ms faster by chance
        return 1000.0, 4000.0 - 600 * (s.vision_precision == "int8")

    p = tune(TuneOptions(bundle=tiny_bundle, dims=("vision_precision",)),
             measure=stage_measure(lucky))
    assert p.settings.vision_precision == "fp32"
    assert p.candidates[1]["figures"]["first_token_ms"] == 4410.0  # whole: 12% "better"
    assert p.candidates[1]["score"] == 5010.0
    # peak memory is no sum of stages: compared whole
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("vision_precision",), objective="memory",
                         max_first_token_ms=1e6), measure=stage_measure(lucky))
    assert p.candidates[1]["compared"]["first_token_ms"] == 4410.0
    assert "stage" not in p.candidates[1]["compared"]


def test_a_setting_must_beat_the_noise_seen_between_runs_of_its_stage(tiny_bundle, tune_dir):
    """A candidate that moved one stage ran the other at the best's settings: two runs of
    the same work, whose difference is noise that a setting of that stage has to beat,
    not only the 3% tolerance (an AVX2-only EPYC: the same Q4_K_M prefill 9.1 s in one
    process, 10.1 s in another; F16's 9.6 s was taken by chance)."""
    def stages(gain):
        def measure(s):  # int8 cuts the vision stage; its run's prefill 600 ms slower
            prefill = 4000.0 + 600 * (s.vision_precision == "int8" and not s.flash_attn)
            return 500.0 if s.vision_precision == "int8" else 1000.0, prefill - gain * (
                s.flash_attn)
        return measure

    # flash attention's 200 ms (4.4% of the best's 4,510) beats the tolerance, not the
    # 600 ms the int8 graph's run showed two prefills at the same settings can differ
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("vision_precision", "flash_attn")),
             measure=stage_measure(stages(200.0)))
    assert (p.settings.vision_precision, p.settings.flash_attn) == ("int8", False)
    assert p.figures["noise"] == {"vision": 0.0, "llm": 600.0}
    fa = next(c for c in p.candidates if c["changed"] == "flash_attn=True")
    assert fa["eligible"] and fa["score"] == 4310.0
    assert fa["why"].endswith("; not taken: 200.0 better, within the 600.0 two runs of its "
                              "llm stage at the same settings differed by in this search")
    # 800 ms beats both
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("vision_precision", "flash_attn")),
             measure=stage_measure(stages(800.0)))
    assert (p.settings.vision_precision, p.settings.flash_attn) == ("int8", True)
    # without stage figures (or for peak memory) there is no noise figure: the tolerance
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("vision_precision",), objective="memory",
                         max_first_token_ms=1e6), measure=stage_measure(stages(0.0)))
    assert p.figures["noise"] == {"vision": 0.0, "llm": 0.0}


def test_a_setting_chosen_earlier_is_searched_again_when_a_later_one_wins(tiny_bundle,
                                                                        tune_dir):
    """As on the AVX2 kernels: repacking off wins before flash attention, and with flash
    attention on, repacking on is faster again. The runtime settings searched before a
    change are searched again under the new best, at once; files are not."""
    def table(s):
        ms = {(True, False): 100.0, (False, False): 90.0, (False, True): 70.0,
              (True, True): 60.0}[(s.repack, s.flash_attn)]
        return ms - 5 * (s.n_ubatch == 256) - 20 * (s.llm_quant == "Q4_K_M"), [[1, 2]]

    measure = fake_measure(table)
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("llm_quant", "repack", "flash_attn"),
                         give_up=0), measure=measure)
    assert [c["changed"] for c in p.candidates] == [
        "defaults", "llm_quant=Q4_K_M", "repack=False", "flash_attn=True",
        "repack=True (again)"]
    assert (p.settings.llm_quant, p.settings.repack, p.settings.flash_attn) == (
        "Q4_K_M", True, True)
    assert p.figures["objective_tuned"] == 40.0
    # repacking back on changed the best, so flash attention would be searched again: its
    # other value at that best (repack on, flash attention off) was measured already
    assert p.figures["planned"] == 5 and p.figures["measured"] == 5

    # a revisit that does not beat the best by the tolerance changes nothing, and the
    # search goes on with the settings after the one that won
    def even(s):
        return table(s)[0] + 9.5 * (s.repack and s.flash_attn), [[1, 2]]

    measure = fake_measure(even)
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("repack", "flash_attn", "n_ubatch"),
                         give_up=0, ubatch=(256, 512)), measure=measure)
    assert [c["changed"] for c in p.candidates] == [
        "defaults", "repack=False", "flash_attn=True",
        "repack=True (again)",                                # 69.5 against 70: not taken
        "n_ubatch=256",                                       # 65: taken, so both again
        "repack=True (again)", "flash_attn=False (again)"]
    assert (p.settings.repack, p.settings.flash_attn, p.settings.n_ubatch) == (
        False, True, 256)
    assert p.figures["planned"] == 7


def test_the_measurement_stops_after_one_request_over_its_bound(tiny_bundle):
    from llava_edge.runtimes.tune.measure import Job, measure

    def job(above):
        return Job(bundle=str(tiny_bundle), settings={}, repeats=2, max_new_tokens=4,
                   give_up={"objective": "first-token", "above": above})

    stopped = measure(job(0.0))
    assert stopped["gave_up"] == stopped["first_token_ms"] > 0
    assert (stopped["n_requests"], stopped["tokens"], stopped["fidelity"]) == (1, None, None)
    kept = measure(job(stopped["first_token_ms"] * 1000))
    assert "gave_up" not in kept and kept["n_requests"] == 4 and len(kept["tokens"]) == 2


def test_a_first_request_is_stopped_on_the_stage_its_setting_moves():
    """As on an AVX2-only EPYC: the int8 graph's first request ran its vision stage 24%
    faster than the defaults' and its prefill 33% slower by chance; the whole request was
    over the bound and stopped, though the setting had won on its stage."""
    from llava_edge.runtimes.tune.measure import Job, _gives_up

    best = {"first_token_ms": 2000.0, "vision_ms": 1000.0, "prefill_ms": 900.0,
            "ms_per_token": 30.0}
    first = {"first_token_ms": 3000.0, "vision_ms": 500.0, "prefill_ms": 2400.0,
             "ms_per_token": 31.0}

    def job(stage):
        return Job(bundle="-", settings={}, give_up={
            "objective": "first-token", "above": 2300.0, "best": best, "stage": stage})

    # a vision setting: its vision stage with the best's prefill, 1,500 ms: not stopped
    assert _gives_up(job("vision"), first) is None
    # an LLM setting: the best's vision stage with its prefill, 3,500 ms: stopped
    assert _gives_up(job("llm"), first) == 2000.0 + 2400.0 - 900.0
    # no best figures (the search's defaults are compared whole): the whole request
    assert _gives_up(Job(bundle="-", settings={}, give_up={
        "objective": "first-token", "above": 2300.0}), first) == 3000.0


def test_objectives_need_what_they_need(tiny_bundle):
    with pytest.raises(TuneError, match="max-first-token-ms"):
        tune(TuneOptions(bundle=tiny_bundle, objective="memory"), measure=fake_measure(None))
    failing = {"error": "boom"}
    with pytest.raises(TuneError, match="could not be measured"):
        tune(TuneOptions(bundle=tiny_bundle), measure=lambda *a: failing)


# -- profiles ----------------------------------------------------------------------------


def _profile(bundle, **settings):
    return TuneProfile(machine=machine_description(), bundle=bundle_key(bundle),
                       bundle_path=str(bundle), objective="first-token",
                       settings=RuntimeSettings(**settings))


def test_load_applies_this_machines_profile_and_flags_override_it(tiny_bundle, tune_dir):
    path = save_profile(_profile(tiny_bundle, vision_precision="int8", llm_quant="Q4_K_M",
                                 n_threads=1, n_threads_batch=1, flash_attn=True,
                                 n_ubatch=128))
    assert path.parent.parent == tune_dir
    with LlavaEdge.load(tiny_bundle) as model:
        s = model.settings
        assert (s.vision_precision, s.llm_quant, s.flash_attn, s.n_ubatch) == \
            ("int8", "Q4_K_M", True, 128)
        assert str(path) in model.tune_note
        assert model.ask(None, "Hello", max_new_tokens=2).n_tokens >= 1
    with LlavaEdge.load(tiny_bundle, flash_attn=False, llm_quant="F16", n_threads=2) as model:
        s = model.settings
        assert (s.vision_precision, s.llm_quant, s.flash_attn, s.n_threads,
                s.n_threads_batch, s.vision_threads) == ("int8", "F16", False, 2, 2, 2)
    with LlavaEdge.load(tiny_bundle, tune=False) as model:
        assert model.settings.vision_precision == "fp32" and model.settings.flash_attn is False
    with LlavaEdge.load(tiny_bundle, tune=path) as model:  # named explicitly
        assert model.settings.n_ubatch == 128


def test_a_profile_for_another_machine_or_bundle_is_ignored(tiny_bundle, tmp_path, tune_dir,
                                                            caplog):
    other = _profile(tiny_bundle, flash_attn=True)
    other.machine = {**other.machine, "cpu_model": "Some Other CPU", "cores": 64}
    path = save_profile(other)
    found = lookup(tiny_bundle)
    assert found.profile is None and "other machines" in found.note
    assert "Some Other CPU" in found.note
    with caplog.at_level("WARNING"):
        with LlavaEdge.load(tiny_bundle) as model:
            assert model.settings.flash_attn is False
    assert "other machines" in caplog.text
    with pytest.raises(TuneProfileError, match="another machine"):
        LlavaEdge.load(tiny_bundle, tune=path)
    # the same bundle exported again is another bundle (its manifest differs)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["created"] = "2000-01-01T00:00:00+00:00"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    mine = save_profile(_profile(tiny_bundle, n_ubatch=256))
    assert lookup(copy).profile is None and lookup(tiny_bundle).path == mine
    with pytest.raises(TuneProfileError, match="another bundle"):
        LlavaEdge.load(copy, tune=mine, verify="size")


def test_a_profile_for_another_llama_cpp_build_is_ignored(tiny_bundle, tune_dir):
    # The same CPU and versions, llama.cpp rebuilt (e.g. with its AMX kernels): what won
    # before may lose now, so the profile is another machine's.
    mine = machine_description()
    assert "llama_cpp_build" in mine and mine["llama_cpp_build"]
    other = _profile(tiny_bundle, repack=False)
    other.machine = {**mine, "llama_cpp_build": sorted(set(mine["llama_cpp_build"])
                                                       ^ {"AMX_INT8"})}
    save_profile(other)
    found = lookup(tiny_bundle)
    assert found.profile is None and "other machines" in found.note
    with LlavaEdge.load(tiny_bundle) as model:
        assert model.settings.repack is True


def test_an_unreadable_profile_is_ignored_by_lookup_and_refused_by_name(tiny_bundle, tune_dir):
    path = save_profile(_profile(tiny_bundle, n_ubatch=256))
    path.write_text("{not json")
    assert lookup(tiny_bundle).profile is None
    with pytest.raises(TuneProfileError, match="not a usable tune profile"):
        LlavaEdge.load(tiny_bundle, tune=path)


# -- the real thing ----------------------------------------------------------------------


def test_tune_on_tiny_writes_a_profile_that_run_and_doctor_use(tiny_bundle, tune_dir, capsys):
    assert run(["tune", str(tiny_bundle), "--settings", "vision_precision,llm_quant,n_ubatch",
                "--ubatch", "64", "--give-up", "0",  # timings of ~20 ms: measure all
                "--repeats", "1", "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] and out["machine"] == machine_description()
    changed = [c["changed"] for c in out["candidates"]]
    assert changed[:3] == ["defaults", "vision_precision=int8", "llm_quant=Q4_K_M"]
    assert "n_ubatch=64" in changed and len(changed) == 4
    measured = [c for c in out["candidates"] if c["figures"]]
    assert len(measured) == 4
    for c in measured:
        f = c["figures"]
        assert f["first_token_ms"] > 0 and f["peak_rss_mb"] > 0 and f["n_requests"] == 2
    # a new pair is its own reference; n_ubatch=64 must match its pair's tokens to count
    assert all(c["eligible"] for c in measured if c["changed"] != "n_ubatch=64")
    found = lookup(tiny_bundle)
    assert str(found.path) == out["profile"]
    assert found.profile.settings.chosen() == out["settings"]
    assert run(["doctor", str(tiny_bundle)]) == 0
    assert f"tuned profile {out['profile']}" in capsys.readouterr().out
    with LlavaEdge.load(tiny_bundle) as model:
        assert model.settings.chosen().items() >= out["settings"].items()


@pytest.mark.parametrize("args, message", [
    (["--objective", "memory"], "needs a first-token bound"),
    (["--settings", "warp_drive"], "unknown setting(s) ['warp_drive']"),
    (["--threads", "0"], "give positive integers"),
])
def test_tune_refuses_bad_input(tiny_bundle, tune_dir, capsys, args, message):
    assert run(["tune", str(tiny_bundle), *args]) != 0
    assert message in capsys.readouterr().err
    assert not tune_dir.exists()


def test_bench_adds_a_tuned_row_beside_the_defaults(tiny_bundle, tune_dir, tmp_path):
    save_profile(_profile(tiny_bundle, vision_precision="int8", llm_quant="Q4_K_M",
                          n_threads=1, n_threads_batch=1, vision_threads=1, flash_attn=True,
                          n_ubatch=128))
    out = tmp_path / "results"
    assert run(["bench", "--bundle", str(tiny_bundle), "--vision", "fp32", "--llm", "F16",
                "--no-peers", "--threads", "1", "--repeats", "2", "--warmup", "1",
                "--max-new-tokens", "4", "--work-dir", str(tmp_path / "work"), "--out",
                str(out), "--gemm-size", "128", "--bandwidth-mb", "16", "--json"]) == 0
    data = json.loads((out / "results.json").read_text())
    names = [r["config"]["name"] for r in data["results"]]
    assert names[:2] == ["llava-edge fp32+F16", "llava-edge tuned int8+Q4_K_M"]
    tuned = data["results"][1]
    assert tuned["config"]["tuned"] and "error" not in tuned
    assert any(n.startswith("tuned: ") and "flash_attn=True" in n for n in tuned["notes"])
    assert data["settings"]["tuned_profile"]["settings"]["n_ubatch"] == 128
    assert any(t["target"].startswith("tuned: ") for t in data["targets"])
    assert run(["bench", "--bundle", str(tiny_bundle), "--vision", "fp32", "--llm", "F16",
                "--no-peers", "--no-tuned", "--threads", "1", "--repeats", "1", "--warmup", "1",
                "--max-new-tokens", "2", "--work-dir", str(tmp_path / "work"), "--out",
                str(tmp_path / "r2"), "--gemm-size", "128", "--bandwidth-mb", "16",
                "--json"]) == 0
    data = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert not any(r["config"].get("tuned") for r in data["results"])


def test_bench_holds_the_tuned_row_to_raw_llama_cpp_on_its_gguf_and_settings(
        tiny_bundle, tune_dir, tmp_path):
    # The default row's raw peer runs the default GGUF at the bench's options; the tuned
    # row's decode is compared with raw llama.cpp on the tuned GGUF at the tuned settings.
    save_profile(_profile(tiny_bundle, vision_precision="int8", llm_quant="Q4_K_M",
                          n_threads=1, n_threads_batch=1, repack=False, flash_attn=True,
                          kv_type="q8_0", n_ubatch=64))
    out = tmp_path / "results"
    assert run(["bench", "--bundle", str(tiny_bundle), "--vision", "fp32", "--llm", "F16",
                "--threads", "1", "--repeats", "1", "--warmup", "0",
                "--max-new-tokens", "4", "--work-dir", str(tmp_path / "work"), "--out",
                str(out), "--gemm-size", "128", "--bandwidth-mb", "16", "--json"]) == 0
    data = json.loads((out / "results.json").read_text())
    raws = {r["config"]["name"]: r for r in data["results"]
            if r["config"]["kind"] == "llama.cpp-raw"}
    # the bundle's default GGUF (F16 here) for the untuned peer, the profile's for the tuned
    assert sorted(raws) == ["llama.cpp-raw -+F16", "llama.cpp-raw tuned -+Q4_K_M"]
    tuned_raw = raws["llama.cpp-raw tuned -+Q4_K_M"]
    assert "error" not in tuned_raw and list(tuned_raw["files"]) == ["llm-Q4_K_M.gguf"]
    note = next(n for n in tuned_raw["notes"] if n.startswith("the tuned row's llama.cpp"))
    for setting in ("repack=False", "flash_attn=True", "kv_type=q8_0", "n_ubatch=64"):
        assert setting in note
    assert "kv_type" not in " ".join(raws["llama.cpp-raw -+F16"]["notes"])
    by = {t["target"]: t for t in data["targets"]}
    rows = {r["config"]["name"]: r["summary"]["decode_tok_s"]["median"]
            for r in data["results"] if r["summary"]["n_tokens"]["median"] >= 2}
    tuned = by["tuned: decode tokens/s vs raw llama.cpp (same GGUF)"]["value"]
    assert tuned == pytest.approx(rows["llava-edge tuned int8+Q4_K_M"]
                                  / rows["llama.cpp-raw tuned -+Q4_K_M"])


def test_the_raw_peer_can_load_without_weight_repacking(tiny_bundle):
    # llama-cpp-python's Llama has no argument for it: the bench sets it for one load.
    from llava_edge.benchmarks.measure import Job
    from llava_edge.benchmarks.peers import _llama
    from llava_edge.bundle import open_bundle

    gguf = open_bundle(tiny_bundle).file("llm-F16.gguf")
    job = Job(config={}, bundle=str(tiny_bundle), checkpoint=None, image="", prompt="",
              max_new_tokens=1, warmup=0, repeats=1, threads=1, n_ctx=256)
    for settings, repack in ((None, True), ({"repack": False}, False), ({}, True)):
        llm = _llama(replace(job, tuned_settings=settings), gguf)
        try:
            assert llm.model_params.use_extra_bufts is repack
            assert llm.eval([llm.token_bos()]) is None and llm.n_tokens == 1
        finally:
            llm.close()
    import llama_cpp

    assert llama_cpp.llama_model_default_params().use_extra_bufts  # put back


def test_a_quantized_kv_cache_is_tried_only_with_flash_attention(tiny_bundle, tune_dir):
    def table(s):
        return (60.0 if s.kv_type == "q8_0" else 100.0), [[1]]

    p = tune(TuneOptions(bundle=tiny_bundle, dims=("kv_type",)), measure=fake_measure(table))
    assert p.settings.kv_type == "f16"
    assert "needs flash attention" in p.candidates[1]["why"]
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("flash_attn", "kv_type")),
             measure=fake_measure(lambda s: (100.0 - 30 * bool(s.flash_attn)
                                             - 20 * (s.kv_type == "q8_0"), [[1]])))
    assert (p.settings.flash_attn, p.settings.kv_type) == (True, "q8_0")
    with LlavaEdge.load(tiny_bundle, flash_attn=True, kv_type="q8_0", tune=False) as model:
        assert model.ask(None, "Hello", max_new_tokens=2).n_tokens >= 1
    from llava_edge.errors import LlavaEdgeError

    with pytest.raises(LlavaEdgeError, match="needs flash attention"):
        LlavaEdge.load(tiny_bundle, kv_type="q8_0", tune=False)


def test_gpu_settings_are_searched_only_where_the_machine_has_them(tiny_bundle, tune_dir,
                                                                   monkeypatch):
    from llava_edge.runtimes.tune import search

    on_gpu = fake_measure(lambda s: (100.0 - 60 * (s.n_gpu_layers == 999)
                                     - 10 * (s.providers == "cuda"), [[1]]))
    monkeypatch.setattr(search, "gpu_choices", lambda: {
        "n_gpu_layers": (0, 999), "providers": ("auto", "cpu", "cuda")})
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("n_gpu_layers", "providers")),
             measure=on_gpu)
    assert (p.settings.n_gpu_layers, p.settings.providers) == (999, "cuda")
    monkeypatch.setattr(search, "gpu_choices", lambda: {"n_gpu_layers": (0,),
                                                        "providers": ("auto",)})
    cpu_only = fake_measure(lambda s: (100.0, [[1]]))
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("n_gpu_layers", "providers")),
             measure=cpu_only)
    assert len(cpu_only.calls) == 1 and len(p.candidates) == 1  # nothing to try


# -- the tolerance for runtime settings ------------------------------------------------------

def _with_llm_parity(manifest, **by_quant):
    return replace(manifest, parity={**manifest.parity, "llm": {"logits": by_quant}})


def test_the_tolerance_is_what_the_ggufs_export_parity_left_above_its_gate(tiny_bundle):
    from llava_edge.bundle import open_bundle
    from llava_edge.runtimes.tune.search import tolerance_for

    m = open_bundle(tiny_bundle, verify="size").manifest
    assert tolerance_for(m, "Q4_K_M") is None  # no parity recorded: the exact rule
    m = _with_llm_parity(
        m, Q4_K_M={"top1_agreement": 0.97, "top1_threshold": 0.90, "kl_mean": 0.05},
        F16={"top1_agreement": 1.0, "top1_threshold": 1.0, "kl_mean": 1e-6},
        Q8_0={"top1_agreement": 0.97, "top1_threshold": 0.98, "kl_mean": 0.01, "ok": False})
    tol = tolerance_for(m, "Q4_K_M")
    assert tol.disagreement == pytest.approx(0.07) and tol.kl_mean == 0.05
    assert tol.noise == 0.0  # no batched evaluation: every top-1 change counts
    assert tol.admits({"top1_agreement": 0.94, "kl_mean": 0.04, "positions": 100,
                       "flip_leads": [0.5] * 6})
    assert not tol.admits({"top1_agreement": 0.92, "kl_mean": 0.04, "positions": 100,
                           "flip_leads": [0.5] * 8})
    assert not tol.admits({"top1_agreement": 1.0, "kl_mean": 0.06, "positions": 100,
                           "flip_leads": []})  # moved more than Q4
    assert tolerance_for(m, "F16") is None  # gate 1.0: exact
    assert tolerance_for(m, "Q8_0") is None  # missed its gate: nothing to spare

    # the pair's reference evaluated in one batch moved its top-1's lead by up to 0.1
    # logits: llama.cpp's own noise; a top-1 change where the reference led by no more is
    # not counted, one where it led by more is
    batched = {"top1_agreement": 0.875, "kl_mean": 4e-4, "kl_max": 7e-4, "positions": 32,
               "lead_change_max": 0.1, "flip_leads": [0.01, 0.05, 0.06, 0.09]}
    q8 = tolerance_for(m, "Q8_0", batched)
    assert (q8.disagreement, q8.noise, q8.kl_mean) == (0.0, 0.1, 0.01)  # still its own KL
    assert "nothing to spare" in q8.source and "up to 0.1 logits" in q8.source
    near_ties = {"top1_agreement": 29 / 32, "kl_mean": 5e-4, "positions": 32,
                 "flip_leads": [0.002, 0.03, 0.1]}
    assert q8.decided_flips(near_ties) == 0 and q8.admits(near_ties)
    decided = {**near_ties, "flip_leads": [0.002, 0.03, 0.25]}
    assert q8.decided_flips(decided) == 1 and not q8.admits(decided)
    assert not q8.admits({**near_ties, "kl_mean": 0.02})  # the KL bound holds regardless
    q4 = tolerance_for(m, "Q4_K_M", batched)  # 7% of 32 positions: 2 decided changes
    assert q4.admits({**decided, "flip_leads": [0.3, 0.5, 0.01]})
    assert not q4.admits({**decided, "flip_leads": [0.3, 0.5, 0.7]})
    assert tolerance_for(m, "F16", batched) is None  # F16 / F32 stay exact
    no_gate = _with_llm_parity(m, Q4_0={"top1_agreement": 0.2, "top1_threshold": None,
                                        "kl_mean": 0.15})
    assert tolerance_for(no_gate, "Q4_0") is None
    assert tolerance_for(no_gate, "Q4_0", batched).noise == 0.1
    assert tolerance_for(no_gate, "Q4_0", {**batched, "lead_change_max": 0.0}) is None
    assert tolerance_for(no_gate, "Q4_K_M", batched) is None  # no parity: exact


def test_a_top1_change_is_weighed_by_how_far_the_reference_led():
    import numpy as np

    from llava_edge.runtimes.tune.measure import compare

    ref = np.zeros((3, 5), np.float32)
    ref[0, [1, 2]] = 1.0, 0.95     # token 1 leads token 2 by 0.05: a near tie
    ref[1, [3, 0]] = 2.0, 0.0      # token 3 leads by 2 logits: decided
    ref[2, 4] = 1.0
    new = ref.copy()
    new[0, 2] += 0.08              # the near tie flips
    new[1, 0] += 2.5               # the decided position flips
    new[2, 4] += 0.03              # the top-1 keeps its place, its lead grows
    f = compare([ref[:2], ref[2:]], [new[:2], new[2:]])
    assert f["positions"] == 3 and f["top1_agreement"] == pytest.approx(1 / 3)
    assert f["flip_leads"] == pytest.approx([0.05, 2.0], abs=1e-6)
    assert f["lead_change_max"] == pytest.approx(2.5)   # the lead of token 3 over token 0
    same = compare([ref], [ref.copy()])
    assert (same["flip_leads"], same["lead_change_max"], same["top1_agreement"]) == ([], 0, 1)


def test_a_setting_within_the_tolerance_is_taken_and_one_beyond_it_is_not(tiny_bundle,
                                                                         tune_dir,
                                                                         monkeypatch):
    from llava_edge.runtimes.tune import search

    monkeypatch.setattr(search, "tolerance_for",
                        lambda _m, quant, _batched=None: search.Tolerance(0.07, 0.05,
                                                                          f"{quant} test"))

    def table(s):
        if s.repack is False:  # fastest, but flips too many choices
            return 50.0, [[1, 2, 3], [9]], {"top1_agreement": 26 / 32, "kl_mean": 0.01,
                                            "kl_max": 0.1, "positions": 32,
                                            "flip_leads": [0.5] * 6}
        if s.flash_attn:  # faster, one flip in 32 positions
            return 70.0, [[1, 2, 3], [8]], {"top1_agreement": 31 / 32, "kl_mean": 0.01,
                                            "kl_max": 0.1, "positions": 32,
                                            "flip_leads": [0.5]}
        return 100.0, [[1, 2, 3], [4]], {"top1_agreement": 1.0, "kl_mean": 0.0,
                                         "kl_max": 0.0, "positions": 32}

    measure = fake_measure(table)
    p = tune(TuneOptions(bundle=tiny_bundle, dims=("repack", "flash_attn")), measure=measure)
    assert p.settings.flash_attn is True and p.settings.repack is True
    why = {c["changed"]: c["why"] for c in p.candidates}
    assert why["flash_attn=True"].startswith("greedy tokens differ, within the tolerance")
    assert "beyond the tolerance" in why["repack=False"]
    # the pair's reference writes its logits; every other candidate is compared with them
    assert "write" in measure.references[0]
    assert {r["against"] for r in measure.references[1:]} == {measure.references[0]["write"]}
    assert p.figures["fidelity"] == "tolerance"

    exact = tune(TuneOptions(bundle=tiny_bundle, dims=("repack", "flash_attn"),
                             fidelity="exact"), measure=fake_measure(table))
    assert exact.settings.flash_attn is False
    exact_why = {c["changed"]: c["why"] for c in exact.candidates}["flash_attn=True"]
    assert "the exact rule" in exact_why
    assert "top-1 0.969 of 32 reference positions" in exact_why  # how far it moved, still


def test_a_gguf_under_its_gate_may_still_move_its_near_ties(tiny_bundle, tune_dir,
                                                              monkeypatch):
    from llava_edge.runtimes.tune import search

    real, seen = search.tolerance_for, []

    def under_its_gate(m, quant, batched=None):  # the export's parity: 50% against 90%
        seen.append(batched)
        return real(_with_llm_parity(m, **{quant: {"top1_agreement": 0.5, "top1_threshold":
                                                   0.9, "kl_mean": 0.05}}), quant, batched)
    monkeypatch.setattr(search, "tolerance_for", under_its_gate)
    noise = {"top1_agreement": 0.9375, "kl_mean": 4e-4, "kl_max": 7e-4, "positions": 32,
             "lead_change_max": 0.11, "flip_leads": [0.008, 0.014]}

    def table(s):
        if s.repack is False:  # fastest; one of its 3 changes was decided (led by 0.4)
            return 50.0, [[1, 2], [8]], {"top1_agreement": 29 / 32, "kl_mean": 5e-4,
                                         "kl_max": 1e-3, "positions": 32,
                                         "flip_leads": [0.0016, 0.4, 0.0157]}
        if s.flash_attn:  # 3 changes, each where the reference led by less than 0.11
            return 60.0, [[1, 2], [9]], {"top1_agreement": 29 / 32, "kl_mean": 4.8e-4,
                                         "kl_max": 1e-3, "positions": 32,
                                         "flip_leads": [0.06, 0.0016, 0.0049]}
        return 100.0, [[1, 2], [4]], {"top1_agreement": 1.0, "kl_mean": 0.0, "kl_max": 0.0,
                                      "positions": 32, "batched": noise}

    p = tune(TuneOptions(bundle=tiny_bundle, dims=("repack", "flash_attn")),
             measure=fake_measure(table))
    assert (p.settings.repack, p.settings.flash_attn) == (True, True)
    assert seen and all(b == noise for b in seen)  # the reference's noise, for its pair
    why = {c["changed"]: c["why"] for c in p.candidates}
    assert "within the tolerance" in why["flash_attn=True"]
    assert "0 of its 3 top-1 changes where the reference led by more than 0.11" in \
        why["flash_attn=True"]
    assert "beyond the tolerance" in why["repack=False"]
    assert "1 of its 3 top-1 changes" in why["repack=False"]


def test_the_measurement_compares_logits_along_the_reference_answers(tiny_bundle, tmp_path):
    import numpy as np

    from llava_edge.runtimes.tune.measure import Job, measure

    ref = tmp_path / "ref.npz"
    wrote = measure(Job(str(tiny_bundle), {}, repeats=1, max_new_tokens=6,
                        image_size=(96, 64), reference={"write": str(ref)}))
    saved = np.load(ref)
    # the reference beside its own answers evaluated in one batch: the runtime's noise
    noise = wrote["fidelity"]["batched"]
    assert noise["positions"] == sum(len(saved[f"rows{i}"]) for i in range(2))
    assert 0.0 <= noise["top1_agreement"] <= 1.0 and 0.0 <= noise["kl_mean"] < 0.1
    # a change of top-1 in one batch is one the batch split moved a lead by: never more
    assert all(0 <= lead <= noise["lead_change_max"] for lead in noise["flip_leads"])
    assert len(noise["flip_leads"]) == round((1 - noise["top1_agreement"]) * noise["positions"])
    for i, answer in enumerate(wrote["tokens"]):
        rows = saved[f"rows{i}"]
        # fed its own greedy answer, the model's choices are that answer (and its end)
        assert rows.argmax(-1)[:len(answer)].tolist() == answer
        assert len(rows) == len(answer) + (len(answer) < 6)
    again = measure(Job(str(tiny_bundle), {}, repeats=1, max_new_tokens=6,
                        image_size=(96, 64), reference={"against": str(ref)}))
    assert again["fidelity"]["top1_agreement"] == 1.0
    assert again["fidelity"]["kl_mean"] < 1e-6  # the same settings, the same logits
    assert again["fidelity"]["flip_leads"] == [] and again["fidelity"]["lead_change_max"] < 1e-4
    other = measure(Job(str(tiny_bundle), {"n_ubatch": 16, "flash_attn": True}, repeats=1,
                        max_new_tokens=6, image_size=(96, 64), reference={"against": str(ref)}))
    f = other["fidelity"]
    assert f["positions"] == sum(len(saved[f"rows{i}"]) for i in range(2))
    assert 0.0 <= f["top1_agreement"] <= 1.0 and f["kl_mean"] >= 0.0
    assert len(f["flip_leads"]) == round((1 - f["top1_agreement"]) * f["positions"])
    assert all(lead >= 0 for lead in f["flip_leads"])  # the reference's top-1 led


def test_a_background_load_runs_while_measuring_and_stops_after(tiny_bundle, tune_dir):
    import os

    def busy_children():
        me, found = str(os.getpid()), []
        for pid in os.listdir("/proc"):
            try:
                stat = open(f"/proc/{pid}/stat").read()
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me and b"while True: pass" in cmd \
                    and stat.rsplit(")", 1)[1].split()[0] != "Z":
                found.append(pid)
        return found

    seen = []

    def table(s):
        seen.append(len(busy_children()))
        return 100.0, [[1]]

    p = tune(TuneOptions(bundle=tiny_bundle, dims=("n_ubatch",), background_load=2),
             measure=fake_measure(table))
    assert seen and set(seen) == {2}  # both busy processes ran during every measurement
    assert busy_children() == []       # and none is left
    assert p.figures["background_load"] == 2
    with pytest.raises(TuneError, match="background_load"):
        tune(TuneOptions(bundle=tiny_bundle, background_load=-1), measure=fake_measure(table))


# -- tune --export: GGUF types added to the bundle before the search -------------------------

def test_tune_export_adds_a_gguf_type_with_its_parity_and_searches_it(
        tiny_bundle, tiny_checkpoint, tiny_qwen2_checkpoint, tmp_path, tune_dir, capsys):
    from llava_edge.bundle import open_bundle
    from llava_edge.errors import LlavaEdgeError
    from llava_edge.export.bundle_add import add_llm_quants

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    before = bundle_key(bundle)
    with pytest.raises(LlavaEdgeError, match="is not the checkpoint"):
        add_llm_quants(bundle, tiny_qwen2_checkpoint, ["Q4_0"])
    assert open_bundle(bundle, verify="full").manifest.llm_quants == \
        open_bundle(tiny_bundle, verify="size").manifest.llm_quants  # untouched

    assert run(["tune", str(bundle), "--export", str(tiny_checkpoint), "--quants",
                "Q4_0,Q4_K_M", "--settings", "llm_quant", "--repeats", "1",
                "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = open_bundle(bundle, verify="full").manifest  # every file's hash checks out
    assert "Q4_0" in m.llm_quants and (bundle / m.llm_entry("Q4_0").file).is_file()
    assert m.llm_parity("Q4_0")["top1_agreement"] is not None  # measured, as at export
    assert not [p for p in bundle.iterdir() if p.name.startswith(".add-")]
    assert bundle_key(bundle) != before  # a new bundle: older profiles do not apply
    assert "llm_quant=Q4_0" in [c["changed"] for c in out["candidates"]]
    with LlavaEdge.load(bundle, llm_quant="Q4_0", tune=False) as model:
        assert model.ask(None, "Hello", max_new_tokens=2).n_tokens >= 1
    assert add_llm_quants(bundle, tiny_checkpoint, ["Q4_0"])[1] == ()  # there already
