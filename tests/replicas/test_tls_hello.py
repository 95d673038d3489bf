"""The ClientHello recorder (tests/replicas/tls_hello.py): its parser, JA3/JA4, and what curl_cffi's
browser impersonation really puts on the wire compared with Python's own ssl client.

Everything talks to 127.0.0.1 only; a hostname that must produce an SNI is resolved to 127.0.0.1 by
the client itself (curl's RESOLVE option, or ``server_hostname`` for Python's ssl).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from curl_cffi import CurlOpt
from curl_cffi.requests import AsyncSession, BrowserType

from tests.replicas.tls_hello import (
    GREASE,
    ClientHello,
    ClientHelloError,
    HelloRecorder,
    NotClientHello,
    NotHandshake,
    TruncatedClientHello,
    browser_profiles,
    is_grease,
    ja3,
    ja3_hash,
    ja4,
    ja4_raw,
    ja4_without_sni,
    parse_client_hello,
)
from tests.support.tls import self_signed_server_context

pytestmark = [pytest.mark.process]  # openssl makes the self-signed certificate

WAIT = 10.0  # upper bound of every wait on the network
JA4_SHAPE = re.compile(r"^t(1[0-3])([di])(\d\d)(\d\d)([0-9a-z]{2})_([0-9a-f]{12})_([0-9a-f]{12})$")
#: A hostname for a client told to resolve it to 127.0.0.1 (``.test`` is reserved, RFC 6761).
HOST = "replica.test"


# -- hand-built ClientHellos ----------------------------------------------------------------------


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def vec(data: bytes, length_bytes: int) -> bytes:
    return len(data).to_bytes(length_bytes, "big") + data


def u16s(values: list[int]) -> bytes:
    return b"".join(u16(v) for v in values)


def ext(kind: int, data: bytes = b"") -> tuple[int, bytes]:
    return kind, data


def sni(host: str) -> tuple[int, bytes]:
    return ext(0x0000, vec(b"\x00" + vec(host.encode(), 2), 2))


def groups(values: list[int]) -> tuple[int, bytes]:
    return ext(0x000A, vec(u16s(values), 2))


def point_formats(values: list[int]) -> tuple[int, bytes]:
    return ext(0x000B, vec(bytes(values), 1))


def sigalgs(values: list[int]) -> tuple[int, bytes]:
    return ext(0x000D, vec(u16s(values), 2))


def alpn(protocols: list[bytes]) -> tuple[int, bytes]:
    return ext(0x0010, vec(b"".join(vec(p, 1) for p in protocols), 2))


def versions(values: list[int]) -> tuple[int, bytes]:
    return ext(0x002B, vec(u16s(values), 1))


def key_share(shares: list[tuple[int, int]]) -> tuple[int, bytes]:
    return ext(0x0033, vec(b"".join(u16(group) + vec(b"\x01" * size, 2) for group, size in shares), 2))


def hello_message(ciphers: list[int], extensions: list[tuple[int, bytes]] | None, *,
                  version: int = 0x0303, msg_type: int = 1) -> bytes:
    """A handshake message: a ClientHello body (``extensions=None`` omits the block) behind its header."""
    body = u16(version) + b"\x11" * 32 + vec(b"\x22" * 32, 1) + vec(u16s(ciphers), 2) + vec(b"\x00", 1)
    if extensions is not None:
        body += vec(b"".join(u16(kind) + vec(data, 2) for kind, data in extensions), 2)
    return bytes([msg_type]) + vec(body, 3)


def records(message: bytes, sizes: list[int] | None = None, *, content_type: int = 22) -> bytes:
    """``message`` in TLS records of the given fragment sizes (the last takes the rest), 16 KiB at most."""
    out, pos = bytearray(), 0
    for size in [*(sizes or []), len(message)]:
        while pos < len(message) and size > 0:
            piece = message[pos : pos + min(size, 2**14)]
            out += bytes([content_type]) + b"\x03\x01" + vec(piece, 2)
            pos += len(piece)
            size -= len(piece)
    return bytes(out)


#: FoxIO's JA4.md worked example: cipher suites and extensions in wire order, signature algorithms.
FOXIO_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C,
                 0x009D, 0x002F, 0x0035]
FOXIO_EXTENSIONS = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023, 0x0012, 0x002B,
                    0xFF01, 0x000B, 0x000A, 0x0015]
FOXIO_SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def chrome_like(extension_order: list[int], *, sigalgs_list: list[int] = FOXIO_SIGALGS,
                groups_list: list[int] | None = None, grease: bool = True) -> bytes:
    """A ClientHello record with FoxIO's ciphers and the given extensions in that order, GREASE added
    the way Chrome does (first cipher, first and last extension, first group and version)."""
    g = 0x5A5A
    payload = {0x0000: sni("example.com")[1], 0x000A: groups([g, *(groups_list or [0x11EC, 0x1D, 0x17, 0x18])])[1],
               0x000B: point_formats([0])[1], 0x000D: sigalgs(sigalgs_list)[1], 0x0010: alpn([b"h2", b"http/1.1"])[1],
               0x002B: versions([0x7A7A, 0x0304, 0x0303])[1], 0x0033: key_share([(g, 1), (0x001D, 32)])[1]}
    extensions = [ext(kind, payload.get(kind, b"")) for kind in extension_order]
    if grease:
        extensions = [ext(0x0A0A), *extensions, ext(0xFAFA, b"\x00")]
    return records(hello_message([0x2A2A, *FOXIO_CIPHERS] if grease else FOXIO_CIPHERS, extensions))


# -- servers and clients --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1, shared by the module."""
    return self_signed_server_context(tmp_path_factory.mktemp("tls"))


