"""Everything decided before a trainer starts: the config schema (``config``) and the
editor's round-trip save (``config_rewrite``), the model's ``config.json`` (``model_config``,
``architectures``, the shipped ``model_shapes.json``), data files (``data_files``, the
``embedded/`` data), the memory and CPU estimates, the advisor, the shipped samples, and the
launch itself (``launcher``: checks, run folder, the trainer process).

Torch-free; stands on ``core/`` only.
"""
