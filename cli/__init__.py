"""The ``loratop`` command line (``main``), its ``--no-tui`` printer (``headless``) and
``loratop serve`` (``serve``). The top of the house: it opens the dashboard (``tui/``) and
uses the preflight and the core; nothing imports it but ``loratop/__main__.py``."""