@pytest_asyncio.fixture
async def server(tls_context: ssl.SSLContext) -> AsyncIterator[HelloRecorder]:
    async with HelloRecorder(tls_context, timeout=WAIT) as recorder:
        yield recorder


def client_context(protocols: list[str] | None = None) -> ssl.SSLContext:
    """Python's default client context, certificate checks off (the recorder's is self-signed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if protocols:
        context.set_alpn_protocols(protocols)
    return context


async def python_get(server: HelloRecorder, *, server_hostname: str | None = None,
                     protocols: list[str] | None = None) -> bytes:
    """GET /probe through Python's ssl; the whole response (the recorder closes after one)."""
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_context(protocols),
                                                       server_hostname=server_hostname)
        try:
            writer.write(b"GET /probe HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: python-ssl\r\n\r\n")
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


async def curl_get(server: HelloRecorder, profile: str, *, host: str | None = None) -> tuple[int, dict[str, object]]:
    """GET through curl_cffi impersonating ``profile``: to 127.0.0.1 (no SNI), or to ``host`` resolved to
    127.0.0.1 by curl (so the hello carries SNI).  The status and the JSON body."""
    options = {CurlOpt.RESOLVE: [f"{host}:{server.port}:127.0.0.1"]} if host else {}
    async with AsyncSession(curl_options=options) as session:
        response = await session.get(server.url_for(host) if host else server.url, impersonate=profile,
                                     verify=False, timeout=WAIT)
        return response.status_code, response.json()


@pytest_asyncio.fixture
async def python_hello(server: HelloRecorder) -> ClientHello:
    """The ClientHello of Python's own ssl client, as the recorder captured it."""
    response = await python_get(server)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response[:100]
    assert len(server.hellos) == 1, server.errors
    return server.hellos[0]


def non_grease(values: tuple[int, ...]) -> list[int]:
    return [v for v in values if not is_grease(v)]


# -- the parser -----------------------------------------------------------------------------------


def test_grease_values() -> None:
    assert len(GREASE) == 16
    assert {0x0A0A, 0x1A1A, 0x7A7A, 0xFAFA} <= GREASE
    assert not any(is_grease(v) for v in (0x000A, 0x0A0B, 0x1301, 0xFF01, 0x0B0B))


def test_parse_every_field_of_a_hand_built_hello() -> None:
    extensions = [sni("example.com"), groups([0x3A3A, 0x1D, 0x17]), point_formats([0, 1]),
                  sigalgs([0x0403, 0x0804]), alpn([b"h2", b"http/1.1"]), versions([0x4A4A, 0x0304, 0x0303]),
                  key_share([(0x3A3A, 1), (0x1D, 32)]), ext(0xFF01, b"\x00")]
    hello = parse_client_hello(records(hello_message([0x2A2A, 0x1301, 0xC02B], extensions)))
    assert hello.record_version == 0x0301
    assert hello.legacy_version == 0x0303
    assert hello.random == b"\x11" * 32 and hello.session_id == b"\x22" * 32
    assert hello.cipher_suites == (0x2A2A, 0x1301, 0xC02B)
    assert hello.compression_methods == (0,)
    assert hello.extensions == (0x0000, 0x000A, 0x000B, 0x000D, 0x0010, 0x002B, 0x0033, 0xFF01)
    assert hello.server_name == "example.com"
    assert hello.supported_groups == (0x3A3A, 0x1D, 0x17)
    assert hello.ec_point_formats == (0, 1)
    assert hello.signature_algorithms == (0x0403, 0x0804)
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.supported_versions == (0x4A4A, 0x0304, 0x0303)
    assert hello.key_share_groups == (0x3A3A, 0x1D)
    assert hello.version == 0x0304
    assert hello.grease


