"""The one error a launched run ends with in the user's words: :class:`UserFacingError`."""

from __future__ import annotations


class UserFacingError(Exception):
    """A failure the user can fix; its message is shown as is, without a traceback."""


__all__ = ["UserFacingError"]
