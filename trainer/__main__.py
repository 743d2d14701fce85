"""``python -m trainer``: the training subprocess (see :mod:`trainer.train`)."""

from __future__ import annotations

import sys

from trainer.train import main

sys.exit(main())
