"""The QLoRA training subprocess and the torch-free modules the dashboard shares with it.

Torch-free: :mod:`trainer.events`, :mod:`trainer.config`, :mod:`trainer.data_files`,
:mod:`trainer.architectures`, :mod:`trainer.run_dir`. Everything that imports torch
does so inside functions, so importing those never loads it.
"""
