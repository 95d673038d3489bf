"""A TLS server on 127.0.0.1 that records each client's ClientHello, and its JA3/JA4 fingerprints.

Browser impersonation (curl_cffi) is only worth something if the ClientHello on the wire really is
the browser's.  :class:`HelloRecorder` reads the raw ClientHello records from every connection
before any TLS library sees them, parses them with :func:`parse_client_hello`, then finishes a real
TLS handshake (self-signed certificate, ALPN ``http/1.1`` only, so an h2-capable client falls back
to HTTP/1.1) and answers one HTTP/1.1 request with ``200`` and a small JSON body.

:func:`ja3` follows Salesforce's JA3; :func:`ja4` follows FoxIO's JA4 specification
(github.com/FoxIO-LLC/ja4, technical_details/JA4.md).  :func:`browser_profiles` lists the JA4 each
curl_cffi profile is expected to present, taken from published captures of the real browsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.tls import self_signed_server_context

#: The sixteen GREASE values of RFC 8701 (0x0a0a, 0x1a1a, ... 0xfafa), for cipher suites,
#: extensions, groups and versions.
GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))

EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_KEY_SHARE = 0x0033

_CONTENT_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
#: Largest TLSPlaintext fragment (RFC 8446 section 5.1).
_MAX_FRAGMENT = 2**14
#: Largest ClientHello accepted; real ones are under 2 KB, post-quantum key shares included.
_MAX_HELLO = 2**17

#: JA4's two-character version codes (JA4.md, "TLS and DTLS Version").
_JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2",
                 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}


def is_grease(value: int) -> bool:
    """Whether ``value`` is one of the RFC 8701 GREASE values."""
    return value in GREASE


class ClientHelloError(ValueError):
    """The bytes are not a well-formed TLS ClientHello."""


class TruncatedClientHello(ClientHelloError):
    """The bytes end before the ClientHello does."""


class NotHandshake(ClientHelloError):
    """A record is not a TLS handshake record."""


class NotClientHello(ClientHelloError):
    """The handshake message is not a ClientHello (type 1)."""


@dataclass(frozen=True)
class ClientHello:
    """The fields of one ClientHello that fingerprints are made of, GREASE values kept, wire order kept.

    ``alpn`` holds each protocol decoded as Latin-1, so every byte survives (``.encode("latin-1")``).
    """

    record_version: int
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: tuple[int, ...]
    extensions: tuple[int, ...]
    server_name: str | None = None
    supported_groups: tuple[int, ...] = ()
    ec_point_formats: tuple[int, ...] = ()
    signature_algorithms: tuple[int, ...] = ()
    alpn: tuple[str, ...] = ()
    supported_versions: tuple[int, ...] = ()
    key_share_groups: tuple[int, ...] = ()
    message: bytes = field(default=b"", repr=False)

    @property
    def grease(self) -> bool:
        """Whether the client put GREASE in its cipher suites, extensions, groups or versions."""
        return any(is_grease(v) for values in (self.cipher_suites, self.extensions, self.supported_groups,
                                               self.supported_versions, self.key_share_groups) for v in values)

    @property
    def version(self) -> int:
        """The highest version offered: supported_versions' highest non-GREASE value, else legacy_version."""
        offered = [v for v in self.supported_versions if not is_grease(v)]
        return max(offered) if offered else self.legacy_version


