"""Errors users see as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class AlignloopError(Exception):
    """Base class: the CLI prints ``str(err)`` and exits non-zero."""


class ConfigError(AlignloopError):
    """A config file or override is invalid; the message names the file and the key."""


class ModelError(AlignloopError):
    """A model name or directory cannot be resolved or loaded."""


class DataError(AlignloopError):
    """Bad records. ``problems`` holds every ``file:line: field: reason`` found (up to a cap)."""

    def __init__(self, problems: list[str] | str, total: int | None = None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.total = total if total is not None else len(self.problems)
        head = self.problems[0] if self.problems else "invalid data"
        if self.total > 1:
            shown = "\n  ".join(self.problems)
            more = f"\n  ... and {self.total - len(self.problems)} more" if self.total > len(self.problems) else ""
            msg = f"{self.total} problems in the data:\n  {shown}{more}"
        else:
            msg = head
        super().__init__(msg)
