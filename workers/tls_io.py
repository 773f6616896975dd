"""TLS over a :class:`~.sockio.SocketIO`, for ``https://`` upstream peers.

``ssl.SSLObject`` with memory BIOs does the TLS work; this class moves bytes between
those BIOs and the socket with the same non-blocking, deadline-bounded I/O as plain
connections, and offers the same methods, so the proxy does not care which it has.
Certificates are verified against the system trust store (or the upstream's
``ca_file``) with the peer's host name (SNI and hostname check); TLS 1.2 is the minimum.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from functools import lru_cache

from .sockio import Deadline, PeerGone, SocketIO

_READ_SIZE = 65536


@lru_cache(maxsize=16)
def client_context(ca_file: str = "") -> ssl.SSLContext:
    """Verifying client context: the system trust store, or only ``ca_file`` if set."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


class TlsHandshakeError(Exception):
    """A TLS handshake failed (certificate, protocol version, alert)."""


class TlsSocketIO:
    """A TLS session over a connected socket, with the SocketIO interface.

    Client side (``server_hostname`` set) for https peers; server side for TLS
    listeners, with the master's server context.
    """

    __slots__ = ("_incoming", "_outgoing", "_raw", "_sent", "_tls")

    def __init__(self, raw: SocketIO, context: ssl.SSLContext, *,
                 server_hostname: str | None = None) -> None:
        self._raw = raw
        self._sent = 0
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_side=server_hostname is None,
                                     server_hostname=server_hostname)

    @property
    def sock(self) -> socket.socket:
        return self._raw.sock

    @property
    def fd(self) -> int:
        return self._raw.fd

    @property
    def deadline(self) -> Deadline:
        return self._raw.deadline

    @deadline.setter
    def deadline(self, value: Deadline) -> None:
        self._raw.deadline = value

    def peer_certificate(self) -> tuple[dict[str, object] | None, bytes | None]:
        """The verified peer certificate, parsed and DER (None, None when the peer sent
        none or was not asked for one)."""
        parsed = self._tls.getpeercert()
        if not parsed:
            return None, None
        return dict(parsed), self._tls.getpeercert(binary_form=True)

    async def handshake(self) -> None:
        """Complete the handshake; raises TlsHandshakeError (or PeerGone) on failure."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if self._incoming.eof:
                    raise PeerGone("closed during the TLS handshake") from None
                await self._fill()
                continue
            except (ssl.SSLError, ssl.CertificateError) as exc:
                with contextlib.suppress(PeerGone):
                    await self._flush()  # the alert tells the peer why
                raise TlsHandshakeError(str(exc)) from None
            await self._flush()
            return

    async def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            await self._raw.send_all(pending)

    async def _fill(self, reset_is_error: bool = False) -> None:
        data = await self._raw.recv(reset_is_error=reset_is_error)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def recv(self, *, reset_is_error: bool = False) -> bytes:
        while True:
            try:
                return self._tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill(reset_is_error)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise PeerGone(f"TLS error: {exc}") from None

    async def recv_after_wait(self) -> bytes:
        return await self.recv()

    @property
    def sent(self) -> int:
        """Plaintext bytes sent so far (the access log's bytes_out)."""
        return self._sent

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._sent += len(data)
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise PeerGone(f"TLS error: {exc}") from None
        await self._flush()

    async def sendfile(self, file_fd: int, offset: int, count: int) -> None:
        """No sendfile(2) through TLS: read and encrypt in bounded pieces."""
        while count > 0:
            data = os.pread(file_fd, min(count, _READ_SIZE), offset)
            if not data:
                raise PeerGone("file shrank while sending")
            await self.send_all(data)
            offset += len(data)
            count -= len(data)

    def readable_now(self) -> bool:
        """Like :meth:`SocketIO.readable_now`, but also looks at TLS records already
        read from the socket and not yet decrypted: a stray response can hide in a record
        that arrived in the same segment as the end of the last response. Consuming it
        here is harmless: a connection with anything pending is discarded."""
        if self._tls.pending() > 0 or self._incoming.eof:
            return True
        if self._incoming.pending:
            try:
                if self._tls.read(1):
                    return True
            except ssl.SSLWantReadError:
                pass  # only handshake records (session tickets), or a partial record
            except ssl.SSLError:
                return True  # close_notify, or garbage: not reusable either way
            if self._incoming.pending:
                return True  # part of a record: the upstream is sending something
        return self._raw.readable_now()

    async def linger(self) -> None:
        """:meth:`SocketIO.linger` on the raw socket: what the client still sends is
        discarded undecrypted."""
        await self._raw.linger()

    def close(self) -> None:
        self._raw.close()

    def abort(self) -> None:
        self._raw.abort()


StreamIO = SocketIO | TlsSocketIO
"""A connection's byte stream, plain or TLS: the proxy handles both alike."""