class _Reader:
    """Cursor over bytes whose every short read is a :class:`TruncatedClientHello` naming the field."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.pos, self.where = data, 0, where

    def take(self, n: int, what: str) -> bytes:
        if len(self.data) - self.pos < n:
            raise TruncatedClientHello(f"ClientHello truncated in {self.where}: {what} needs {n} bytes, "
                                       f"{len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what))

    def vector(self, length_bytes: int, what: str) -> bytes:
        return self.take(int.from_bytes(self.take(length_bytes, f"length of {what}")), what)

    def done(self) -> bool:
        return self.pos == len(self.data)

    def expect_end(self) -> None:
        if not self.done():
            raise ClientHelloError(f"ClientHello malformed: {len(self.data) - self.pos} stray bytes at the end "
                                   f"of {self.where}")


def _u16_list(data: bytes, what: str) -> tuple[int, ...]:
    if len(data) % 2:
        raise ClientHelloError(f"ClientHello malformed: {what} has an odd length ({len(data)} bytes)")
    return tuple(int.from_bytes(data[i : i + 2]) for i in range(0, len(data), 2))


def handshake_message(data: bytes) -> tuple[bytes, int] | None:
    """The first handshake message carried by the TLS records at the start of ``data`` (a message may be
    fragmented over several records), and how many bytes of ``data`` those records take.

    None while ``data`` ends before the message does; :class:`ClientHelloError` as soon as the bytes
    cannot become a ClientHello.
    """
    fragments = bytearray()
    offset = 0
    while len(data) - offset >= 5:
        content_type, major, minor = data[offset], data[offset + 1], data[offset + 2]
        length = int.from_bytes(data[offset + 3 : offset + 5])
        if content_type != _CONTENT_HANDSHAKE:
            raise NotHandshake(f"not a TLS handshake: record at byte {offset} has content type {content_type} "
                               f"(first byte 0x{content_type:02x}), not 22")
        if major != 3:
            raise NotHandshake(f"not a TLS handshake: record at byte {offset} has version "
                               f"0x{major:02x}{minor:02x}, not 0x03xx")
        if not 0 < length <= _MAX_FRAGMENT:
            raise NotHandshake(f"not a TLS handshake: record at byte {offset} claims {length} bytes "
                               f"(allowed 1..{_MAX_FRAGMENT})")
        if len(data) - offset - 5 < length:
            return None
        fragments += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if len(fragments) >= 4:
            if fragments[0] != _HANDSHAKE_CLIENT_HELLO:
                raise NotClientHello(f"not a ClientHello: handshake message type {fragments[0]}, not 1")
            size = int.from_bytes(fragments[1:4])
            if size > _MAX_HELLO:
                raise ClientHelloError(f"ClientHello of {size} bytes is larger than the {_MAX_HELLO} accepted")
            if len(fragments) >= 4 + size:
                return bytes(fragments[: 4 + size]), offset
    return None


def parse_client_hello(record: bytes) -> ClientHello:
    """Parse the ClientHello carried by the TLS record(s) ``record`` (bytes after the message are ignored).

    Raises :class:`ClientHelloError` (a ValueError) saying what is wrong: truncated, not a handshake
    record, not a ClientHello, or malformed inside.
    """
    found = handshake_message(record)
    if found is None:
        raise TruncatedClientHello(f"truncated: {len(record)} bytes do not hold a whole TLS record with a "
                                   f"ClientHello")
    message, _ = found
    return _parse_body(message, record_version=int.from_bytes(record[1:3]))


def _parse_body(message: bytes, *, record_version: int) -> ClientHello:
    body = _Reader(message[4:], "the ClientHello body")
    legacy_version = body.u16("legacy_version")
    random = body.take(32, "random")
    session_id = body.vector(1, "legacy_session_id")
    ciphers = _u16_list(body.vector(2, "cipher_suites"), "cipher_suites")
    compression = tuple(body.vector(1, "legacy_compression_methods"))
    fields: dict[str, object] = {}
    extensions: list[int] = []
    if not body.done():
        block = _Reader(body.vector(2, "extensions"), "the extensions")
        body.expect_end()
        while not block.done():
            kind = block.u16("extension type")
            data = block.vector(2, f"extension 0x{kind:04x}")
            if kind in extensions:
                raise ClientHelloError(f"ClientHello malformed: extension 0x{kind:04x} appears twice")
            extensions.append(kind)
            fields.update(_parse_extension(kind, data))
    return ClientHello(record_version=record_version, legacy_version=legacy_version, random=random,
                       session_id=session_id, cipher_suites=ciphers, compression_methods=compression,
                       extensions=tuple(extensions), message=message, **fields)  # type: ignore[arg-type]


def _parse_extension(kind: int, data: bytes) -> dict[str, object]:
    """The ClientHello fields one extension's data gives (none for extensions fingerprints ignore)."""
    where = f"extension 0x{kind:04x}"
    if kind == EXT_SERVER_NAME:
        entries = _Reader(_Reader(data, where).vector(2, "server_name_list"), where)
        while not entries.done():
            name_type = entries.u8("name_type")
            name = entries.vector(2, "host_name")
            if name_type == 0:
                try:
                    return {"server_name": name.decode("ascii")}
                except UnicodeDecodeError:
                    raise ClientHelloError("ClientHello malformed: the SNI host_name is not ASCII") from None
        return {}
    if kind == EXT_SUPPORTED_GROUPS:
        reader = _Reader(data, where)
        groups = _u16_list(reader.vector(2, "named_group_list"), "supported_groups")
        reader.expect_end()
        return {"supported_groups": groups}
    if kind == EXT_EC_POINT_FORMATS:
        reader = _Reader(data, where)
        formats = tuple(reader.vector(1, "ec_point_format_list"))
        reader.expect_end()
        return {"ec_point_formats": formats}
    if kind == EXT_SIGNATURE_ALGORITHMS:
        reader = _Reader(data, where)
        algorithms = _u16_list(reader.vector(2, "supported_signature_algorithms"), "signature_algorithms")
        reader.expect_end()
        return {"signature_algorithms": algorithms}
    if kind == EXT_ALPN:
        reader = _Reader(data, where)
        protocols = _Reader(reader.vector(2, "protocol_name_list"), where)
        reader.expect_end()
        alpn: list[str] = []
        while not protocols.done():
            alpn.append(protocols.vector(1, "protocol name").decode("latin-1"))
        return {"alpn": tuple(alpn)}
    if kind == EXT_SUPPORTED_VERSIONS:
        reader = _Reader(data, where)
        versions = _u16_list(reader.vector(1, "versions"), "supported_versions")
        reader.expect_end()
        return {"supported_versions": versions}
    if kind == EXT_KEY_SHARE:
        reader = _Reader(data, where)
        shares = _Reader(reader.vector(2, "client_shares"), where)
        reader.expect_end()
        groups_: list[int] = []
        while not shares.done():
            groups_.append(shares.u16("key share group"))
            shares.vector(2, "key_exchange")
        return {"key_share_groups": tuple(groups_)}
    return {}


