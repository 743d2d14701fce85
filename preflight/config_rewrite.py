"""Rewrite a config file with a few values changed, and everything else as its author wrote it.

The knob editor saves a config this way: the origin's comments, key order, flow lists
(``[q_proj, v_proj]``) and the spelling of every untouched value (``2.0e-3``, ``True``, ``~``)
stay; only the changed values change. A changed value is spelled as the origin spells its
kind where it can (``1.0e-3`` where the file had ``2.0e-3``, ``0.1`` where it had ``0.05``,
``False`` where it had ``True``), an int stays an int (``32``, never ``32.0``), and a float
is always spelled so that PyYAML reads it as a number (a dot and a signed exponent:
``1.0e-4``, not ``1e-4``, which YAML 1.1 reads as a string). A value the origin does not set
is added where the schema puts it in its section (the section created if needed).

The text is parsed twice: by :func:`core.yaml_files.load_yaml` first, bounded (length,
nesting, aliases expanded) and for the values, then by ruamel.yaml's round-trip parser for
the layout alone; ruamel never builds anything but plain mappings, lists and scalars.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping
from typing import Any

import yaml

from loratop.core.yaml_files import load_yaml
from loratop.preflight.config import RunConfig

_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"

_BOOL_SPELLINGS = (
    ("true", "false"),
    ("True", "False"),
    ("TRUE", "FALSE"),
    ("yes", "no"),
    ("Yes", "No"),
    ("YES", "NO"),
    ("on", "off"),
    ("On", "Off"),
    ("ON", "OFF"),
)
"""YAML 1.1's booleans (what PyYAML reads), by family: a changed bool keeps its family."""


class LayoutLost(Exception):
    """The round-trip parser cannot keep this file's layout (duplicate keys, a root that is not
    a mapping, ...); the message says why. The caller writes the resolved config instead."""


class _Verbatim(str):
    """A plain scalar written back exactly as spelled: a bool or null as read (ruamel would
    respell ``True`` and ``~``), or a number as :func:`_spell_number` spells it."""


def rewrite_config(text: str, changes: Mapping[str, Any]) -> str:
    """``text`` with each dotted path of ``changes`` set to its value; the rest as written.

    A path that already holds the value (as PyYAML reads it: ``16`` for ``16.0``, ``2e-4``
    written without a dot for ``0.0002``), or that is absent and set to ``None``, is left as
    it is, spelling and all.

    Args:
        text: The origin YAML (one mapping of sections).
        changes: Dotted path (``lora.r``, ``parent``) → value (a number, bool, string,
            ``None`` or a list of strings).

    Raises:
        YamlTooBig, yaml.YAMLError, ValueError: ``text`` is refused by :func:`load_yaml`.
        LayoutLost: ruamel.yaml cannot round-trip this text.
    """
    values = load_yaml(text)  # bounded, and the values as the trainer will read them
    if values is not None and not isinstance(values, dict):
        raise LayoutLost(f"the file is a YAML {type(values).__name__}, not a mapping of sections")
    values = values or {}
    todo = {path: value for path, value in changes.items() if not _already(values, path, value)}
    if not todo:
        return text
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    rt = _round_trip(text)
    try:
        root = rt.load(text)
    except YAMLError as exc:  # a duplicate key (PyYAML keeps the last), or YAML ruamel reads otherwise
        why = str(exc).strip().splitlines()
        raise LayoutLost(f"ruamel.yaml cannot keep its layout: {why[0] if why else type(exc).__name__}") from None
    comments_only = root is None
    if comments_only:
        root = CommentedMap()
    if not isinstance(root, CommentedMap):
        raise LayoutLost("the file is not a mapping of sections")
    nulls = _null_spelling(text)
    for path, value in todo.items():
        _set(root, path.split("."), value, nulls)
    out = io.StringIO()
    rt.dump(root, out)
    written = out.getvalue()
    if comments_only and text.strip():
        written = text.rstrip("\n") + "\n" + written
    return written.replace("\r\n", "\n").replace("\n", "\r\n") if "\r\n" in text else written


