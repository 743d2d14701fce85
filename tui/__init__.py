"""The Textual dashboard: the App, its screens, and the pure models they draw (panels,
compare, export, the knob form). Never imports torch or its kin, nor the command line."""
