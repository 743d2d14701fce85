"""``python -m loratop``: the ``loratop`` command."""

from loratop.cli.main import main

raise SystemExit(main())
