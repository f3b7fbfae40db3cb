"""Stage 0: pretrain a tiny vision tower on the synthetic shapes, once per machine.

LLaVA never starts from a random vision tower: its CLIP was pretrained by others, on far
more compute than LLaVA's own two stages, and stays frozen in both. A `tiny` preset tower
is random, and a random tower carries the shapes' kinds poorly (a linear probe reads the
kind of a cell's shape from its patch features 47-72% of the time, measured). This is the
stand-in for CLIP's pretraining, sized for a CPU: the tower learns, for each of its patch
tokens, what the 3x3 grid cell under the patch's centre holds (empty or not, the shape's
kind, colour and size) and which cell that is, from scenes drawn by the shapes generator
on a random stream of their own (never a train or eval image, never a question).
Per-token linear heads on the features LLaVA reads (``vision_feature_layer``) make those
features linearly readable where they sit, which is what the projector and the LLM then
look up.

Why this objective (measured on the `tiny` tower, 2 CPU threads; the issue #25 table has
the others): contrastive training on the captions left kind at 72-73% (telling captions
apart in a batch never needs the kind); per-cell supervision from a pooled head reached
85-86% in 120 s; per-token heads on the read layer, 2,000 steps of 64 scenes (~140 s on
one AVX-512 core): occupied 93% -> 100%, kind 48% -> 99.3%, colour 86% -> 99.9%, size
81% -> 100%, cell 72% -> 100% (the probe, random tower -> pretrained).

The result is cached (like the llama.cpp wheel) under ``$LLAVA_EDGE_TOWER_CACHE`` (else
``~/.cache/llava-edge/towers``), keyed by the tower's initial weights and config, this
config and the generator's version, so a later demo on the same machine skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llava_edge.atomic_dir import atomic_path, write_dir, write_json
from llava_edge.errors import LlavaEdgeError
from llava_edge.progress import Progress

#: Bumped when the objective or the labels change, so that old cached towers are not reused.
OBJECTIVE_VERSION = "1"
#: The per-token heads: what the cell under a patch's centre holds, and how many classes.
TARGETS: tuple[tuple[str, int], ...] = (("occupied", 2), ("kind", 3), ("color", 6),
                                        ("size", 2), ("cell", 9))
_STREAM_SCENES = 2001  # a random stream of its own, apart from the generator's
_STREAM_PROBE_TEST = 2002
_PROBE_TRAIN, _PROBE_TEST, _PROBE_STEPS = 4000, 1000, 600


@dataclass(frozen=True)
class VisionPretrainConfig:
    """How stage 0 trains (defaults: the demo's)."""

    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3  # peak; linear warm-up, then linear decay to 5%
    warmup_steps: int = 200
    weight_decay: float = 0.01
    n_scenes: int = 20000  # rendered once and drawn from at random
    seed: int = 0
    #: Which tokens learn a shape: ``cell``, every token whose patch centre lies in the
    #: shape's grid cell (1-4 tokens per shape); ``object``, the one token whose patch
    #: holds the shape's centre (one token per shape, so a count of shapes is a count of
    #: tokens).
    targets: str = "cell"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "n_scenes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LlavaEdgeError(f"VisionPretrainConfig.{name} must be a positive "
                                     f"integer, got {getattr(self, name)!r}")
        if self.targets not in ("cell", "object"):
            raise LlavaEdgeError(f"VisionPretrainConfig.targets must be 'cell' or 'object', "
                                 f"got {self.targets!r}")
        if not self.learning_rate > 0:
            raise LlavaEdgeError(f"VisionPretrainConfig.learning_rate must be > 0, "
                                 f"got {self.learning_rate}")


