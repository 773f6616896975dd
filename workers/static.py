"""Static files under a configured root: safe path resolution, validators, ranges.

Safety: the request path arrives normalized (no ``..`` segments, no encoded ``/``,
``\\`` or NUL). Remaining %-escapes are decoded, dot-files are refused, the file is
opened with O_NOFOLLOW and the path the kernel actually opened (/proc/self/fd) must lie
inside the root, so neither a symlink nor a race swapping one in can escape it. There is
never a directory listing: a directory serves its ``index`` file or 404.

HTTP: ETag (size and mtime, like nginx), Last-Modified, If-None-Match, If-Modified-Since,
a single byte Range (with If-Range), 416 for unsatisfiable ranges, HEAD. Small files go
out in the same write as the head; larger ones with sendfile(2).
"""

from __future__ import annotations

import email.utils
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from li_httpd.config.model import StaticRoot

from .http1 import Header

SMALL_FILE = 16 * 1024

CONTENT_TYPES = {
    "html": b"text/html; charset=utf-8", "htm": b"text/html; charset=utf-8",
    "css": b"text/css; charset=utf-8", "js": b"text/javascript; charset=utf-8",
    "mjs": b"text/javascript; charset=utf-8", "json": b"application/json",
    "txt": b"text/plain; charset=utf-8", "md": b"text/markdown; charset=utf-8",
    "csv": b"text/csv; charset=utf-8", "xml": b"application/xml", "svg": b"image/svg+xml",
    "png": b"image/png", "jpg": b"image/jpeg", "jpeg": b"image/jpeg", "gif": b"image/gif",
    "webp": b"image/webp", "ico": b"image/x-icon", "avif": b"image/avif",
    "woff": b"font/woff", "woff2": b"font/woff2", "ttf": b"font/ttf",
    "pdf": b"application/pdf", "wasm": b"application/wasm", "zip": b"application/zip",
    "gz": b"application/gzip", "tar": b"application/x-tar", "yaml": b"application/yaml",
    "yml": b"application/yaml", "toml": b"application/toml", "mp4": b"video/mp4",
    "webm": b"video/webm", "mp3": b"audio/mpeg", "wav": b"audio/wav",
    "jsonl": b"application/jsonl", "ndjson": b"application/x-ndjson",
}
DEFAULT_TYPE = b"application/octet-stream"


def content_type(name: str) -> bytes:
    _, dot, extension = name.rpartition(".")
    return CONTENT_TYPES.get(extension.lower(), DEFAULT_TYPE) if dot else DEFAULT_TYPE


@dataclass(frozen=True, slots=True)
class Resolved:
    fd: int
    size: int
    mtime: float
    name: str


@dataclass(frozen=True, slots=True)
class Redirect:
    location: str


class StaticSite:
    """One ``[static.NAME]`` root."""

    __slots__ = ("index", "root")

    def __init__(self, settings: StaticRoot) -> None:
        self.root = os.path.realpath(settings.root)
        self.index = settings.index

    def resolve(self, path: str, public_path: str) -> Resolved | Redirect | None:
        """Open the file for a normalized path; None means 404. The caller closes fd.
        ``public_path`` is the path the client asked for (for a directory redirect)."""
        relative = unquote_to_bytes(path.lstrip("/"))
        if b"\0" in relative or b"\\" in relative:
            return None
        try:
            text = relative.decode("utf-8")
        except UnicodeDecodeError:
            return None
        parts = [p for p in text.split("/") if p]
        if any(p.startswith(".") for p in parts):
            return None
        candidate = os.path.join(self.root, *parts)
        fd = self._open_inside(candidate)
        if fd is None:
            return None
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            os.close(fd)
            if not self.index:
                return None
            if not text.endswith("/") and parts:
                return Redirect(public_path + "/")
            fd = self._open_inside(os.path.join(candidate, self.index))
            if fd is None:
                return None
            info = os.fstat(fd)
            name = self.index
        else:
            name = parts[-1] if parts else ""
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None
        return Resolved(fd, info.st_size, info.st_mtime, name)

    def _open_inside(self, path: str) -> int | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            os.close(fd)
            return None
        if opened != self.root and not opened.startswith(self.root + "/"):
            os.close(fd)
            return None
        return fd


