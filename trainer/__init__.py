"""The QLoRA training subprocess and the torch-free modules the dashboard shares with it.

``trainer/runtime/`` is the subprocess (``python -m loratop.trainer``) and the only place that may
import torch and the training stack. Every other module here is torch-free: the protocol
(events), the config schema, the run folder, data files, architectures, the model's
``config.json`` lookup, the NVML adapter, the pre-flight estimate, the advisor and the pure
detectors (spikes, spills, OOM forecast). ``tests/test_import_hygiene.py`` checks both halves.
"""