# -- which values change -------------------------------------------------------------------


def same_value(old: Any, new: Any) -> bool:
    """Whether ``new`` is the value ``old`` already is, as the schema reads them: numbers by value
    (``16`` is ``16.0``; PyYAML's string ``"2e-4"`` is ``0.0002``), a bool only a bool."""
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool) and old == new
    if isinstance(new, (int, float)) and isinstance(old, (int, float, str)):
        try:
            return float(old) == float(new)
        except ValueError:
            return False
    return bool(old == new)


def _already(values: dict[str, Any], path: str, value: Any) -> bool:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return value is None  # absent reads as null
        node = node[part]
    return same_value(node, value)


# -- setting a value where it belongs ------------------------------------------------------


def _schema_order(parts: list[str]) -> list[str]:
    """The keys of the schema section at ``parts`` (the top level for ``[]``), in schema order."""
    model: Any = RunConfig
    for part in parts:
        field = model.model_fields.get(part)
        model = field.annotation if field is not None else None
        if not isinstance(model, type) or not hasattr(model, "model_fields"):
            return []
    return list(model.model_fields)


def _set(root: Any, parts: list[str], value: Any, nulls: str) -> None:
    from ruamel.yaml.comments import CommentedMap

    node = root
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, CommentedMap):
            # A section the file lacks: built whole, then placed (its comment slot is its last key's).
            subtree: Any = _spelled(value, None, nulls)
            for name in reversed(parts[depth + 1 :]):
                subtree = CommentedMap([(name, subtree)])
            if part in node:
                node[part] = subtree  # a section that was not a mapping (`lora: null`)
            else:
                _insert(node, part, subtree, _schema_order(parts[:depth]))
            return
        node = child
    key = parts[-1]
    new = _spelled(value, node.get(key), nulls)
    if key in node:
        _replace(node, key, new)
    else:
        _insert(node, key, new, _schema_order(parts[:-1]))


def _insert(node: Any, key: str, value: Any, order: list[str]) -> None:
    """Add ``key`` after the last key of ``node`` that comes before it in schema order.

    Comment lines that follow the key it goes after describe the key after it: ruamel holds
    them on the earlier key's end-of-line comment, so they are moved to the new key's.
    """
    keys = list(node)
    rank = {name: i for i, name in enumerate(order)}
    mine = rank.get(key, len(order))
    before = [i for i, name in enumerate(keys) if name in rank and rank[name] < mine]
    position = before[-1] + 1 if before else 0
    node.insert(position, key, value)
    if position:
        _move_trailing_comment(node, keys[position - 1], key, last=position == len(keys))


def _trailing_token(node: Any, key: Any) -> tuple[Any, Any, int]:
    """Where the comment after ``node[key]`` lives: ``(container, key or index, slot)``, the
    deepest last entry of a block mapping or list (ruamel attaches it there)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    value = node[key]
    if isinstance(value, (CommentedMap, CommentedSeq)) and len(value) and not value.fa.flow_style():
        last = list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1
        return _trailing_token(value, last)
    if isinstance(value, CommentedSeq) and value.fa.flow_style() and value.ca.comment:
        return value, None, 0  # a flow list holds its end-of-line comment itself
    return node, key, 2 if isinstance(node, CommentedMap) else 0


def _token(where: tuple[Any, Any, int]) -> Any:
    container, key, slot = where
    if key is None:
        return container.ca.comment[slot] if container.ca.comment else None
    item = container.ca.items.get(key)
    return item[slot] if item and len(item) > slot else None


def _move_trailing_comment(node: Any, earlier: str, new_key: str, *, last: bool) -> None:
    """Move the comment lines after ``earlier`` (its end-of-line comment stays) to after ``new_key``,
    just inserted after it, so that they stay before the key they describe. After a new last key of
    a section, only lines that are not indented as deep as its keys move: the ones indented like the
    section's keys close the section, and stay with it."""
    token = _token(_trailing_token(node, earlier))
    if token is None or not isinstance(token.value, str):
        return
    first, _, rest = token.value.partition("\n")
    if not rest:
        return
    if last:
        column = node.lc.key(earlier)[1] if earlier in node.lc.data else 0
        comments = [line for line in rest.splitlines() if line.strip()]
        if any(len(line) - len(line.lstrip()) >= column for line in comments):
            return
    token.value = f"{first}\n" if first.strip() else "\n"  # the earlier key's own end-of-line comment, if any
    _attach(node, new_key, "\n" + rest, token.start_mark)


