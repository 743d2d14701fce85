"""The torch-free core everything else stands on: the event protocol (``events``), the run
folder and its liveness (``run_dir``), the run model (``run_state``, ``run_index``,
``run_summary``), the run history (``runs``, ``archive``), event streams (``event_stream``),
rank facts (``distributed``), the NVML adapter (``gpu_devices``) and the pure detectors
(``spikes``, ``spills``, ``oom_forecast``, ``overfit``, ``gpu_busy``, ``cpu_busy``).

It imports no other home of loratop: the stdlib, pyyaml and psutil only.
"""
