"""Exceptions of the ha codec.

Rules: bad bytes from the wire raise `MalformedMessage` and nothing else; a caller's
mistake while encoding raises `EncodeError`; the two never substitute for each other.
"""

from __future__ import annotations


class MalformedMessage(ValueError):
    """A datagram that is not a valid ha message; `offset` is where decoding failed."""

    def __init__(self, reason: str, *, attribute: str | int | None = None, offset: int) -> None:
        where = f"at offset {offset}"
        if attribute is not None:
            where += f" in attribute {attribute!r}"
        super().__init__(f"{reason} ({where})")
        self.reason = reason
        self.attribute = attribute
        self.offset = offset


class EncodeError(ValueError):
    """A message the caller built cannot be encoded (wrong value type, unknown name, range)."""