def _replace(node: Any, key: str, new: Any) -> None:
    """``node[key] = new``: the key keeps its place and its end-of-line comment, and the comment
    lines after a block list it had (held by its last item) stay after the new value."""
    where = _trailing_token(node, key)
    token = _token(where)
    node[key] = new
    if token is None or where[0] is node or where[1] is None:
        return  # held by the key itself (a scalar's or a flow list's line): kept by ruamel
    _, _, rest = str(token.value).partition("\n")  # the old last item's own comment goes with it
    if rest:
        _attach(node, key, "\n" + rest, token.start_mark)


def _attach(node: Any, key: str, text: str, mark: Any) -> None:
    """Put comment ``text`` (lines after a value, starting with its line break) after ``node[key]``."""
    from ruamel.yaml.tokens import CommentToken

    container, slot_key, slot = _trailing_token(node, key)
    token = CommentToken(text, mark, None)
    if slot_key is None:
        container.ca.comment = [token, None]
    else:
        container.ca.items.setdefault(slot_key, [None, None, None, None])[slot] = token


# -- spelling a changed value --------------------------------------------------------------


def _spelled(value: Any, old: Any, nulls: str) -> Any:
    from ruamel.yaml.comments import CommentedSeq
    from ruamel.yaml.scalarstring import ScalarString

    if value is None:
        return _Verbatim(nulls)
    if isinstance(value, bool):
        return _spell_bool(value, old)
    if isinstance(value, (int, float)):
        return _spell_number(value, old)
    if isinstance(value, str):
        return type(old)(value) if isinstance(old, ScalarString) else value  # keeps the quotes it had
    if isinstance(value, (list, tuple)):
        seq = CommentedSeq([_spelled(item, None, nulls) for item in value])
        if not isinstance(old, CommentedSeq) or old.fa.flow_style():
            seq.fa.set_flow_style()  # as the samples write a short list: [q_proj, v_proj]
        return seq
    raise TypeError(f"cannot write a {type(value).__name__} into a config")


def _spell_bool(value: bool, old: Any) -> _Verbatim:
    spelled = str(old) if isinstance(old, str) else "true" if old is True else "false" if old is False else ""
    for family in _BOOL_SPELLINGS:
        if spelled in family:
            return _Verbatim(family[0 if value else 1])
    return _Verbatim("true" if value else "false")


def _spell_number(value: float, old: Any) -> Any:
    """An int as an int; a whole float as an int unless the origin wrote a float there; a float
    in the origin's style (exponent or decimal), else as ``format_value`` does (an exponent below 0.01)."""
    if isinstance(value, int):
        return value
    if value.is_integer() and not isinstance(old, float) and abs(value) < 2**53:
        return int(value)
    # ruamel's ScalarFloat knows how the origin wrote it: "e", "E" or None (no exponent).
    letter = getattr(old, "_exp", None) if isinstance(old, float) else "e" if 0 < abs(value) < 1e-2 else None
    return _Verbatim(_exponent_text(value, letter) if letter else _decimal_text(value))


