"""Bounds on decoded JSON that the parser itself does not set: how deep it nests, and whether its
text is Unicode that can be stored.

``json.loads`` accepts ``"\\ud800"`` (a lone UTF-16 surrogate: legal JSON, but no Unicode
character), which no UTF-8 encoder, SQLite or JWT library takes; and a value nested a few hundred
levels deep that later recursion (JSON Schema validation, copying) can choke on. Both are found
here, once, where input enters the server, so that no handler ever meets them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 32

# A \\u escape of a surrogate in raw JSON text: only then can a decoded string hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Problem:
    code: str  # "too_deep" or "invalid_text"
    path: tuple[str | int, ...]
    message: str


def may_hold_surrogates(raw: str) -> bool:
    return _SURROGATE_ESCAPE.search(raw) is not None


def is_text(value: str) -> bool:
    """Whether ``value`` is Unicode text (no lone surrogate), that is, encodable as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inspect(
    value: Any, max_depth: int = MAX_DEPTH, skip: frozenset[tuple[str | int, ...]] = frozenset(), text: bool = True
) -> Problem | None:
    """The first value nested deeper than ``max_depth`` or (with ``text``) string or key that is
    not Unicode text, outside the paths in ``skip``; None when there is none. Iterative."""
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, (), 1)]
    while stack:
        item, path, depth = stack.pop()
        if path in skip:
            continue
        if isinstance(item, str):
            if text and not is_text(item):
                return Problem("invalid_text", path, "not Unicode text (a lone surrogate)")
        elif isinstance(item, (dict, list)):
            if depth > max_depth:
                return Problem("too_deep", path, f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if text and not is_text(key):
                        return Problem("invalid_text", path, "a key is not Unicode text (a lone surrogate)")
                    stack.append((child, path + (key,), depth + 1))
            else:
                stack.extend((child, path + (i,), depth + 1) for i, child in enumerate(item))
    return None
