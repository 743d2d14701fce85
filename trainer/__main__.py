"""``python -m loratop.trainer``: the training subprocess (see :mod:`loratop.trainer.train`)."""

from __future__ import annotations

import sys

from loratop.trainer.train import main

sys.exit(main())
