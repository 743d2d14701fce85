"""What a screen's keys do, read from its ``BINDINGS``: for the help screen and the command palette.

A key is written once, in a screen's ``BINDINGS``: the footer shows its ``description``;
the help screen and the command palette show its ``tooltip`` (the longer "what it does"),
or the description when it has none.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from textual.actions import parse
from textual.binding import Binding, BindingType
from textual.dom import DOMNode
from textual.keys import key_to_character


@dataclass(frozen=True)
class KeyHelp:
    """One binding as the help screen and the command palette show it."""

    keys: str
    """The keys as a user types them: ``s``, ``?``, ``ctrl+p``; several joined with ``/``."""
    action: str
    """The binding's action, as the screen runs it (``stop``, ``app.quit``, ``dismiss(None)``)."""
    label: str
    """The footer's word for it: the binding's description."""
    text: str
    """What it does: the binding's tooltip, else its description."""


def key_label(key: str) -> str:
    """A key as a user types it: the character for a printable one (``question_mark`` → ``?``), else its name."""
    char = key_to_character(key)
    if char is not None and char.isprintable() and not char.isspace():
        return char
    return "esc" if key == "escape" else key


def key_help(bindings: Iterable[BindingType], hidden: Collection[str] = ()) -> list[KeyHelp]:
    """The bindings the footer shows (``show``, and a description or tooltip), in order, as :class:`KeyHelp`.

    Args:
        bindings: A screen's ``BINDINGS``.
        hidden: Actions to leave out: those the screen hides where it is (its ``check_action``).
    """
    rows = []
    for item in bindings:
        binding = item if isinstance(item, Binding) else Binding(*item)
        if not binding.show or not (binding.tooltip or binding.description) or binding.action in hidden:
            continue
        keys = "/".join(binding.key_display or key_label(key.strip()) for key in binding.key.split(","))
        rows.append(KeyHelp(keys, binding.action, binding.description, binding.tooltip or binding.description))
    return rows


def active_key_help(screen: DOMNode) -> list[KeyHelp]:
    """The keys of ``screen``'s ``BINDINGS`` that it has not hidden (its ``check_action``), as the footer shows them.

    A screen that is opened in more than one place may hide a key in one of them (the monitor's
    ``esc back`` with no run history under it); the help and the palette leave it out there too.
    """
    hidden = []
    for row in key_help(screen.BINDINGS):
        namespace, name, parameters = parse(row.action)
        if not namespace and screen.check_action(name, parameters) is False:
            hidden.append(row.action)
    return key_help(screen.BINDINGS, hidden)