# -- fingerprints ---------------------------------------------------------------------------------


def ja3(hello: ClientHello) -> str:
    """The JA3 string ``version,ciphers,extensions,groups,formats``: decimal, '-'-joined, GREASE removed,
    wire order (so it changes with Chrome's extension permutation; JA4 does not)."""
    def join(values: tuple[int, ...]) -> str:
        return "-".join(str(v) for v in values if not is_grease(v))

    return ",".join([str(hello.legacy_version), join(hello.cipher_suites), join(hello.extensions),
                     join(hello.supported_groups), join(hello.ec_point_formats)])


def ja3_hash(hello: ClientHello) -> str:
    """The JA3 fingerprint: md5 (hex) of :func:`ja3`."""
    return hashlib.md5(ja3(hello).encode(), usedforsecurity=False).hexdigest()


def _alpn_code(hello: ClientHello) -> str:
    """First and last character of the first ALPN value; their hex digits if either is not alphanumeric."""
    if not hello.alpn or not hello.alpn[0]:
        return "00"
    first = hello.alpn[0].encode("latin-1")
    if all(chr(b).isascii() and chr(b).isalnum() for b in (first[0], first[-1])):
        return chr(first[0]) + chr(first[-1])
    hexed = first.hex()
    return hexed[0] + hexed[-1]


def _truncated_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ja4_raw(hello: ClientHello) -> str:
    """JA4_r: like :func:`ja4` but with the sorted lists in clear instead of hashed (for diagnostics)."""
    a, ciphers, extensions = _ja4_parts(hello)
    return f"{a}_{ciphers}_{extensions}"


def _ja4_parts(hello: ClientHello) -> tuple[str, str, str]:
    version = _JA4_VERSIONS.get(hello.version, "00")
    sni = "d" if EXT_SERVER_NAME in hello.extensions else "i"
    ciphers = sorted(f"{c:04x}" for c in hello.cipher_suites if not is_grease(c))
    extensions = [e for e in hello.extensions if not is_grease(e)]
    a = f"t{version}{sni}{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{_alpn_code(hello)}"
    hashed_extensions = sorted(f"{e:04x}" for e in extensions if e not in (EXT_SERVER_NAME, EXT_ALPN))
    algorithms = [f"{s:04x}" for s in hello.signature_algorithms if not is_grease(s)]
    c = ",".join(hashed_extensions)
    if c and algorithms:  # no signature algorithms: the string ends without the underscore (JA4.md)
        c += "_" + ",".join(algorithms)
    return a, ",".join(ciphers), c


