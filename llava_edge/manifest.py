"""The bundle manifest (``manifest.json``), typed: the one contract between export and runtime.

Each section is a frozen dataclass read by ``from_dict``, which checks every field the
runtime reads and raises :class:`ManifestError` (a :class:`BundleError`) naming the field
at fault, e.g. ``prompt.chat_template is missing``; ``to_dict`` gives the JSON back in the
same shape. Figures that are reported but never acted on (parity figures, quantizer
settings, tool versions, training metadata) stay plain dicts.

Schema 1 is the only version so far; a bundle of another version is refused with a
message saying to re-export it. Defaults live here once (:data:`DEFAULT_N_CTX`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from llava_edge.errors import BundleError
from llava_edge.runtimes.preprocess import PreprocessRecipe

BUNDLE_FORMAT = "llava-edge-bundle"
SCHEMA_VERSION = 1
#: The runtime's context length when a bundle does not say (schema 1 always says).
DEFAULT_N_CTX = 2048


class ManifestError(BundleError):
    """A manifest field that is missing or of the wrong kind."""


# -- reading one JSON object, naming the field at fault -----------------------------------

_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
          dict: "an object", list: "a list"}


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


class _Fields:
    """The fields of one JSON object at ``path`` (e.g. ``vision[1]``) of the manifest."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, dict):
            raise ManifestError(f"{path} must be an object, got {_show(data)}")
        self.data, self.path = data, path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def req(self, key: str, kind: type, positive: bool = False):
        """A required field (present and not null)."""
        if self.data.get(key) is None:
            raise ManifestError(f"{self.at(key)} is missing")
        return self._check(key, self.data[key], kind, positive)

    def opt(self, key: str, kind: type, default=None, positive: bool = False):
        """An optional field: ``default`` when absent or null."""
        value = self.data.get(key)
        return default if value is None else self._check(key, value, kind, positive)

    def obj(self, key: str, required: bool = False) -> "_Fields":
        value = self.data.get(key)
        if value is None and not required:
            value = {}
        elif value is None:
            raise ManifestError(f"{self.at(key)} is missing")
        return _Fields(value, self.at(key))

    def strings(self, key: str) -> tuple[str, ...]:
        items = self.opt(key, list, [])
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ManifestError(f"{self.at(key)}[{i}] must be a string, got {_show(item)}")
        return tuple(items)

    def objects(self, key: str, required: bool = False) -> list["_Fields"]:
        items = self.req(key, list) if required else self.opt(key, list, [])
        return [_Fields(item, f"{self.at(key)}[{i}]") for i, item in enumerate(items)]

    def _check(self, key: str, value, kind: type, positive: bool):
        if not _is(value, kind):
            raise ManifestError(f"{self.at(key)} must be {_KINDS[kind]}, got {_show(value)}")
        if positive and value <= 0:
            raise ManifestError(f"{self.at(key)} must be positive, got {value}")
        return float(value) if kind is float else value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the sections -------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where the bundle came from (reported, never acted on)."""

    checkpoint: str | None = None
    preset: str | None = None
    random_init: bool = False
    training: dict | None = None
    vision: str | None = None  # clip, siglip
    text: str | None = None    # llama, mistral, qwen2

    @classmethod
    def read(cls, f: _Fields) -> "Source":
        return cls(checkpoint=f.opt("checkpoint", str), preset=f.opt("preset", str),
                   random_init=f.opt("random_init", bool, False),
                   training=f.opt("training", dict), vision=f.opt("vision", str),
                   text=f.opt("text", str))


@dataclass(frozen=True)
class ImageSpec:
    n_tokens: int         # image positions per image in the LLM's sequence
    n_embd: int           # width of each image embedding (= the LLM's)
    token_id: int         # the <image> token's id, replaced by the embeddings
    token: str = "<image>"
    image_size: int | None = None

    @classmethod
    def read(cls, f: _Fields) -> "ImageSpec":
        token_id = f.req("token_id", int)
        if token_id < 0:
            raise ManifestError(f"{f.at('token_id')} must not be negative, got {token_id}")
        return cls(n_tokens=f.req("n_tokens", int, positive=True),
                   n_embd=f.req("n_embd", int, positive=True), token_id=token_id,
                   token=f.opt("token", str, "<image>"),
                   image_size=f.opt("image_size", int, positive=True))


@dataclass(frozen=True)
class PromptSpec:
    template: str                       # a name from llava_edge.templates, or "custom"
    chat_template: str                  # Jinja, Hugging Face chat-template conventions
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ...
    stop: tuple[str, ...] = ()
    image_placement: str | None = None  # a description, for people
    n_ctx: int = DEFAULT_N_CTX

    @classmethod
    def read(cls, f: _Fields) -> "PromptSpec":
        special = f.opt("special_tokens", dict, {})
        for key, value in special.items():
            if not isinstance(value, str):
                raise ManifestError(f"{f.at('special_tokens')}.{key} must be a string, got "
                                    f"{_show(value)}")
        return cls(template=f.req("template", str), chat_template=f.req("chat_template", str),
                   special_tokens=dict(special), stop=f.strings("stop"),
                   image_placement=f.opt("image_placement", str),
                   n_ctx=f.opt("n_ctx", int, DEFAULT_N_CTX, positive=True))


@dataclass(frozen=True)
class VisionGraph:
    """One ONNX vision graph (vision tower + projector)."""

    precision: str                  # fp32, fp16, int8, int4
    file: str
    format: str = "onnx"
    data_file: str | None = None    # external weights (graphs over 2 GB)
    n_embd: int | None = None
    gate: float | None = None       # the parity gate it was held to
    passed: bool | None = None
    parity: dict = field(default_factory=dict)  # figures measured at export
    method: dict = field(default_factory=dict)  # quantizer settings (reduce_range, ...)
    note: str | None = None
    fallback: str | None = None     # int4 that missed its gate: the precision used instead

    @property
    def files(self) -> list[str]:
        return [self.file] + ([self.data_file] if self.data_file else [])

    @classmethod
    def read(cls, f: _Fields) -> "VisionGraph":
        return cls(precision=f.req("precision", str), file=f.req("file", str),
                   format=f.opt("format", str, "onnx"), data_file=f.opt("data_file", str),
                   n_embd=f.opt("n_embd", int, positive=True), gate=f.opt("gate", float),
                   passed=f.opt("passed", bool), parity=f.opt("parity", dict, {}),
                   method=f.opt("method", dict, {}), note=f.opt("note", str),
                   fallback=f.opt("fallback", str))


@dataclass(frozen=True)
class TensorrtEngine:
    precision: str
    file: str
    format: str = "tensorrt"
    sidecar: str | None = None      # JSON: the TensorRT version and GPU it was built for
    parity: dict | None = None
    passed: bool | None = None

    @classmethod
    def read(cls, f: _Fields) -> "TensorrtEngine":
        return cls(precision=f.req("precision", str), file=f.req("file", str),
                   format=f.opt("format", str, "tensorrt"), sidecar=f.opt("sidecar", str),
                   parity=f.opt("parity", dict), passed=f.opt("passed", bool))


@dataclass(frozen=True)
class LanguageModel:
    """One GGUF language model."""

    quant: str                      # F16, Q8_0, Q4_K_M, ...
    file: str
    n_embd: int | None = None
    size: int | None = None         # bytes

    @classmethod
    def read(cls, f: _Fields) -> "LanguageModel":
        return cls(quant=f.req("quant", str), file=f.req("file", str),
                   n_embd=f.opt("n_embd", int, positive=True), size=f.opt("size", int))


@dataclass(frozen=True)
class Mmproj:
    """The projector as GGUF, for stock llama.cpp / Ollama (not used by the runtime)."""

    file: str
    type: str | None = None

    @classmethod
    def read(cls, f: _Fields) -> "Mmproj":
        return cls(file=f.req("file", str), type=f.opt("type", str))


@dataclass(frozen=True)
class AnyresSpec:
    """LLaVA-NeXT's tiling (:mod:`llava_edge.runtimes.anyres`); absent for LLaVA-1.5.

    Each image becomes a base view plus a grid of tiles chosen from ``pinpoints``; the
    vision graph runs on all of them as one batch, and the runtime packs the features
    (unpad, ``image_newline`` after every row) into ``AnyresPlan.n_positions`` rows.
    ``image.n_tokens`` is then the features of one tile."""

    pinpoints: tuple[tuple[int, int], ...]  # (height, width), multiples of tile_size
    tile_size: int                          # the tower's input size
    patch_size: int
    strategy: str                           # vision_feature_select_strategy: default | full
    num_additional_image_tokens: int        # tokens besides the patches (CLIP's CLS: 1)
    newline_file: str                       # float32 [n_embd] .npy: the image_newline vector
    merge: str = "spatial_unpad"            # mm_patch_merge_type; the only one supported

    @classmethod
    def read(cls, f: _Fields) -> "AnyresSpec":
        pins = f.req("pinpoints", list)
        if not pins or not all(isinstance(p, list) and len(p) == 2
                               and all(_is(x, int) and x > 0 for x in p) for p in pins):
            raise ManifestError(f"{f.at('pinpoints')} must be a non-empty list of "
                                f"[height, width] pairs, got {_show(pins)}")
        strategy = f.req("strategy", str)
        if strategy not in ("default", "full"):
            raise ManifestError(f"{f.at('strategy')} must be 'default' or 'full', got "
                                f"{_show(strategy)}")
        merge = f.opt("merge", str, "spatial_unpad")
        if merge != "spatial_unpad":
            raise ManifestError(f"{f.at('merge')} {merge!r} is not supported by this "
                                "llava-edge (it runs 'spatial_unpad')")
        extra = f.req("num_additional_image_tokens", int)
        if extra < 0:
            raise ManifestError(f"{f.at('num_additional_image_tokens')} must not be negative")
        return cls(pinpoints=tuple((p[0], p[1]) for p in pins),
                   tile_size=f.req("tile_size", int, positive=True),
                   patch_size=f.req("patch_size", int, positive=True), strategy=strategy,
                   num_additional_image_tokens=extra,
                   newline_file=f.req("newline_file", str), merge=merge)


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str

    @classmethod
    def read(cls, f: _Fields) -> "FileEntry":
        size, digest = f.req("size", int), f.req("sha256", str)
        if size < 0 or len(digest) != 64:
            raise ManifestError(f"{f.path} has a bad size or sha256 ({size}, {_show(digest)})")
        return cls(size=size, sha256=digest)


# -- the manifest ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    preprocess: PreprocessRecipe
    image: ImageSpec
    prompt: PromptSpec
    vision: tuple[VisionGraph, ...]
    llm: tuple[LanguageModel, ...]
    defaults: dict[str, str | None] = field(default_factory=dict)  # {"vision", "llm"}
    source: Source = Source()
    tensorrt: tuple[TensorrtEngine, ...] = ()
    mmproj: Mmproj | None = None
    anyres: AnyresSpec | None = None  # LLaVA-NeXT bundles only
    parity: dict = field(default_factory=dict)  # figures at export, and measured_on
    tools: dict = field(default_factory=dict)   # versions of the tools that wrote it
    created: str | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)  # filled by write_manifest
    format: str = BUNDLE_FORMAT
    schema_version: int = SCHEMA_VERSION

    # -- reading ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """Check and read a parsed ``manifest.json``; :class:`ManifestError` names the
        first field at fault."""
        f = _Fields(data, "")
        if f.data.get("format") != BUNDLE_FORMAT:
            raise ManifestError(f"not a llava-edge bundle manifest (format is "
                                f"{_show(f.data.get('format'))}, not {BUNDLE_FORMAT!r})")
        version = f.data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"schema version {version!r} is not supported by this "
                                f"llava-edge (it reads version {SCHEMA_VERSION}): re-export "
                                "the bundle with this llava-edge")
        defaults = f.obj("defaults")
        return cls(
            preprocess=_recipe(f.obj("preprocess", required=True)),
            image=ImageSpec.read(f.obj("image", required=True)),
            prompt=PromptSpec.read(f.obj("prompt", required=True)),
            vision=tuple(VisionGraph.read(v) for v in f.objects("vision", required=True)),
            llm=tuple(LanguageModel.read(e) for e in f.objects("llm", required=True)),
            defaults={"vision": defaults.opt("vision", str), "llm": defaults.opt("llm", str)},
            source=Source.read(f.obj("source")),
            tensorrt=tuple(TensorrtEngine.read(e) for e in f.objects("tensorrt")),
            mmproj=Mmproj.read(f.obj("mmproj")) if f.data.get("mmproj") is not None else None,
            anyres=(AnyresSpec.read(f.obj("anyres")) if f.data.get("anyres") is not None
                    else None),
            parity=f.opt("parity", dict, {}), tools=f.opt("tools", dict, {}),
            created=f.opt("created", str),
            files={name: FileEntry.read(_Fields(entry, f"files[{name!r}]"))
                   for name, entry in f.req("files", dict).items()},
        )

    def to_dict(self) -> dict:
        """The JSON object written as ``manifest.json`` (the shape schema 1 has always had)."""
        d = dataclasses.asdict(self)
        head = {"format": d.pop("format"), "schema_version": d.pop("schema_version")}
        files = d.pop("files")
        return json.loads(json.dumps(head | d | {"files": files}))  # tuples -> lists

    # -- what the runtime asks -------------------------------------------------------------

    @property
    def vision_precisions(self) -> list[str]:
        return [v.precision for v in self.vision]

    @property
    def llm_quants(self) -> list[str]:
        return [e.quant for e in self.llm]

    def vision_entry(self, precision: str | None = None) -> VisionGraph:
        """The vision graph of ``precision`` (default: the bundle's default)."""
        return _pick(self.vision, "precision", precision or self.defaults.get("vision"),
                     "vision graph")

    def llm_entry(self, quant: str | None = None) -> LanguageModel:
        """The GGUF language model of ``quant`` (default: the bundle's default)."""
        return _pick(self.llm, "quant", quant or self.defaults.get("llm"), "language model")

    def llm_parity(self, quant: str) -> dict:
        """The logit parity figures measured at export for the GGUF of ``quant`` (top-1
        agreement with PyTorch, its gate, KL, ...); empty when none were measured."""
        figures = ((self.parity.get("llm") or {}).get("logits") or {}).get(quant)
        return figures if isinstance(figures, dict) else {}

    def mmproj_parity(self) -> dict:
        """How close llama.cpp's own image embeddings (mtmd + the mmproj) came to PyTorch's
        at export (``cosine_min``, ``cosine_mean``, ...); empty when none were measured."""
        figures = (self.parity.get("llm") or {}).get("mmproj")
        return figures if isinstance(figures, dict) else {}

    @property
    def exact_pair(self) -> tuple[str, str]:
        """The (vision precision, LLM quant) closest to PyTorch: fp32 and F32 / F16 when
        the bundle has them, else its first of each."""
        vision = next((v.precision for v in self.vision if v.precision == "fp32"),
                      self.vision[0].precision)
        llm = next((e.quant for e in self.llm if e.quant in ("F32", "F16")), self.llm[0].quant)
        return vision, llm

    def referenced_files(self) -> list[str]:
        """Every file a section names (each must be in ``files``)."""
        refs = [name for v in self.vision for name in v.files]
        refs += [e.file for e in self.llm] + [e.file for e in self.tensorrt]
        refs += [e.sidecar for e in self.tensorrt if e.sidecar]
        refs += [self.anyres.newline_file] if self.anyres else []
        return refs + ([self.mmproj.file] if self.mmproj else [])

    def check_consistent(self) -> None:
        """The parts fit together: widths agree, defaults name entries that exist."""
        if not self.vision:
            raise ManifestError("vision lists no graph")
        if not self.llm:
            raise ManifestError("llm lists no language model")
        n_embd = self.image.n_embd
        for v in self.vision:
            if v.n_embd not in (None, n_embd):
                raise ManifestError(f"vision graph {v.file} outputs width {v.n_embd}, but the "
                                    f"language model's embedding width is {n_embd}")
        for e in self.llm:
            if e.n_embd not in (None, n_embd):
                raise ManifestError(f"language model {e.file} has embedding width {e.n_embd}, "
                                    f"but the image embeddings are {n_embd} wide")
        self.vision_entry()  # the defaults must name entries (a BundleError says which)
        self.llm_entry()


def _pick(entries, key: str, value: str | None, what: str):
    if value is None:
        return entries[0]
    for entry in entries:
        if getattr(entry, key).lower() == value.lower():
            return entry
    have = ", ".join(getattr(e, key) for e in entries)
    raise BundleError(f"no {what} with {key} {value!r} in the bundle (it has: {have})")


def _recipe(f: _Fields) -> PreprocessRecipe:
    """The preprocessing recipe, every field checked (a wrong one would give wrong pixels
    without an error)."""
    def size(key: str) -> int | None:
        return f.opt(key, int, positive=True)

    def stats(key: str) -> tuple[float, float, float]:
        values = f.req(key, list)
        if len(values) != 3 or not all(_is(x, float) for x in values):
            raise ManifestError(f"{f.at(key)} must be 3 numbers, got {_show(values)}")
        return tuple(float(x) for x in values)

    recipe = PreprocessRecipe(
        resize_shortest_edge=size("resize_shortest_edge"), resize_height=size("resize_height"),
        resize_width=size("resize_width"), crop_height=size("crop_height"),
        crop_width=size("crop_width"), resample=f.req("resample", int),
        rescale_factor=f.req("rescale_factor", float), image_mean=stats("image_mean"),
        image_std=stats("image_std"), pad_to_square=f.opt("pad_to_square", bool, False))
    if not (recipe.crop_height or (recipe.resize_height and recipe.resize_width)):
        raise ManifestError(f"{f.path} has neither a crop size nor a fixed resize size")
    return recipe
