"""How a config value and a short number are spelled: one rule for ``check``'s warnings, the
advisor, the knob editor and ``compare``.

Standard library only: the dashboard uses it, and the config schema (pydantic) is kept out
of the dashboard's import.
"""

from __future__ import annotations

import math
import re
from typing import Any


def sci(value: float) -> str:
    """A number in short scientific form: ``2e-3``, ``2.5e-4``, ``1e+0`` → ``1``."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    mantissa, exponent = f"{value:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    power = int(exponent)
    return mantissa if power == 0 else f"{mantissa}e{power}"


def short_number(value: float, digits: int = 6) -> str:
    """A number as a sentence spells it: ``0.03``, ``0.0002``, ``2e-5``, ``128`` (``%g`` with
    a short exponent)."""
    text = f"{value:.{digits}g}"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m[1] == "-" else "") + m[2], text)


def format_value(value: Any) -> str:
    """A config value as YAML spells it: ``true``, ``null``, ``2e-4``, ``[q_proj, v_proj]``.

    The one spelling of a knob's value in ``check``'s warnings, the advisor, the knob editor
    and ``compare``.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e6:
            return str(int(value))  # 16, not 16.0
        return sci(value) if 0 < abs(value) < 1e-2 else f"{value:g}"  # 2e-4, not 0.0002
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)
