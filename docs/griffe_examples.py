"""Griffe extension: read the project's ``Example:`` docstring sections as examples.

vlm_lens' Google-style docstrings head their doctests ``Example:``; griffe's Google parser
knows only ``Examples:`` and would render the singular heading as prose, where doctest output
such as ``['gate', 'chance']`` reads as Markdown reference links (``--strict`` then fails).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.M)


class SingularExampleSection(griffe.Extension):
    """Rename a docstring's ``Example:`` heading to ``Examples:`` before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: ARG002
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
