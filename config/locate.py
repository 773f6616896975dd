"""Find the source line of every key in a TOML document.

``tomllib`` returns plain dicts with no positions, but every config error must name
the line of the offending key. :class:`SourceMap` scans the same text once and records
where each key path is defined: table headers, dotted keys, array-of-tables elements,
inline-table keys and the elements of (possibly multi-line) arrays. It runs only after
``tomllib`` accepted the text, so it may assume the document is valid TOML; it only has
to understand enough syntax (strings, comments, brackets) never to be fooled by a ``#``,
``[`` or ``=`` inside a string.

Key paths are tuples of ``str`` (table keys) and ``int`` (array indices), exactly the
shape used to walk the parsed document.
"""

from __future__ import annotations

from collections.abc import Iterable

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def format_path(path: Iterable[str | int]) -> str:
    """Render a key path the way users read it: ``route[2].match.path``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
            continue
        text = part if part and all(c in _BARE_KEY_CHARS for c in part) else _quote(part)
        out.append(text if not out else "." + text)
    return "".join(out)


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class SourceMap:
    """Maps key paths of one TOML text to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1
        self._lines: dict[KeyPath, int] = {}
        self._aot_index: dict[KeyPath, int] = {}
        self._scan()

    def has(self, path: KeyPath) -> bool:
        """True when ``path`` itself (not an ancestor) appears in the text."""
        return path in self._lines

    def line_of(self, path: KeyPath) -> int:
        """Line of ``path``, or of its nearest recorded ancestor; 1 if none is known."""
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return 1

    # -- scanning -----------------------------------------------------------------

    def _record(self, path: KeyPath, line: int) -> None:
        self._lines.setdefault(path, line)

    def _peek(self, offset: int = 0) -> str:
        index = self._pos + offset
        return self._text[index] if index < len(self._text) else ""

    def _advance(self, count: int = 1) -> None:
        for _ in range(count):
            if self._pos < len(self._text):
                if self._text[self._pos] == "\n":
                    self._line += 1
                self._pos += 1

    def _skip_inline_space(self) -> None:
        while self._peek() in (" ", "\t", "\r") and self._peek():
            self._advance()

    def _skip_comment(self) -> None:
        if self._peek() == "#":
            while self._peek() and self._peek() != "\n":
                self._advance()

    def _skip_space_comments_newlines(self) -> None:
        while True:
            char = self._peek()
            if char in (" ", "\t", "\r", "\n") and char:
                self._advance()
            elif char == "#":
                self._skip_comment()
            else:
                return

    def _skip_to_next_line(self) -> None:
        while self._peek() and self._peek() != "\n":
            self._advance()
        self._advance()

    def _scan(self) -> None:
        table: KeyPath = ()
        while self._pos < len(self._text):
            self._skip_space_comments_newlines()
            if not self._peek():
                break
            line = self._line
            if self._peek() == "[":
                table = self._table_header(line)
            else:
                parts = self._key()
                full = table + parts
                for end in range(len(table) + 1, len(full) + 1):
                    self._record(full[:end], line)
                self._skip_inline_space()
                self._advance()  # "="
                self._value(full)
            self._skip_to_next_line()

    def _table_header(self, line: int) -> KeyPath:
        array = self._peek(1) == "["
        self._advance(2 if array else 1)
        self._skip_inline_space()
        parts = self._key()
        self._skip_inline_space()
        self._advance(2 if array else 1)
        resolved: KeyPath = ()
        last = len(parts) - 1
        for index, part in enumerate(parts):
            resolved = (*resolved, part)
            if array and index == last:
                self._record(resolved, line)
                element = self._aot_index.get(resolved, -1) + 1
                self._aot_index[resolved] = element
                resolved = (*resolved, element)
            elif resolved in self._aot_index:
                resolved = (*resolved, self._aot_index[resolved])
            self._record(resolved, line)
        return resolved

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip_inline_space()
            char = self._peek()
            if char == '"':
                parts.append(self._basic_string())
            elif char == "'":
                parts.append(self._literal_string())
            else:
                start = self._pos
                while self._peek() and self._peek() in _BARE_KEY_CHARS:
                    self._advance()
                parts.append(self._text[start : self._pos])
            self._skip_inline_space()
            if self._peek() != ".":
                return tuple(parts)
            self._advance()

    def _basic_string(self) -> str:
        self._advance()  # opening quote
        out: list[str] = []
        while self._peek() and self._peek() != '"':
            char = self._peek()
            if char == "\\":
                code = self._peek(1)
                if code in ("u", "U"):
                    width = 4 if code == "u" else 8
                    digits = self._text[self._pos + 2 : self._pos + 2 + width]
                    out.append(chr(int(digits, 16)))
                    self._advance(2 + width)
                    continue
                out.append(_ESCAPES.get(code, code))
                self._advance(2)
                continue
            out.append(char)
            self._advance()
        self._advance()  # closing quote
        return "".join(out)

    def _literal_string(self) -> str:
        self._advance()
        start = self._pos
        while self._peek() and self._peek() != "'":
            self._advance()
        text = self._text[start : self._pos]
        self._advance()
        return text

    def _multiline_string(self, quote: str) -> None:
        self._advance(3)
        while self._peek():
            if quote == '"' and self._peek() == "\\":
                self._advance(2)
                continue
            if self._text.startswith(quote * 3, self._pos):
                self._advance(3)
                # Up to two extra quotes directly before the delimiter belong to the body.
                while self._peek() == quote:
                    self._advance()
                return
            self._advance()

    def _value(self, path: KeyPath) -> None:
        self._skip_inline_space()
        char = self._peek()
        if self._text.startswith('"""', self._pos):
            self._multiline_string('"')
        elif self._text.startswith("'''", self._pos):
            self._multiline_string("'")
        elif char == '"':
            self._basic_string()
        elif char == "'":
            self._literal_string()
        elif char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        else:
            while self._peek() and self._peek() not in ",]}\n#":
                self._advance()

    def _array(self, path: KeyPath) -> None:
        self._advance()
        index = 0
        while True:
            self._skip_space_comments_newlines()
            if self._peek() in ("]", ""):
                self._advance()
                return
            element = (*path, index)
            self._record(element, self._line)
            self._value(element)
            self._skip_space_comments_newlines()
            if self._peek() == ",":
                self._advance()
            index += 1

    def _inline_table(self, path: KeyPath) -> None:
        self._advance()
        while True:
            self._skip_inline_space()
            if self._peek() in ("}", ""):
                self._advance()
                return
            line = self._line
            full = path + self._key()
            for end in range(len(path) + 1, len(full) + 1):
                self._record(full[:end], line)
            self._skip_inline_space()
            self._advance()  # "="
            self._value(full)
            self._skip_inline_space()
            if self._peek() == ",":
                self._advance()
