"""``python -m loratop``: the ``loratop`` command."""

from loratop.tui.cli import main

raise SystemExit(main())
