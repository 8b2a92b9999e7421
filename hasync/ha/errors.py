"""Exceptions of the ha codec.

Rules: bad bytes from the wire raise `MalformedMessage` and nothing else; a caller's
mistake while encoding raises `EncodeError`; the two never substitute for each other.
"""

from __future__ import annotations

from hasync.wire import MalformedBytes


class MalformedMessage(MalformedBytes):
    """A datagram that is not a valid ha message; `offset` is where decoding failed."""

    @staticmethod
    def name_attribute(attribute: str | int) -> str:
        """As `attribute 'NAME'`."""
        return f"attribute {attribute!r}"


class EncodeError(ValueError):
    """A message the caller built cannot be encoded (wrong value type, unknown name, range)."""
