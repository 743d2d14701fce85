"""Reading YAML that anyone may have written: a config, a run folder's ``config.yaml``, a ``--set`` value.

``yaml.safe_load`` is safe from code execution, not from size: a 1 KB file of nested aliases
(a "billion laughs") composes into a small graph that expands to billions of values as soon
as anything walks it (validation, a diff, a table), and a 100,000-deep ``[[[[…`` ends in a
``RecursionError``. :func:`load_yaml` bounds all three: the text's length, the nesting (PyYAML's
composer recurses; Python's stack ends it), and the *expanded* number of values, counted over
the composed graph with every alias followed, before anything is built from it. Standard
library and PyYAML only: the dashboard reads run configs with it.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_YAML_BYTES = 1 << 20
"""A run config is a few KiB; a larger file is a data file or damage (1 MiB)."""
MAX_YAML_VALUES = 100_000
"""Values (scalars, lists, mappings, keys) a config may expand to, aliases followed; a run
config has a few hundred."""


class YamlTooBig(ValueError):
    """A YAML text past one of the bounds; the message says which, in words."""


def load_yaml(text: str, max_values: int = MAX_YAML_VALUES, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse one YAML document safely and within bounds.

    Raises:
        YamlTooBig: The text is longer than ``max_bytes``, nested past Python's stack, or
            expands (aliases followed) to more than ``max_values`` values.
        yaml.YAMLError: The text is not YAML.
        ValueError: A value PyYAML cannot build (e.g. an integer of more than 4,300 digits).
    """
    if len(text) > max_bytes:
        raise YamlTooBig(f"{len(text) / (1 << 20):.1f} MiB of YAML, more than {max_bytes >> 10} KiB")
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlTooBig("nested too deeply") from None
        if node is None:
            return None
        expanded = _expanded_size(node, max_values)
        if expanded > max_values:
            raise YamlTooBig(f"expands to more than {max_values:,} values (aliases followed): an alias bomb?")
        try:
            return loader.construct_document(node)
        except RecursionError:
            raise YamlTooBig("nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Values under ``root`` with every alias expanded, computed once per node (an alias is the
    same node object in the composed graph), stopping as soon as it passes ``limit``. A
    recursive alias (a node inside itself) expands without end: ``limit + 1``."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            sizes[key] = min(size, limit + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:
            return limit + 1
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
