"""What the wire codecs (charon's ha messages, XFRM netlink) share: the malformed-bytes error.

Rules: bytes from outside that do not decode raise a subclass of `MalformedBytes` naming the
reason, the byte offset and the attribute when there is one; each codec keeps its own
subclass (`hasync.ha.MalformedMessage`, `hasync.xfrm.MalformedMessage`) so a caller catches
exactly the codec it called.
"""

from __future__ import annotations


class MalformedBytes(ValueError):
    """Bytes that do not decode; `offset` is where decoding failed."""

    def __init__(self, reason: str, *, attribute: str | int | None = None, offset: int) -> None:
        where = f"at offset {offset}"
        if attribute is not None:
            where += f" in {self.name_attribute(attribute)}"
        super().__init__(f"{reason} ({where})")
        self.reason = reason
        self.attribute = attribute
        self.offset = offset

    @staticmethod
    def name_attribute(attribute: str | int) -> str:
        """How the message names the attribute that failed."""
        return str(attribute)
