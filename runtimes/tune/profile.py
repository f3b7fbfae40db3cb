"""Runtime settings and the tuning profile that chooses them per machine and bundle.

:class:`RuntimeSettings` holds the knobs that change latency and memory without changing
the model: which of the bundle's vision graphs and GGUFs, threads (vision, llama.cpp
prefill and decode), llama.cpp's weight repacking, flash attention, ``n_ubatch``, the
KV cache's type, and where there is a GPU the layers offloaded and ONNX Runtime's provider.
``None`` in a field means "not chosen": the built-in default (:data:`DEFAULTS`) applies.

``llava-edge tune`` measures them on the machine it runs on and writes a
:class:`TuneProfile` keyed by the machine (CPU model and ISA, cores, GPUs, the versions of
llama.cpp and ONNX Runtime) and the bundle (its manifest's hash), in the profile folder
(``$LLAVA_EDGE_TUNE_DIR``, else ``~/.cache/llava-edge/tune``). ``LlavaEdge.load`` looks up
the profile for this machine and bundle and uses its settings for every argument the
caller did not give (:func:`resolve`); a profile made on another machine or for another
bundle is never used, and :func:`lookup` says why.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from llava_edge.atomic_dir import write_json
from llava_edge.errors import LlavaEdgeError

log = logging.getLogger(__name__)

PROFILE_FORMAT = "llava-edge-tune-profile"
PROFILE_VERSION = 1


class TuneProfileError(LlavaEdgeError):
    """A profile named explicitly that cannot be used here (unreadable, or made for
    another bundle or machine)."""


@dataclass(frozen=True)
class RuntimeSettings:
    """What ``LlavaEdge.load`` can be told besides the bundle; None = not chosen."""

    vision_precision: str | None = None
    llm_quant: str | None = None
    vision_threads: int | None = None   # ONNX Runtime intra-op threads
    n_threads: int | None = None        # llama.cpp, decode (one token at a time)
    n_threads_batch: int | None = None  # llama.cpp, prefill (batches of positions)
    repack: bool | None = None          # llama.cpp's load-time weight repacking
    flash_attn: bool | None = None
    n_ubatch: int | None = None         # llama.cpp's physical batch (positions per step)
    kv_type: str | None = None          # KV cache: f16, or q8_0 (needs flash_attn)
    n_gpu_layers: int | str | None = None  # llama.cpp layers offloaded, or "auto"
    providers: str | None = None        # ONNX Runtime: auto, cpu, cuda, tensorrt

    def over(self, base: "RuntimeSettings") -> "RuntimeSettings":
        """These settings, with ``base``'s wherever this has None."""
        return RuntimeSettings(**{f.name: getattr(base, f.name) if getattr(self, f.name) is None
                                  else getattr(self, f.name) for f in fields(self)})

    def chosen(self) -> dict:
        """The fields that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.chosen().items()) or "defaults"


# What the runtime does when nothing chooses otherwise (threads None: every core; the
# graph and GGUF None: the manifest's defaults; "auto": every layer on a GPU when
# llama.cpp has one, the best ONNX Runtime provider installed).
DEFAULTS = RuntimeSettings(repack=True, flash_attn=False, n_ubatch=512, kv_type="f16",
                           n_gpu_layers="auto", providers="auto")


def resolve(explicit: RuntimeSettings, profile: "TuneProfile | None") -> RuntimeSettings:
    """Explicit arguments first, then the profile's choice, then :data:`DEFAULTS`."""
    tuned = profile.settings if profile is not None else RuntimeSettings()
    return explicit.over(tuned).over(DEFAULTS)


# -- keys --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    return json.dumps(_probe_machine())


def machine_description() -> dict:
    """What a measurement depends on besides the bundle: CPU, GPUs, library versions
    (probed once per process)."""
    return json.loads(_machine())


def _probe_machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from llava_edge.cpu_features import this_cpu

    cpu = this_cpu()
    libs = {}
    for pkg in ("llama_cpp_python", "onnxruntime", "onnxruntime-gpu"):
        try:
            libs[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"cpu_model": cpu.model, "arch": cpu.arch, "isa_class": cpu.isa_class,
            "features": sorted(k for k, v in cpu.features.items() if v),
            "cores": cpu.cores, "gpus": _gpu_names(), "libraries": libs,
            "llama_cpp_build": _llama_cpp_build()}


def _llama_cpp_build() -> list[str]:
    """The kernels llama.cpp was compiled with (CPU flags, GPU backends): the same version
    rebuilt with AMX (see scripts/amx_probe.sh) turns the best settings around on one CPU
    (repacking off won without it; with it, repacking on is what switches AMX on)."""
    from llava_edge.doctor import probe_llama_cpp

    info = probe_llama_cpp()
    return sorted(set(info.cpu_flags) | set(info.gpu_backends))


def _gpu_names() -> list[str]:
    try:
        from llava_edge.doctor import probe_gpus

        return sorted(g.name for g in probe_gpus())
    except Exception:  # noqa: BLE001 - a probe that fails means no GPU we can use
        return []


def machine_key(description: dict) -> str:
    return _digest(description)