def test_parse_a_hello_without_extensions() -> None:
    hello = parse_client_hello(records(hello_message([0x002F], None, version=0x0301)))
    assert hello.extensions == () and hello.server_name is None and hello.alpn == ()
    assert hello.version == 0x0301
    assert not hello.grease


def test_parse_python_ssl_hello(python_hello: ClientHello) -> None:
    """Python's ssl (OpenSSL) offers TLS 1.3 and 1.2, no GREASE, no SNI to an IP address, no ALPN unless asked."""
    assert python_hello.legacy_version == 0x0303
    assert 0x0304 in python_hello.supported_versions and python_hello.version == 0x0304
    assert {0x1301, 0x1302} <= set(python_hello.cipher_suites)
    assert python_hello.server_name is None and 0x0000 not in python_hello.extensions
    assert python_hello.alpn == ()
    assert python_hello.supported_groups and python_hello.signature_algorithms
    assert len(set(python_hello.extensions)) == len(python_hello.extensions)
    assert not python_hello.grease
    # the recorder kept the whole handshake message: parsing it again gives the same hello
    again = parse_client_hello(records(python_hello.message))
    assert again.cipher_suites == python_hello.cipher_suites and again.extensions == python_hello.extensions


def test_parse_hello_fragmented_over_records(python_hello: ClientHello) -> None:
    """A handshake message may span records, its 4-byte header included (RFC 8446 section 5.1)."""
    whole = parse_client_hello(records(python_hello.message))
    for sizes in ([1, 1, 1, 1], [3, 40], [100, 1, 7]):
        fragmented = records(python_hello.message, sizes)
        assert fragmented.count(b"\x16\x03\x01") >= len(sizes)
        assert parse_client_hello(fragmented) == whole


def test_parse_hello_larger_than_one_record() -> None:
    """A hello of more than 16 KiB (huge key shares, padding) arrives in several records."""
    message = hello_message([0x1301], [groups([0x1D]), ext(0x0015, b"\x00" * 40000), sigalgs([0x0403])])
    data = records(message)
    assert len(message) > 2 * 2**14 and data.count(b"\x16\x03\x01") == 3
    hello = parse_client_hello(data + b"\x14\x03\x03\x00\x01\x01")  # bytes after the hello are ignored
    assert hello.extensions == (0x000A, 0x0015, 0x000D)
    assert hello.signature_algorithms == (0x0403,)


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", TruncatedClientHello, "truncated"),
        (b"\x16\x03\x01\x00\x50" + b"\x01" * 10, TruncatedClientHello, "truncated"),
        (records(hello_message([0x1301], []))[:-3], TruncatedClientHello, "truncated"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", NotHandshake, "not a TLS handshake"),
        (records(hello_message([0x1301], []), content_type=23), NotHandshake, "content type 23"),
        (b"\x16\x02\x00\x00\x10" + b"\x00" * 16, NotHandshake, "version"),
        (b"\x16\x03\x01\x00\x00", NotHandshake, "claims 0 bytes"),
        (b"\x16\x03\x01\x40\x01" + b"\x01" * 20000, NotHandshake, "claims 16385 bytes"),
        (records(hello_message([0x1301], [], msg_type=2)), NotClientHello, "type 2"),
        (records(b"\x01\x00\x00\x05" + b"\x03\x03\x00\x00\x00"), TruncatedClientHello, "random"),
        (records(hello_message([0x1301], [])[:-2] + b"\x00\x01\x00"), TruncatedClientHello, "extension"),
    ],
    ids=["empty", "short-record", "short-message", "plain-http", "application-data", "ssl2-version",
         "empty-record", "oversized-record", "server-hello", "short-body", "short-extensions"],
)
def test_parse_errors(data: bytes, error: type[ClientHelloError], words: str) -> None:
    with pytest.raises(error, match=words) as caught:
        parse_client_hello(data)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


