"""The dashboard's screens, one module each (``*_screen.py``); the App that switches them is ``tui.app``."""