def bundle_key(bundle_dir: str | os.PathLike) -> str:
    """A hash of the bundle's manifest (which lists every file's hash)."""
    return hashlib.sha256((Path(bundle_dir) / "manifest.json").read_bytes()).hexdigest()[:16]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# -- profiles -----------------------------------------------------------------------------


@dataclass
class TuneProfile:
    """The winner of one ``llava-edge tune`` run, with what was measured."""

    machine: dict
    bundle: str                    # bundle_key
    bundle_path: str               # where it was, for people
    settings: RuntimeSettings
    objective: str
    figures: dict = field(default_factory=dict)   # {"tuned": {...}, "defaults": {...}}
    candidates: list = field(default_factory=list)  # every measurement, in order
    created: str | None = None
    command: str | None = None

    @property
    def machine_key(self) -> str:
        return machine_key(self.machine)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["settings"] = self.settings.chosen()
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "TuneProfile":
        if d.get("format") != PROFILE_FORMAT or d.get("version") != PROFILE_VERSION:
            raise ValueError("not a llava-edge tune profile of this version")
        names = {f.name for f in fields(RuntimeSettings)}
        unknown = set(d["settings"]) - names
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        return cls(machine=d["machine"], bundle=d["bundle"], bundle_path=d["bundle_path"],
                   settings=RuntimeSettings(**d["settings"]), objective=d["objective"],
                   figures=d.get("figures", {}), candidates=d.get("candidates", []),
                   created=d.get("created"), command=d.get("command"))


def profile_dir() -> Path:
    env = os.environ.get("LLAVA_EDGE_TUNE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "llava-edge" / "tune"


def profile_path(bundle: str, machine: str, root: Path | None = None) -> Path:
    return (root or profile_dir()) / bundle / f"{machine}.json"


def save_profile(profile: TuneProfile, root: Path | None = None) -> Path:
    path = profile_path(profile.bundle, profile.machine_key, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, profile.to_dict())
    return path


def read_profile(path: str | os.PathLike) -> TuneProfile:
    try:
        return TuneProfile.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a usable tune profile ({e})") from None


@dataclass
class Lookup:
    """The profile that applies here (or None) and, when none does, why."""

    profile: TuneProfile | None
    path: Path | None
    note: str


def lookup(bundle_dir: str | os.PathLike, machine: dict | None = None,
           root: Path | None = None) -> Lookup:
    """The profile for this machine and ``bundle_dir``. Profiles for the same bundle made
    on other machines, and unreadable files, are named in the note and never used."""
    bkey = bundle_key(bundle_dir)
    none = Lookup(None, None, "no tune profile for this bundle on this machine "
                              "(llava-edge tune BUNDLE makes one)")
    if not profile_path(bkey, "-", root).parent.is_dir():
        return none  # the common case: no profile at all, and no need to probe the machine
    machine = machine if machine is not None else machine_description()
    mkey = machine_key(machine)
    path = profile_path(bkey, mkey, root)
    if path.is_file():
        try:
            p = read_profile(path)
        except ValueError as e:
            return Lookup(None, None, f"ignored: {e}")
        if p.bundle == bkey and p.machine_key == mkey:
            return Lookup(p, path, f"tuned profile {path} ({p.settings.label()})")
        return Lookup(None, None, f"ignored {path}: made for another machine or bundle")
    others = sorted(path.parent.glob("*.json")) if path.parent.is_dir() else []
    if others:
        diffs = []
        for o in others[:3]:
            try:
                diffs.append(_differences(read_profile(o).machine, machine))
            except ValueError:
                diffs.append("unreadable")
        return Lookup(None, None, f"no profile for this machine; ignored {len(others)} made "
                                  f"on other machines ({'; '.join(diffs)}): run llava-edge tune")
    return none


def _differences(theirs: dict, ours: dict) -> str:
    """What differs between two machine descriptions, for people (two fields at most)."""
    keys = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    named = [f"{k}: {theirs.get(k)!r} there" for k in keys if k != "features"][:2]
    return ", ".join(named) or ("CPU features differ" if keys else "same description")


def find_profile(bundle_dir: str | os.PathLike,
                 tune: bool | str | os.PathLike | None) -> tuple[TuneProfile | None, str]:
    """What ``LlavaEdge.load(tune=...)`` uses: True looks the profile up (and logs why
    none applies when profiles from other machines are there); a path must be a profile
    for this bundle and machine (else :class:`TuneProfileError`); False/None: none."""
    if tune is None or tune is False:
        return None, "tuning off"
    if tune is True:
        found = lookup(bundle_dir)
        if found.profile is not None:
            log.info("%s", found.note)
        elif "other machines" in found.note or found.note.startswith("ignored"):
            log.warning("%s", found.note)
        return found.profile, found.note
    try:
        profile = read_profile(tune)
    except ValueError as e:
        raise TuneProfileError(str(e)) from None
    if profile.bundle != bundle_key(bundle_dir):
        raise TuneProfileError(f"{tune}: the profile was made for another bundle "
                               f"({profile.bundle_path}), not {bundle_dir}")
    here = machine_description()
    if profile.machine_key != machine_key(here):
        raise TuneProfileError(f"{tune}: the profile was made on another machine "
                               f"({_differences(profile.machine, here)})")
    return profile, f"tuned profile {tune} ({profile.settings.label()})"