def ja4(hello: ClientHello) -> str:
    """The JA4 fingerprint (FoxIO), e.g. ``t13d1516h2_8daaf6152771_d8a2da3f94cd``: TLS over TCP, version,
    SNI or not, cipher and extension counts, ALPN; sha256[:12] of the sorted ciphers; sha256[:12] of the
    sorted extensions (SNI and ALPN left out) and the signature algorithms in wire order.  GREASE is
    ignored everywhere; an empty list hashes to ``000000000000``."""
    a, ciphers, extensions = _ja4_parts(hello)
    b = _truncated_sha256(ciphers) if ciphers else "0" * 12
    c = _truncated_sha256(extensions) if extensions else "0" * 12
    return f"{a}_{b}_{c}"


def ja4_without_sni(fingerprint: str) -> str:
    """The JA4 the same client presents when it sends no SNI: ``d`` becomes ``i`` and the extension count
    drops by one; the hashes stay (SNI is never hashed).

    Clients send no SNI to an IP address such as 127.0.0.1 (RFC 6066 section 3), so this is what a
    published JA4 becomes against :attr:`HelloRecorder.url`.  It holds while the shorter hello does not
    gain a padding extension (0x0015), which BoringSSL adds only to hellos of 256-511 bytes; with a
    post-quantum key share (X25519MLKEM768, 1216 bytes) every hello is far larger.
    """
    a, rest = fingerprint.split("_", 1)
    if len(a) != 10 or a[3] != "d":
        return fingerprint
    return f"{a[:3]}i{a[4:6]}{int(a[6:8]) - 1:02d}{a[8:]}_{rest}"


def browser_profiles() -> dict[str, str]:
    """curl_cffi impersonation profile -> the JA4 (with SNI) the real browser it names presents.

    In curl_cffi 0.17 ``chrome`` is ``chrome152`` and ``firefox`` is ``firefox155``.  Against
    127.0.0.1 there is no SNI: compare with :func:`ja4_without_sni` of these values.  Sources
    (published captures of the real browsers, not measurements of curl_cffi):

    - Chrome 152 to 154: ``t13d1517h2_8daaf6152771_cb7bf5808d99``.  Chrome 152 added extension 0xca34
      (trust anchors) and a GREASE signature algorithm to the 149 hello; a tls.peet.ws measurement of
      Chrome 153.0.8010.48 (a uTLS profile's notes) and browserleaks/peet captures of Chrome 152-154
      published by several impersonation libraries report this JA4, and a loopback capture of real
      Chrome against an IP-literal origin reports ``t13i1516h2_8daaf6152771_cb7bf5808d99``.
      ``8daaf6152771`` is also the cipher hash of FoxIO's worked example in JA4.md.
    - Chrome 124 to 131: ``t13d1516h2_8daaf6152771_02713d6af862`` (tls.browserleaks.com measurements
      published with wreq-util's emulation tests; extension 0x4469, the old ALPS codepoint).
    - Firefox 154 and 155: ``t13d1517h2_8daaf6152771_3cbfd9057e0d``, computed from real Firefox 154.0
      and 155.0 ClientHellos (which dropped the ECDSA AES-CBC suites, so the cipher hash became
      Chrome's; part c tells them apart); Firefox 156 captures report the same JA4.
    """
    chrome152 = "t13d1517h2_8daaf6152771_cb7bf5808d99"
    chrome131 = "t13d1516h2_8daaf6152771_02713d6af862"
    firefox155 = "t13d1517h2_8daaf6152771_3cbfd9057e0d"
    return {"chrome": chrome152, "chrome152": chrome152, "chrome131": chrome131,
            "firefox": firefox155, "firefox155": firefox155}


# -- the recording server -------------------------------------------------------------------------