def test_parse_errors_inside_extensions() -> None:
    odd_ciphers = b"\x01" + vec(b"\x03\x03" + b"\x00" * 32 + b"\x00" + vec(b"\x13\x01\x13", 2) + b"\x01\x00", 3)
    with pytest.raises(ClientHelloError, match="odd length"):
        parse_client_hello(records(odd_ciphers))
    with pytest.raises(ClientHelloError, match="appears twice"):
        parse_client_hello(records(hello_message([0x1301], [groups([0x1D]), groups([0x17])])))
    with pytest.raises(ClientHelloError, match="stray bytes"):
        parse_client_hello(records(hello_message([0x1301], [ext(0x000A, vec(u16(0x1D), 2) + b"\x00")])))
    with pytest.raises(ClientHelloError, match="not ASCII"):
        parse_client_hello(records(hello_message([0x1301], [ext(0, vec(b"\x00" + vec("é".encode(), 2), 2))])))


# -- JA3 and JA4 ----------------------------------------------------------------------------------


def test_ja4_of_foxio_worked_example() -> None:
    """FoxIO's JA4.md: ciphers sorted hash to 8daaf6152771; the sorted extensions (SNI and ALPN left out)
    plus the signature algorithms to e5627efa2ab1; the whole is t13d1516h2_8daaf6152771_e5627efa2ab1."""
    hello = parse_client_hello(chrome_like(FOXIO_EXTENSIONS))
    assert ja4(hello) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert ja4_raw(hello) == (
        "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_"
        "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_"
        "0403,0804,0401,0503,0805,0501,0806,0601")


def test_ja4_without_signature_algorithms_has_no_trailing_underscore() -> None:
    """JA4.md: with no signature algorithms the extension list alone is hashed: 6d807ffa2a79."""
    hello = parse_client_hello(chrome_like(FOXIO_EXTENSIONS, sigalgs_list=[]))
    assert ja4(hello).endswith("_8daaf6152771_6d807ffa2a79")
    assert ja4_raw(hello).endswith("4469,ff01")


def test_ja3_and_ja4_of_a_published_chrome_capture() -> None:
    """tls.browserleaks.com's capture of Chrome 143 (wire order from its JA4_ro): JA3 string and hash
    98487aa16281980e7d1120d399efb6a4, JA4 t13d1516h2_8daaf6152771_d8a2da3f94cd, with GREASE in the hello."""
    order = [0x002D, 0x0033, 0x0010, 0xFE0D, 0x0017, 0x44CD, 0x0000, 0x000B, 0x000A, 0x002B, 0xFF01, 0x0023, 0x0012,
             0x0005, 0x000D, 0x001B]
    hello = parse_client_hello(chrome_like(order, groups_list=[0x11EC, 0x1D, 0x17, 0x18]))
    assert hello.grease
    assert ja3(hello) == ("771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,"
                          "45-51-16-65037-23-17613-0-11-10-43-65281-35-18-5-13-27,4588-29-23-24,0")
    assert ja3_hash(hello) == "98487aa16281980e7d1120d399efb6a4"
    assert ja4(hello) == "t13d1516h2_8daaf6152771_d8a2da3f94cd"
    # JA4 sorts, so Chrome's extension permutation does not change it; JA3 keeps wire order
    shuffled = parse_client_hello(chrome_like(list(reversed(order)), groups_list=[0x11EC, 0x1D, 0x17, 0x18]))
    assert ja4(shuffled) == ja4(hello) and ja3_hash(shuffled) != ja3_hash(hello)


def test_ja4_empty_lists_and_versions() -> None:
    bare = parse_client_hello(records(hello_message([], None, version=0x0302)))
    assert ja4(bare) == "t11i000000_000000000000_000000000000"
    assert ja3(bare) == "770,,,,"
    # only SNI and ALPN: nothing left to hash in part c
    only_named = parse_client_hello(records(hello_message([0x1301], [sni("a.example"), alpn([b"h2"])])))
    assert ja4(only_named) == f"t12d0102h2_{hashlib.sha256(b'1301').hexdigest()[:12]}_000000000000"
    # the highest non-GREASE supported version wins over the legacy version and over GREASE
    versioned = parse_client_hello(records(hello_message([0x1301], [versions([0xFAFA, 0x0303, 0x0304])])))
    assert ja4(versioned).startswith("t13i0101")
    unknown = parse_client_hello(records(hello_message([0x1301], None, version=0x0305)))
    assert ja4(unknown).startswith("t00i")


