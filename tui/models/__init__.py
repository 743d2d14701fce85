"""What the dashboard's screens draw, as plain data and text, with no widget in sight: the
monitor's labels (``panels``), the history table's layout (``run_table``), compare's model,
the knob form, the log pane's lines, export, and the messages screens post. Tested without
a terminal; the ``--no-tui`` printer uses the same labels."""
