"""A deterministic synthetic dataset in the LLaVA JSON format: coloured shapes on a grid.

Every image is drawn from a :class:`Scene` (one to three :class:`Shape` objects, each in its
own cell of a 3x3 grid), and every caption, question and answer is generated from that same
scene, so the answers are exact. The generator writes::

    root/
      images/train/000000.png ...   shared by stage 1 and stage 2 (as in LLaVA)
      images/eval/000000.png ...    held out, used only by the eval set
      stage1_captions.json          one short caption per train image (pretrain format)
      stage2_instruct.json          conversation / detailed description / reasoning + text-only
      eval_mc.json                  multiple choice, ScienceQA prompt style
      dataset.json                  config, counts, palette, generator version
      README.txt

Only numpy and Pillow are used. All randomness comes from ``numpy.random.default_rng``
seeded with ``[config.seed, stream, index]``: the same seed gives byte-identical files, and a
sample does not depend on how many others are generated (the first 30 train images of a
2000-image set are the 30 images of a 30-image set).

The package, one module per step: :mod:`.config` (palette, grid, file names, random
streams, :class:`ShapesConfig`), :mod:`.scenes`, :mod:`.drawing`, :mod:`.refer`
(referring expressions), :mod:`.texts` (captions and questions), :mod:`.samples` (LLaVA
JSON samples, the multiple-choice eval) and :mod:`.writing` (:func:`generate_shapes`).
Everything public is importable from here.
"""

from __future__ import annotations

from llava_edge.data.shapes.config import (
    ABSENT_SHAPE,
    BACKGROUND,
    CAPTION_PROMPTS,
    CELL_NAMES,
    COLORS,
    COL_WORDS,
    DETAIL_PROMPTS,
    EVAL_FILE,
    EVAL_KINDS,
    GENERATOR_VERSION,
    IMAGE_MARKER,
    KINDS,
    MC_INSTRUCTION,
    MC_OPTION_ORDERS,
    MC_REPLIES,
    NUMBER_WORDS,
    ROW_WORDS,
    SIZES,
    SIZE_FRACTION,
    STAGE1_FILE,
    STAGE2_FILE,
    TEXT_ONLY_FRACTION,
    OutputExistsError,
    ShapesConfig,
    ShapesConfigError,
    ShapesDataset,
)
from llava_edge.data.shapes.drawing import (
    render_scene,
    shape_box,
)
from llava_edge.data.shapes.refer import (
    refer,
)
from llava_edge.data.shapes.samples import (
    MCQuestion,
    eval_kinds,
    eval_scene_and_sample,
    mc_sample,
    mix_text_only,
    stage1_sample,
    stage2_kinds,
    stage2_sample,
    text_only_sample,
    train_scene,
)
from llava_edge.data.shapes.scenes import (
    Scene,
    Shape,
    location_phrase,
    sample_scene,
)
from llava_edge.data.shapes.texts import (
    QA,
    caption,
    conversation_turns,
    detailed_description,
    reasoning_qa,
)
from llava_edge.data.shapes.writing import (
    generate_shapes,
)

__all__ = [
    "ABSENT_SHAPE",
    "BACKGROUND",
    "CAPTION_PROMPTS",
    "CELL_NAMES",
    "COLORS",
    "COL_WORDS",
    "DETAIL_PROMPTS",
    "EVAL_FILE",
    "EVAL_KINDS",
    "GENERATOR_VERSION",
    "IMAGE_MARKER",
    "KINDS",
    "MC_INSTRUCTION",
    "MC_OPTION_ORDERS",
    "MC_REPLIES",
    "NUMBER_WORDS",
    "ROW_WORDS",
    "SIZES",
    "SIZE_FRACTION",
    "STAGE1_FILE",
    "STAGE2_FILE",
    "TEXT_ONLY_FRACTION",
    "OutputExistsError",
    "ShapesConfig",
    "ShapesConfigError",
    "ShapesDataset",
    "Scene",
    "Shape",
    "location_phrase",
    "sample_scene",
    "render_scene",
    "shape_box",
    "refer",
    "QA",
    "caption",
    "conversation_turns",
    "detailed_description",
    "reasoning_qa",
    "MCQuestion",
    "eval_kinds",
    "eval_scene_and_sample",
    "mc_sample",
    "mix_text_only",
    "stage1_sample",
    "stage2_kinds",
    "stage2_sample",
    "text_only_sample",
    "train_scene",
    "generate_shapes",
]