@dataclass
class VisionPretrainResult:
    """What stage 0 did: figures of a linear probe on the read features before and after
    (held-out scenes; per target, accuracy over the patch tokens it applies to), and
    whether the tower came from the cache."""

    output_dir: str
    probe_before: dict[str, float]
    probe_after: dict[str, float]
    steps: int
    seconds: float  # training and probes; 0 when the tower came from the cache
    cached: bool
    cache_file: str | None
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def tower_cache_dir() -> Path:
    env = os.environ.get("LLAVA_EDGE_TOWER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llava-edge" / "towers"


def pretrain_vision(checkpoint: str | Path, output_dir: str | Path,
                    config: VisionPretrainConfig = VisionPretrainConfig(), *,
                    use_cache: bool = True, overwrite: bool = False,
                    progress: Progress | None = None) -> VisionPretrainResult:
    """Write ``output_dir``: the LLaVA checkpoint ``checkpoint`` with its vision tower
    pretrained (see the module docstring); the rest is unchanged. The folder appears
    complete or not at all; its ``config.json`` records the figures under
    ``llava_edge.vision_pretraining``."""
    from safetensors.torch import load_file, save_file

    from llava_edge.data.shapes import GENERATOR_VERSION
    from llava_edge.export.open_checkpoint import load_llava

    src, out = Path(checkpoint), Path(output_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise LlavaEdgeError(f"{out} exists and is not empty (use --force to replace it)")
    loaded = load_llava(src)
    model, processor = loaded.model, loaded.processor
    tower, layer = _tower(model), model.config.vision_feature_layer
    if not isinstance(layer, int):
        raise LlavaEdgeError(f"{src}: stage 0 needs one vision_feature_layer, "
                             f"got {layer!r}")
    key = _cache_key(tower, model.config.vision_config.to_dict(), layer, config,
                     GENERATOR_VERSION)
    cache = tower_cache_dir() / f"{key}.safetensors"
    start = time.perf_counter()
    if use_cache and cache.exists() and cache.with_suffix(".json").exists():
        try:
            tower.load_state_dict(load_file(str(cache)))
            cached = json.loads(cache.with_suffix(".json").read_text())
            before, after = cached["probe_before"], cached["probe_after"]
        except Exception as e:  # a damaged cache entry: name it, never train over it
            raise LlavaEdgeError(f"cached vision tower {cache} cannot be read ({e}); "
                                 f"delete it or pass --no-cache") from e
        result = VisionPretrainResult(str(out), before, after, config.steps, 0.0, True,
                                      str(cache), asdict(config))
    else:
        data = _Scenes(processor, tower.config, config)
        before = probe(tower, layer, data)
        _train(tower, layer, data, config, progress)
        after = probe(tower, layer, data)
        result = VisionPretrainResult(str(out), before, after, config.steps,
                                      round(time.perf_counter() - start, 1), False,
                                      str(cache) if use_cache else None, asdict(config))
        if use_cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.contiguous() for k, v in tower.state_dict().items()}
            with atomic_path(cache) as tmp:
                save_file(state, str(tmp))
            write_json(cache.with_suffix(".json"), result.to_dict())

    def fill(tmp: Path) -> None:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        for old in tmp.glob("*.safetensors*"):  # the weights are written again below
            old.unlink()
        model.config.llava_edge = {**(getattr(model.config, "llava_edge", None) or {}),
                                   "vision_pretraining": result.to_dict()}
        model.save_pretrained(tmp)

    write_dir(out, fill)
    return result


def probe(tower, layer: int, data: "_Scenes") -> dict[str, float]:
    """Accuracy of per-token linear heads trained on the frozen features (held-out scenes)."""
    import torch

    torch.manual_seed(0)
    n_train = min(_PROBE_TRAIN, len(data.images))
    with torch.no_grad():
        train = _features(tower, layer, data.pixels(range(n_train)))
        test = _features(tower, layer, data.test_pixels)
    heads = _Heads(train.shape[-1])
    opt = torch.optim.AdamW(heads.parameters(), lr=3e-3)
    labels = data.token_labels(range(n_train))
    g = torch.Generator().manual_seed(0)
    for _ in range(_PROBE_STEPS):
        idx = torch.randint(0, len(train), (256,), generator=g)
        loss, _ = heads.loss(train[idx], labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, acc = heads.loss(test, data.test_labels)
    return {name: round(a, 4) for (name, _), a in zip(TARGETS, acc)}


# -- the pieces ---------------------------------------------------------------------------


def _tower(model):
    tower = getattr(model.model, "vision_tower", None) or getattr(model, "vision_tower")
    if tower.config.model_type not in ("clip_vision_model", "siglip_vision_model"):
        raise LlavaEdgeError(f"stage 0 pretrains CLIP or SigLIP towers, not "
                             f"{tower.config.model_type}")
    return tower


def _cache_key(tower, vision_config: dict, layer: int, config: VisionPretrainConfig,
               generator_version: str) -> str:
    """Everything the pretrained tower depends on: its starting weights and config, the
    layer read, this config, the generator and the objective (and torch's version: its
    kernels decide the float rounding of the result)."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps([vision_config, layer, asdict(config), generator_version,
                         OBJECTIVE_VERSION, torch.__version__], sort_keys=True,
                        default=str).encode())
    for name, tensor in sorted(tower.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class _Scenes:
    """Scenes rendered at the tower's input size, their per-token labels and the
    processor's normalization (the images are square at the tower's size, so its resize
    and crop leave them as they are)."""

    def __init__(self, processor, vision_config, config: VisionPretrainConfig):
        import torch

        from llava_edge.data.shapes import COLORS, KINDS, SIZES, render_scene, sample_scene
        from llava_edge.data.shapes.drawing import shape_box

        size, patch = vision_config.image_size, vision_config.patch_size
        grid = size // patch
        # The grid cell under each patch token's centre, row by row as the tower orders them.
        cell_1d = [min(2, int((j + 0.5) * patch * 3 / size)) for j in range(grid)]
        self.token_cell = torch.tensor([cell_1d[r] * 3 + cell_1d[c]
                                        for r in range(grid) for c in range(grid)])
        image_processor = getattr(processor, "image_processor", processor)
        self.mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
        colors = list(COLORS)

        def draw(n: int, stream: int):
            rng = np.random.default_rng([config.seed, stream])
            images = np.empty((n, size, size, 3), np.uint8)
            # Per token; -100: not applicable (a shape's attributes on an empty token).
            labels = np.full((n, grid * grid, len(TARGETS)), -100, np.int64)
            labels[:, :, 0] = 0
            token_cell = self.token_cell.numpy()
            labels[:, :, 4] = token_cell  # where a token is, to be read back
            for i in range(n):
                scene = sample_scene(rng)
                images[i] = np.asarray(render_scene(scene, size))
                for s in scene.shapes:
                    values = (1, KINDS.index(s.kind), colors.index(s.color),
                              SIZES.index(s.size), s.row * 3 + s.col)
                    if config.targets == "cell":  # every token over the shape's cell
                        labels[i, token_cell == s.row * 3 + s.col] = values
                    else:  # the one token whose patch holds the shape's centre
                        x0, y0, x1, y1 = shape_box(s, size)
                        row = min(grid - 1, int((y0 + y1) / 2 // patch))
                        col = min(grid - 1, int((x0 + x1) / 2 // patch))
                        labels[i, row * grid + col] = values
            return images, torch.from_numpy(labels)

        self.images, self.labels = draw(config.n_scenes, _STREAM_SCENES)
        test_images, self.test_labels = draw(_PROBE_TEST, _STREAM_PROBE_TEST)
        self.test_pixels = self._normalize(test_images)

    def _normalize(self, images: np.ndarray):
        import torch

        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std

    def pixels(self, index):
        return self._normalize(self.images[np.asarray(list(index))])

    def token_labels(self, index):
        return self.labels[np.asarray(list(index))]


def _features(tower, layer: int, pixels, batch: int = 256):
    """The patch features LLaVA reads: ``hidden_states[layer]`` without CLIP's class token."""
    import torch

    drop = 1 if tower.config.model_type == "clip_vision_model" else 0
    return torch.cat([tower(pixels[i:i + batch], output_hidden_states=True)
                      .hidden_states[layer][:, drop:] for i in range(0, len(pixels), batch)])


class _Heads:
    """One linear head per target over layer-normed token features (a linear probe)."""

    def __init__(self, width: int):
        import torch.nn as nn

        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleList([nn.Linear(width, k) for _, k in TARGETS])

    def parameters(self):
        return [*self.norm.parameters(), *self.heads.parameters()]

    def loss(self, features, labels) -> tuple[object, list[float]]:
        import torch.nn.functional as F

        x = self.norm(features)
        total, accuracy = 0.0, []
        for j, head in enumerate(self.heads):
            logits, y = head(x), labels[..., j]
            total = total + F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                            y.reshape(-1), ignore_index=-100)
            applies = y != -100
            right = ((logits.argmax(-1) == y) & applies).sum().item()
            accuracy.append(right / max(int(applies.sum().item()), 1))
        return total, accuracy


def _train(tower, layer: int, data: _Scenes, config: VisionPretrainConfig,
           progress: Progress | None) -> None:
    import torch

    torch.manual_seed(config.seed)
    heads = _Heads(tower.config.hidden_size)
    # Layers above the one read get no gradient; AdamW leaves parameters without one alone.
    params = [*tower.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    tower.train()
    for step in range(config.steps):
        warm = min(1.0, (step + 1) / config.warmup_steps)
        decay = max(0.05, 1.0 - step / config.steps)
        for group in opt.param_groups:
            group["lr"] = config.learning_rate * warm * decay
        idx = torch.randint(0, len(data.images), (config.batch_size,), generator=g)
        loss, _ = heads.loss(_features(tower, layer, data.pixels(idx.tolist())),
                             data.token_labels(idx.tolist()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, config.steps)
    tower.eval()
