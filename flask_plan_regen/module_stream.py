"""Modules taken from a plan's JSON while the model is still writing it.

The answer is re-read with jiter's partial mode (the JSON parser the ``openai``
SDK already depends on), which returns what is complete so far and an empty
or partial stub for the value being written: a module is complete once the
next one has started, and the last one when the answer has ended. It is
re-read only when a chunk may have closed a module (it holds ``{`` or ``]``),
so a plan costs a few dozen parses, not one per token. What is taken here is
a preview: the whole answer is still checked by output.parse_output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jiter

from .errors import GenerationError
from .output import json_in


class ModuleStream:
    """Feed it the answer's text piece by piece; it hands out each module once complete."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self.taken = 0
        """Modules handed out so far."""

    def feed(self, piece: str) -> list[tuple[int, Any]]:
        """The ``(index, module)`` pairs that ``piece`` completed, in order (usually none)."""
        self._pieces.append(piece)
        if "{" not in piece and "]" not in piece:
            return []
        modules = self._modules_so_far()
        return self._take(modules[:-1])  # the last one may still be being written

    def finish(self) -> list[tuple[int, Any]]:
        """The modules not handed out yet, once the answer has ended."""
        try:
            document = json_in("".join(self._pieces))
        except GenerationError:  # not a plan: output.parse_output says why
            return []
        modules = document.get("modules") if isinstance(document, Mapping) else None
        return self._take(modules if isinstance(modules, list) else [])

    def _modules_so_far(self) -> list[Any]:
        text = "".join(self._pieces)
        start = text.find("{")
        if start == -1:
            return []
        try:
            # As the SDK itself calls it: complete values, and a stub for the one being written.
            document = jiter.from_json(text[start:].encode(), partial_mode=True)
        except ValueError:  # text after the object (a closing fence): finish() reads it
            return []
        modules = document.get("modules") if isinstance(document, dict) else None
        return modules if isinstance(modules, list) else []

    def _take(self, modules: list[Any]) -> list[tuple[int, Any]]:
        new = list(enumerate(modules))[self.taken :]
        self.taken = max(self.taken, len(modules))
        return new
