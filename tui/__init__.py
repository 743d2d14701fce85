"""The dashboard and the ``loratop`` command line. Never imports torch or its kin."""
