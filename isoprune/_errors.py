"""The one exception type isoprune raises for problems a user can fix, and how its hints name
the settings a user can change: as the command line's flags (``--batch-size 8``) inside
``isoprune`` (``command_line``), else as the API's keyword arguments (``batch_size=8``)."""
from __future__ import annotations

import contextlib
import contextvars
import os

_COMMAND_LINE = contextvars.ContextVar("isoprune_command_line", default=False)


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


class UnreachableError(IsopruneError):
    """Pretrained weights or a Hub config that could not be had (offline, not in the cache, gone).
    ``what`` is ``"weights"`` or ``"config"``; a caller that can offer another way round (a
    teacher's own flags) tells them apart by it."""

    def __init__(self, message: str, *, what: str, hint: str | None = None):
        self.what = what
        super().__init__(message, hint=hint)


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """``Type: the first line of its message`` (up to ``limit`` characters), or ``Type`` alone
    where the message is empty (an empty file's ``EOFError``, a bare ``KeyError``)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__


def batch_failed(what: str, n: int, exc: Exception, hint: str, **tensors) -> IsopruneError:
    """The error for the ``n``-th batch (from 1) of user data that the model could not take, with
    the shapes it came in (``inputs=x, targets=y``) and the first line of why."""
    shapes = ", ".join(f"{name} {list(t.shape) if hasattr(t, 'shape') else type(t).__name__}" for name, t in tensors.items())
    return IsopruneError(f"{what} batch {n} ({shapes}) failed: {first_line(exc).rstrip('.')}", hint=hint)


@contextlib.contextmanager
def command_line():
    """Inside it, errors name the command line's flags (``--batch-size``): ``isoprune`` runs its commands in it."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def on_command_line() -> bool:
    return _COMMAND_LINE.get()


def setting(name: str, value=None) -> str:
    """The setting ``name`` (an API keyword, ``batch_size``) as the user gives it here: the flag
    ``--batch-size`` on the command line, else ``batch_size``; with a ``value`` to give,
    ``--batch-size 8`` or ``batch_size=8``. True is a switch (``--force``, ``force=True``); a word in
    capitals (``PATH``, ``N``) stands for what the user fills in, and other words are quoted in Python."""
    if on_command_line():
        flag = "--" + name.replace("_", "-")
        return flag if value is None or value is True else f"{flag} {value}"
    if value is None:
        return name
    text = str(value)
    return f"{name}={text if text.isupper() or not isinstance(value, (str, os.PathLike)) else repr(text)}"
