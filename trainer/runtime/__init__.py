"""The training subprocess (``python -m loratop.trainer``): the only part of loratop that imports
torch, transformers, peft, bitsandbytes, datasets or TRL.

:mod:`~trainer.runtime.train` (setup → fit, the HF callbacks), :mod:`~trainer.runtime.audit`
(the frozen-base audit), :mod:`~trainer.runtime.memory_sampler` and
:mod:`~trainer.runtime.memory_watch` (memory on a thread and at step boundaries),
:mod:`~trainer.runtime.cupti_spills` (the CUPTI adapter), :mod:`~trainer.runtime.tiny_model`
(the embedded model's builder) and :mod:`~trainer.runtime.event_sink` (events.jsonl + pipe).
Everything in ``trainer/`` outside this folder is torch-free and shared with the dashboard;
``tests/test_import_hygiene.py`` keeps it so.
"""