@dataclass
class HelloRequest:
    """One HTTP request the recorder answered, with the ClientHello of its connection."""

    hello: ClientHello
    method: str
    path: str
    headers: dict[str, str]
    alpn: str | None


async def read_client_hello(reader: asyncio.StreamReader) -> tuple[bytes, ClientHello]:
    """Read whole TLS records from ``reader`` until they hold a ClientHello: the raw bytes read, and the
    parsed hello.  Raises :class:`ClientHelloError`, or asyncio.IncompleteReadError on an early EOF."""
    raw = bytearray()
    while True:
        header = await reader.readexactly(5)
        raw += header
        if header[0] != _CONTENT_HANDSHAKE or header[1] != 3:
            handshake_message(bytes(raw))  # raises the precise error
        length = int.from_bytes(header[3:5])
        if not 0 < length <= _MAX_FRAGMENT:
            handshake_message(bytes(raw))
        raw += await reader.readexactly(length)
        found = handshake_message(bytes(raw))
        if found is not None:
            message, used = found
            return bytes(raw[:used]), _parse_body(message, record_version=int.from_bytes(raw[1:3]))


class HelloRecorder:
    """TLS server on 127.0.0.1 that records every ClientHello, then answers one HTTP/1.1 request.

    ``tls`` is a directory for a fresh self-signed certificate (made with openssl: a subprocess) or a
    ready server context (its ALPN is set to ``http/1.1``).  Usage::

        async with HelloRecorder(tmp_path) as server:
            ...  # GET server.url
            server.hellos[0], server.requests[0], server.errors
    """

    def __init__(self, tls: Path | ssl.SSLContext, *, timeout: float = 10.0) -> None:
        self._tls = tls
        self.timeout = timeout
        self.hellos: list[ClientHello] = []
        self.requests: list[HelloRequest] = []
        #: One line per connection that failed (bad hello, TLS failure, timeout), for assertions.
        self.errors: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._context: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT/``."""
        return f"https://127.0.0.1:{self.port}/"

    def url_for(self, host: str) -> str:
        """``https://HOST:PORT/``, for a client told to resolve ``host`` to 127.0.0.1 (so it sends SNI)."""
        return f"https://{host}:{self.port}/"

    async def __aenter__(self) -> Self:
        if isinstance(self._tls, ssl.SSLContext):
            self._context = self._tls
        else:
            self._context = await asyncio.to_thread(self_signed_server_context, self._tls)
        self._context.set_alpn_protocols(["http/1.1"])
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timeout)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with asyncio.timeout(self.timeout):
                raw, hello = await read_client_hello(reader)
                self.hellos.append(hello)
                await self._serve(hello, raw, reader, writer)
        except (ClientHelloError, ssl.SSLError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def _serve(self, hello: ClientHello, raw: bytes, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        """TLS over memory BIOs (the hello's bytes were already read), then one HTTP/1.1 exchange."""
        assert self._context is not None
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._context.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(raw)

        async def flush() -> None:
            data = outgoing.read()
            if data:
                writer.write(data)
                await writer.drain()

        async def until_done(operation: str) -> bytes:
            """Run the TLS operation, feeding it bytes from the socket, until it completes."""
            while True:
                try:
                    if operation == "handshake":
                        tls.do_handshake()
                        result = b""
                    else:
                        result = tls.read(65536)
                except ssl.SSLWantReadError:
                    await flush()
                    data = await reader.read(65536)
                    if data:
                        incoming.write(data)
                        continue
                    result = None
                await flush()
                if result is None:
                    raise ConnectionResetError(f"client closed the connection during the TLS {operation}")
                return result

        await until_done("handshake")
        head = bytearray()
        while b"\r\n\r\n" not in head:
            chunk = await until_done("read")
            if not chunk:
                raise ConnectionResetError("client closed the TLS stream before a whole request head")
            head += chunk
            if len(head) > 65536:
                raise ConnectionResetError("request head larger than 64 KiB")
        lines = bytes(head).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.rpartition(" ")[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.requests.append(HelloRequest(hello, method, path, headers, tls.selected_alpn_protocol()))
        body = json.dumps({"ok": True, "ja3": ja3_hash(hello), "ja4": ja4(hello)}).encode()
        tls.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # our close_notify; not waiting for the client's
        await flush()
