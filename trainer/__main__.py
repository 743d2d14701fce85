"""``python -m loratop.trainer``: the training subprocess (see :mod:`trainer.runtime.train`)."""

from __future__ import annotations

import sys

from loratop.trainer.runtime.train import main

sys.exit(main())