@pytest.mark.parametrize(
    ("protocols", "code"),
    [([b"http/1.1", b"h2"], "h1"), ([b"h2"], "h2"), ([b"h3"], "h3"), ([b"x"], "xx"), ([b""], "00"), ([], "00"),
     ([b"\xab"], "ab"), ([b"\xab\xcd"], "ad"), ([b"0\xab"], "3b"), ([b"01\xab\xcd"], "3d"), ([b"0\xab\xcd1"], "01")],
)
def test_ja4_alpn_code(protocols: list[bytes], code: str) -> None:
    """JA4.md's ALPN rules, its non-alphanumeric examples included."""
    hello = parse_client_hello(records(hello_message([0x1301], [alpn(protocols)])))
    assert ja4(hello)[8:10] == code


def test_ja4_counts_are_capped_at_99() -> None:
    hello = parse_client_hello(records(hello_message(list(range(1, 121)), [ext(0x1000 + i) for i in range(105)])))
    assert ja4(hello)[:8] == "t12i9999"


def test_ja4_without_sni() -> None:
    assert ja4_without_sni("t13d1517h2_8daaf6152771_cb7bf5808d99") == "t13i1516h2_8daaf6152771_cb7bf5808d99"
    assert ja4_without_sni("t13i1516h2_8daaf6152771_cb7bf5808d99") == "t13i1516h2_8daaf6152771_cb7bf5808d99"


def test_python_ssl_fingerprints(python_hello: ClientHello) -> None:
    fingerprint = ja4(python_hello)
    shape = JA4_SHAPE.match(fingerprint)
    assert shape, fingerprint
    version, sni_flag, ciphers, extensions, alpn_code = shape.group(1, 2, 3, 4, 5)
    assert (version, sni_flag, alpn_code) == ("13", "i", "00")
    assert int(ciphers) == len(non_grease(python_hello.cipher_suites))
    assert int(extensions) == len(non_grease(python_hello.extensions))
    tokens = set(re.split("[_,]", ja4_raw(python_hello))[1:])
    assert not {f"{g:04x}" for g in GREASE} & tokens
    parts = ja3(python_hello).split(",")
    assert parts[0] == "771" and len(parts) == 5
    assert parts[1] == "-".join(str(c) for c in python_hello.cipher_suites)
    assert re.fullmatch("[0-9a-f]{32}", ja3_hash(python_hello))


# -- the recorder ---------------------------------------------------------------------------------


async def test_recorder_answers_and_records(server: HelloRecorder) -> None:
    response = await python_get(server, server_hostname=HOST, protocols=["h2", "http/1.1"])
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in head
    hello = server.hellos[0]
    assert hello.server_name == HOST and hello.alpn == ("h2", "http/1.1")
    assert ja4(hello)[3] == "d" and ja4(hello)[8:10] == "h2"
    # the body reports the fingerprints; the server chose HTTP/1.1 although h2 was offered first
    assert b'"ja4": "%s"' % ja4(hello).encode() in body
    request = server.requests[0]
    assert (request.method, request.path, request.alpn) == ("GET", "/probe", "http/1.1")
    assert request.headers["user-agent"] == "python-ssl" and request.hello is hello
    assert server.errors == []


async def test_recorder_makes_its_own_certificate(tmp_path: Path) -> None:
    async with HelloRecorder(tmp_path, timeout=WAIT) as server:
        assert server.url == f"https://127.0.0.1:{server.port}/"
        assert (await python_get(server)).startswith(b"HTTP/1.1 200 OK")
    assert (tmp_path / "cert.pem").exists() and len(server.hellos) == 1


