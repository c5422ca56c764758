"""The one exception type isoprune raises for problems a user can fix."""
from __future__ import annotations


class IsopruneError(ValueError):
    """A user error, carrying what it concerns (model, group, ratio, ...) and what to do.

    ``str(err)`` is a single line, so a CLI can print it as is.
    """

    def __init__(self, message: str, *, hint: str | None = None, **context):
        self.message = message
        self.hint = hint
        self.context = context
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.message
        if self.context:
            text += " (" + ", ".join(f"{k}={v!r}" for k, v in self.context.items()) + ")"
        if self.hint:
            text += f"; {self.hint}"
        return text
