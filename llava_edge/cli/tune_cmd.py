"""``llava-edge tune BUNDLE``: measure this machine once, run at its best settings after."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from llava_edge.cli.common import command_line, emit_json, json_option, progress_bar


def _ints(what: str):
    def parse(_ctx, _param, value):
        if value is None:
            return None
        try:
            out = tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            out = ()
        if not out or min(out) < 1:
            raise click.BadParameter(f"give positive integers separated by commas ({what})")
        return out
    return parse


def _settings(_ctx, _param, value):
    if value is None:
        return None
    from llava_edge.runtimes.tune.search import _DIMS

    names = tuple(v.strip() for v in value.split(",") if v.strip())
    known = sorted({d for dims in _DIMS.values() for d in dims})
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise click.BadParameter(f"unknown setting(s) {bad} (choose from {', '.join(known)})")
    return names


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--objective", type=click.Choice(["first-token", "decode", "answer", "memory"]),
              default="first-token", show_default=True,
              help="What to make small: time to the first token, time per token, time to "
                   "a whole answer (--answer-tokens), or peak memory (--max-first-token-ms).")
@click.option("--budget", "budget_s", default=600.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Seconds of measuring; candidates that would not fit are left out.")
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(1),
              help="Rounds of two cold requests per candidate (after one warm-up).")
@click.option("--max-new-tokens", default=16, show_default=True, type=click.IntRange(2),
              help="Tokens per request (the greedy tokens compared for fidelity).")
@click.option("--answer-tokens", default=64, show_default=True, type=click.IntRange(1),
              help="--objective answer: the answer length it is timed for.")
@click.option("--max-first-token-ms", type=click.FloatRange(0, min_open=True), default=None,
              help="--objective memory: the first-token bound candidates must meet.")
@click.option("--threads", callback=_ints("threads"), default=None, metavar="N,N,...",
              help="Thread counts tried for each stage (default: 1 to all cores).")
@click.option("--ubatch", callback=_ints("ubatch"), default="128,256,512", show_default=True,
              metavar="N,N,...", help="llama.cpp n_ubatch values tried.")
@click.option("--settings", "dims", callback=_settings, default=None, metavar="NAME,...",
              help="Search only these (vision_precision, llm_quant, n_threads, "
                   "n_threads_batch, vision_threads, repack, flash_attn, n_ubatch, kv_type, "
                   "n_gpu_layers, providers); default: those that move the objective.")
@click.option("--tolerance", default=0.03, show_default=True, type=click.FloatRange(0, 0.5),
              help="A setting must beat the best so far by this fraction to be taken.")
@click.option("--give-up", default=0.15, show_default=True, type=click.FloatRange(0),
              metavar="FRACTION",
              help="Stop measuring a candidate whose first timed request is already this "
                   "fraction slower than the best so far (it cannot be taken); 0 measures "
                   "every candidate in full.")
@click.option("--fidelity", type=click.Choice(["tolerance", "exact"]), default="tolerance",
              show_default=True,
              help="A setting whose greedy answers differ is taken only within the "
                   "tolerance (what the GGUF's export parity leaves, changes at near ties "
                   "that llama.cpp's own batching could flip not counted), or never "
                   "(exact).")
@click.option("--background-load", default=0, show_default=True, type=click.IntRange(0),
              metavar="N", help="Keep N busy-loop processes running while measuring: tune "
                                "for a machine that also runs other work (a robot's nodes).")
@click.option("--export", "checkpoint", default=None, metavar="CHECKPOINT",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The checkpoint BUNDLE was exported from: first add the GGUF types of "
                   "--quants it lacks (converted, quantized and parity-checked as the "
                   "export does), so that the search can try them.")
@click.option("--quants", default="Q4_0,Q8_0,Q4_K_M", show_default=True, metavar="LIST",
              help="--export: the GGUF types to have in the bundle.")
@click.option("--save/--no-save", default=True, show_default=True,
              help="Write the profile where LlavaEdge.load finds it "
                   "($LLAVA_EDGE_TUNE_DIR, else ~/.cache/llava-edge/tune).")
@json_option
def tune(bundle, objective, budget_s, repeats, max_new_tokens, answer_tokens,
         max_first_token_ms, threads, ubatch, dims, tolerance, give_up, fidelity,
         background_load, checkpoint, quants, save, as_json):
    """Measure, on this machine, the settings that change BUNDLE's latency (its vision
    graphs and GGUFs whose export gates passed, threads per stage, llama.cpp's
    repacking, flash attention, n_ubatch, the KV cache type) and save the best as a
    profile that `run`, `chat`, `serve`, `watch` and `LlavaEdge.load` then use on this
    machine (`--no-tune` or explicit flags override). A setting is taken only if the
    greedy answers stay token for token the same, or (F16 and F32 excepted) change no
    more than the GGUF's parity at export leaves room for, where they were not a near tie
    that llama.cpp's own batching moves (--fidelity).

    \b
    llava-edge tune bundle/                          # first token, 10 minutes at most
    llava-edge tune bundle/ --objective answer --answer-tokens 32 --budget 300
    llava-edge tune bundle/ --objective memory --max-first-token-ms 8000
    llava-edge tune bundle/ --export checkpoint/ --quants Q4_0,Q8_0   # try more GGUF types
    """
    from llava_edge.runtimes.tune.profile import save_profile
    from llava_edge.runtimes.tune.search import TuneOptions
    from llava_edge.runtimes.tune.search import tune as run_tune

    if checkpoint is not None:
        from llava_edge.export.bundle_add import add_llm_quants

        manifest, added = add_llm_quants(bundle, checkpoint, quants)
        for quant in added:
            fig = (manifest.parity.get("llm") or {}).get(quant) or {}
            top1 = fig.get("top1_agreement")
            print(f"added {quant} to the bundle"
                  + (f" (top-1 {top1:.3f} against PyTorch, gate {fig.get('top1_threshold')})"
                     if top1 is not None else ""), file=sys.stderr)
        if not added:
            print(f"the bundle already holds {quants}", file=sys.stderr)
    opts = TuneOptions(bundle=bundle, objective=objective, budget_s=budget_s, repeats=repeats,
                       max_new_tokens=max_new_tokens, answer_tokens=answer_tokens,
                       max_first_token_ms=max_first_token_ms, threads=threads,
                       ubatch=ubatch, dims=dims, tolerance=tolerance, give_up=give_up,
                       fidelity=fidelity,
                       background_load=background_load,
                       command=command_line(click.get_current_context()))
    with progress_bar("tuning", enabled=not as_json) as progress:
        profile = run_tune(opts, progress=progress,
                           log=None if as_json else lambda line: print(line, file=sys.stderr))
    path = save_profile(profile) if save else None
    if as_json:
        emit_json({"profile": str(path) if path else None, **profile.to_dict()})
        return
    f = profile.figures
    # the figures the search compared: for a winner that moved one stage, that stage
    # measured and the rest the best's before it (see runtimes/tune/stages.py)
    d, t = f["defaults"], {**f["tuned"], **(f["tuned"].get("compared") or {})}
    click.echo(f"best for {objective}: {profile.settings.label()}")
    for name, key, unit in (("first token", "first_token_ms", "ms"),
                            ("per token", "ms_per_token", "ms"),
                            ("peak RSS", "peak_rss_mb", "MB")):
        if d.get(key) and t.get(key):
            click.echo(f"  {name:<12} {d[key]:9.1f} -> {t[key]:9.1f} {unit} "
                       f"({t[key] / d[key]:.2f}x the defaults)")
    if t.get("stage"):
        click.echo(f"  (the winner's {t['stage']} stage as measured, the other stage as "
                   f"measured with the best before it)")
    noise = f.get("noise") or {}
    if any(noise.values()) and objective != "memory":
        click.echo(f"  two runs at the same settings differed by up to "
                   f"{noise.get('vision', 0):.1f} (vision stage) and {noise.get('llm', 0):.1f} "
                   f"(LLM stage) {'ms' if objective != 'decode' else 'ms/token'}: "
                   f"a setting had to beat the best by more")
    stopped = f" ({f['gave_up']} of them stopped after one request)" if f.get("gave_up") else ""
    click.echo(f"  {f['measured']} candidates measured in {f['search_s']:.0f} s "
               f"({f['planned']} planned){stopped}")
    if background_load:
        click.echo(f"  measured with {background_load} busy-loop process(es) running beside it")
    click.echo(f"profile: {path}" if path else "profile not saved (--no-save)")