async def test_recorder_reassembles_a_hello_fragmented_over_records_and_reads(server: HelloRecorder) -> None:
    """A real client's hello re-cut into 9 records and sent 7 bytes a write: recorded, then the TLS
    handshake on the same bytes succeeds and the request is answered."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    first = outgoing.read()
    assert first[0] == 22 and int.from_bytes(first[3:5]) == len(first) - 5  # one record as sent
    fragmented = records(first[5:], [2, 3, 1, 10, 50, 50, 50, 100])
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for i in range(0, len(fragmented), 7):
                writer.write(fragmented[i : i + 7])
                await writer.drain()
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    writer.write(outgoing.read())
                    await writer.drain()
                    data = await reader.read(65536)
                    assert data, server.errors
                    incoming.write(data)
            tls.write(b"GET /fragmented HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            writer.write(outgoing.read())
            response = bytearray()
            while data := await reader.read(65536):
                incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    while chunk := tls.read(65536):
                        response += chunk
        finally:
            writer.close()
            await writer.wait_closed()
    assert response.startswith(b"HTTP/1.1 200 OK"), (response[:80], server.errors)
    assert server.hellos[0] == parse_client_hello(first)
    assert server.requests[0].path == "/fragmented"


async def test_recorder_reports_a_client_that_speaks_no_tls(server: HelloRecorder) -> None:
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        try:  # closed without an answer (a reset: the server leaves the request unread)
            answer = await reader.read()
        except ConnectionResetError:
            answer = b""
        assert answer == b""
        writer.close()
        await writer.wait_closed()
    assert server.hellos == [] and len(server.errors) == 1
    assert server.errors[0].startswith("NotHandshake: ")
    # the server goes on serving
    assert (await python_get(server)).startswith(b"HTTP/1.1 200 OK")


async def test_recorder_reports_a_client_that_leaves_mid_hello(server: HelloRecorder) -> None:
    partial = records(hello_message([0x1301], [groups([0x1D])]))[:20]
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(partial)
        await writer.drain()
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
    assert server.hellos == [] and server.errors[0].startswith("IncompleteReadError")


# -- curl_cffi's browser impersonation ------------------------------------------------------------


def test_profiles_exist_in_curl_cffi() -> None:
    names = {b.value for b in BrowserType}
    assert {"chrome152", "chrome131", "firefox155"} <= names
    profiles = browser_profiles()
    assert {"chrome", "firefox"} <= set(profiles)
    assert all(JA4_SHAPE.match(v) and v[3] == "d" for v in profiles.values())
    assert profiles["chrome"] != profiles["firefox"]


@pytest.mark.parametrize("profile", sorted(browser_profiles()))
async def test_curl_cffi_presents_the_browsers_ja4(server: HelloRecorder, profile: str) -> None:
    """With SNI (a hostname curl resolves to 127.0.0.1) the JA4 is the published browser's; to the bare
    IP address it is the same without SNI."""
    expected = browser_profiles()[profile]
    status, body = await curl_get(server, profile, host=HOST)
    assert (status, body["ja4"]) == (200, expected)
    status, body = await curl_get(server, profile)
    assert (status, body["ja4"]) == (200, ja4_without_sni(expected))
    named, bare = server.hellos
    assert named.server_name == HOST and bare.server_name is None
    assert ja4(named) == expected, ja4_raw(named)
    assert ja4(bare) == ja4_without_sni(expected), ja4_raw(bare)
    # ALPN h2 offered first, HTTP/1.1 chosen by the recorder, so curl fell back to HTTP/1.1
    assert named.alpn[0] == "h2" and [r.alpn for r in server.requests] == ["http/1.1", "http/1.1"]
    assert server.errors == []


async def test_chrome_profile_differs_from_python_ssl(server: HelloRecorder) -> None:
    """GREASE, ALPN h2, X25519MLKEM768 and permuted extensions: Chrome's traits that Python's ssl lacks."""
    await python_get(server)
    for _ in range(2):
        assert (await curl_get(server, "chrome"))[0] == 200
    python, chrome, chrome_again = server.hellos
    assert chrome.grease and not python.grease
    assert {is_grease(chrome.cipher_suites[0]), is_grease(chrome.extensions[0])} == {True}
    assert chrome.alpn == ("h2", "http/1.1") and python.alpn == ()
    assert 0x11EC in chrome.key_share_groups and 0x11EC not in python.key_share_groups
    assert ja4(chrome) != ja4(python)
    assert ja4(chrome).split("_")[1] != ja4(python).split("_")[1]
    assert ja4(chrome) == ja4(chrome_again)
    # Chrome permutes its extensions on every connection (17! orders): JA3 changes, JA4 does not
    assert non_grease(chrome.extensions) != non_grease(chrome_again.extensions)
    assert ja3(chrome) != ja3(chrome_again)


async def test_firefox_profile_matches_firefox_ja3(server: HelloRecorder) -> None:
    """Firefox does not permute extensions, so its JA3 is stable: 424f6d9c8b8928c0a0489a4f1a0f3e89 was
    computed from real Firefox 154.0 and 155.0 ClientHellos (with SNI).  No GREASE, unlike Chrome."""
    assert (await curl_get(server, "firefox", host=HOST))[0] == 200
    firefox = server.hellos[0]
    assert ja3_hash(firefox) == "424f6d9c8b8928c0a0489a4f1a0f3e89", ja3(firefox)
    assert not firefox.grease and firefox.alpn == ("h2", "http/1.1")
