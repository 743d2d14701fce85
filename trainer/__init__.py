"""The QLoRA training subprocess (``python -m loratop.trainer``) and the callback API
(:class:`loratop.trainer.callback.LoratopCallback`, for any HF Trainer script).

The only home that imports torch and the training stack (transformers, peft, bitsandbytes,
datasets, TRL). It stands on ``core/`` (the protocol, the run folder, the detectors) and
``preflight/`` (the config schema, data files, the model's ``config.json``), never on the
dashboard. ``tests/test_import_hygiene.py`` and ``tests/test_layers.py`` check both.
"""
