"""Printable text from strings that others chose (client identities, names in `hasync sas`).

Rules: pure, one function; what it returns holds no control character, so printing it cannot
move the cursor, recolour, retitle or clear an operator's terminal: C0 (U+0000 to U+001F),
DEL (U+007F), C1 (U+0080 to U+009F, which include the 8-bit CSI U+009B), the bidirectional
overrides and isolates (U+202A to U+202E, U+2066 to U+2069, which reorder what follows:
"Trojan Source", CVE-2021-42574), the line and paragraph separators (U+2028, U+2029) and lone
surrogates are written as `\\xNN` or `\\uNNNN`, and a backslash as `\\\\`, so an escaped form
in the output always came from this function. An ANSI escape sequence starts with ESC
(U+001B) or CSI (U+009B), so it is shown, never obeyed.
"""

from __future__ import annotations

_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))
_ESCAPED = frozenset(range(0x20)) | {0x7F} | frozenset(range(0x80, 0xA0)) | _BIDI | {
    0x2028, 0x2029}


def _escape(char: str) -> str:
    """One character as it is shown."""
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if code in _ESCAPED or 0xD800 <= code <= 0xDFFF:
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def safe_text(value: object) -> str:
    """`value` as text (str() of it unless it is a str), with every control character escaped."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to escape (isprintable() is False for all above)
    return "".join(_escape(c) for c in text)