def etag_for(size: int, mtime: float) -> bytes:
    return b'"%x-%x"' % (int(mtime), size)


def last_modified(mtime: float) -> bytes:
    return email.utils.formatdate(mtime, usegmt=True).encode()


def _parse_http_date(value: bytes) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp()


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """Weak comparison (RFC 9110 §8.8.3.2), as If-None-Match requires."""
    if header.strip() == b"*":
        return True
    strong = etag.removeprefix(b"W/")
    return any(tag.strip().removeprefix(b"W/") == strong for tag in header.split(b","))


def precondition_failed(headers: Iterable[Header], etag: bytes, mtime: float) -> bool:
    """RFC 9110 §13.2.2 steps 1-2: True when ``If-Match`` (strong comparison) or, without
    it, ``If-Unmodified-Since`` fails: answer 412, so a resumed download never stitches
    two versions of a file together."""
    if_match: list[bytes] = []
    unmodified_since: bytes | None = None
    for name, value in headers:
        if name == b"if-match":
            if_match.append(value)
        elif name == b"if-unmodified-since":
            unmodified_since = value
    if if_match:
        tags = [tag.strip() for value in if_match for tag in value.split(b",")]
        return b"*" not in tags and etag not in tags  # a weak tag never matches strongly
    if unmodified_since is not None:
        when = _parse_http_date(unmodified_since)
        return when is not None and int(mtime) > int(when)
    return False


def not_modified(headers: Iterable[Header], etag: bytes, mtime: float) -> bool:
    """True when the client's cached copy is current (answer 304)."""
    since: bytes | None = None
    for name, value in headers:
        if name == b"if-none-match":
            return _etag_matches(value, etag)
        if name == b"if-modified-since":
            since = value
    if since is None:
        return False
    when = _parse_http_date(since)
    return when is not None and int(mtime) <= int(when)


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive


def requested_range(headers: Iterable[Header], size: int, etag: bytes,
                    mtime: float) -> ByteRange | bool | None:
    """The single range to serve; None = whole file; False = unsatisfiable (416).

    Multiple ranges and malformed Range headers are ignored (RFC 9110 §14.2 allows a
    server to ignore Range), and so is a Range whose If-Range validator does not match.
    """
    spec: bytes | None = None
    if_range: bytes | None = None
    for name, value in headers:
        if name == b"range":
            spec = value.strip()
        elif name == b"if-range":
            if_range = value.strip()
    if spec is None or not spec.startswith(b"bytes=") or b"," in spec:
        return None
    if if_range is not None:
        if if_range.startswith((b'"', b"W/")):
            if if_range != etag:
                return None
        else:
            when = _parse_http_date(if_range)
            if when is None or int(when) != int(mtime):
                return None
    first, dash, last = spec[6:].partition(b"-")
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        if not last:
            return None
        length = _position(last)
        if length == 0:
            return False
        if size == 0:
            return None  # RFC 9110 §14.1.1: satisfiable; the (empty) whole file is it
        return ByteRange(max(0, size - length), size - 1)
    start = _position(first)
    if start >= size:
        return False
    end = min(_position(last), size - 1) if last else size - 1
    if end < start:
        return None
    return ByteRange(start, end)


_MAX_DIGITS = 18  # below 2**63: any longer number is past the end of every file


def _position(digits: bytes) -> int:
    """A byte position or length from a Range header. RFC 9110 puts no bound on the
    digits; int() on thousands of them is slow and, past 4,300, an error."""
    stripped = digits.lstrip(b"0") or b"0"
    return int(stripped) if len(stripped) <= _MAX_DIGITS else 1 << 62
