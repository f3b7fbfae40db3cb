"""Training side of llava-edge: build checkpoints from presets and train them in two stages.

Installed as ``llava_edge.trainer``; needs the ``[train]`` extra (torch, transformers).

Checkpoints: ``init_checkpoint`` (presets, random weights), ``tokenizer_build``,
``tokenizer_corpus``. Training (``llava-edge train``): ``train_config`` (settings, stage
presets, recipes) -> ``dataset`` (lazy LLaVA JSON) -> ``conversation`` (templates, loss
masks) -> ``collate`` -> ``step_plan`` (data order) -> ``freezing`` (stages, LoRA) ->
``loop`` (accelerate) with ``checkpoints``, ``metrics``, ``progress``, and ``output`` (the
Hugging Face checkpoint). ``evaluate`` backs ``llava-edge eval``; ``shapes_mc`` writes the
demo's multiple-choice training questions.
"""