def _exponent_text(value: float, letter: str = "e") -> str:
    """``1.0e-4``, ``2.5e-5``, ``1.0e+3``: the shortest mantissa that reads back as ``value``, with
    the dot and the signed exponent YAML 1.1 needs to read a number."""
    for digits in range(17):
        text = f"{value:.{digits}e}"
        if float(text) == value:
            break
    mantissa, exponent = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    power = int(exponent)
    return f"{mantissa}{letter}{'-' if power < 0 else '+'}{abs(power)}"


def _decimal_text(value: float) -> str:
    """``0.05``, ``2.0``, ``0.00001``: the shortest decimal that reads back as ``value``."""
    text = repr(value)
    if "e" in text or "E" in text:
        for digits in range(1, 350):
            text = f"{value:.{digits}f}"
            if float(text) == value:
                break
    return text


# -- the round-trip parser ------------------------------------------------------------------


def _round_trip(text: str) -> Any:
    """A ruamel.yaml round-trip parser and writer set to this text's indents, keeping the spelling
    of bools and nulls, never folding a long line."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import RoundTripConstructor
    from ruamel.yaml.nodes import ScalarNode
    from ruamel.yaml.representer import RoundTripRepresenter

    class Constructor(RoundTripConstructor):
        def construct_verbatim(self, node: Any) -> _Verbatim:
            return _Verbatim(node.value)

    Constructor.add_constructor(_NULL, Constructor.construct_verbatim)
    Constructor.add_constructor(_BOOL, Constructor.construct_verbatim)

    class Representer(RoundTripRepresenter):
        def represent_verbatim(self, data: _Verbatim) -> Any:
            tag = self.dumper.resolver.resolve(ScalarNode, str(data), (True, False))
            return self.represent_scalar(tag, str(data))

    Representer.add_representer(_Verbatim, Representer.represent_verbatim)

    rt = YAML(typ="rt")
    rt.Constructor = Constructor
    rt.Representer = Representer
    rt.preserve_quotes = True
    rt.width = 1 << 16  # never fold a long value onto a second line
    mapping, sequence, offset = _indents(text)
    rt.indent(mapping=mapping, sequence=sequence, offset=offset)
    rt.explicit_start = _first_content_line(text).startswith("---")
    return rt


def _first_content_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line
    return ""


def _composed(text: str) -> yaml.Node | None:
    """The text's node graph (PyYAML; the text has passed :func:`load_yaml`'s bounds)."""
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _walk(root: yaml.Node | None) -> list[yaml.Node]:
    nodes, stack, seen = [], [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return nodes


def _indents(text: str) -> tuple[int, int, int]:
    """The text's own indents: a nested mapping's, a block list's items' and its dashes' (each
    relative to its key), the most common of each; ruamel's defaults where the text has none."""
    mappings: Counter[int] = Counter()
    items: Counter[tuple[int, int]] = Counter()
    for node in _walk(_composed(text)):
        if not isinstance(node, yaml.MappingNode) or node.flow_style:
            continue
        for key, value in node.value:
            column = key.start_mark.column
            if isinstance(value, yaml.MappingNode) and value.value and not value.flow_style:
                mappings[value.value[0][0].start_mark.column - column] += 1
            elif isinstance(value, yaml.SequenceNode) and value.value and not value.flow_style:
                items[(value.value[0].start_mark.column - column, value.start_mark.column - column)] += 1
    mapping = mappings.most_common(1)[0][0] if mappings else 2
    sequence, offset = items.most_common(1)[0][0] if items else (mapping, 0)
    if mapping < 1 or sequence < offset + 2:
        return 2, 2, 0
    return mapping, sequence, offset


def _null_spelling(text: str) -> str:
    """How this file writes null (``null``, ``~``, ``Null``, nothing): its most common spelling."""
    spellings = Counter(
        node.value for node in _walk(_composed(text)) if isinstance(node, yaml.ScalarNode) and node.tag == _NULL
    )
    return spellings.most_common(1)[0][0] if spellings else "null"
