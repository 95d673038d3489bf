"""Redaction that cannot be cut around (issue 15).

A registered secret is hidden in every form an upstream may echo it in (plain, URL-quoted,
JSON-escaped, inside base64) and wherever a cut falls: every output path redacts the whole text
before shortening it. The property: no 8-character piece of the secret, nor of the encoded form
it was written in, appears in any output.
"""

from __future__ import annotations

import base64
import contextlib
import json
import string
import urllib.parse
from collections.abc import Callable, Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

import patchbay.redact as secrets_module
from patchbay.errors import PatchbayError, ProtocolError
from patchbay.net.cookiejar import CookieJar
from patchbay.net.session import error_for_response
from patchbay.providers.openai_compatible import _error_message, _parse_json
from patchbay.redact import clip, encoded_forms, redact, register_secret

PIECE = 8  # the longest run of a secret's characters an output may show
KEY_ALPHABET = string.ascii_letters + string.digits + "+/=-_"
FILLER = " .,;:!?()<>~\n"  # disjoint from the key alphabet, so filler never forms a piece of a key
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

secrets_st = st.text(alphabet=KEY_ALPHABET, min_size=16, max_size=64)
filler_st = st.text(alphabet=FILLER, max_size=40)


@contextlib.contextmanager
def isolated_registry() -> Iterator[None]:
    """Register secrets for one example only, so examples do not pile up forms for later tests."""
    saved = secrets_module._secrets, secrets_module._forms
    secrets_module._secrets, secrets_module._forms = frozenset(), ()
    try:
        yield
    finally:
        secrets_module._secrets, secrets_module._forms = saved


def pieces(*forms: str) -> set[str]:
    return {form[i:i + PIECE] for form in forms for i in range(len(form) - PIECE + 1)}


def assert_hidden(output: str, forbidden: set[str], where: str) -> None:
    leaked = sorted(piece for piece in forbidden if piece in output)
    assert not leaked, f"{where}: {leaked[:3]} leaked in {output!r}"


def base64_middle(encoded: str, offset: int, size: int) -> str:
    """The characters of ``encoded`` whose bits all come from bytes ``offset .. offset+size-1``
    (computed here on its own, not with the module's helper)."""
    chars = [c for i, c in enumerate(encoded) if 6 * i // 8 >= offset and (6 * i + 5) // 8 < offset + size]
    return "".join(chars)


ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda s: s,
    "quote": urllib.parse.quote,
    "quote_safe_none": lambda s: urllib.parse.quote(s, safe=""),
    "quote_plus": urllib.parse.quote_plus,
}


@st.composite
def exposures(draw: st.DrawFn) -> tuple[str, str, int, int, str]:
    """(secret, text, start, end, written): ``text`` holds the secret written as ``written``
    at ``text[start:end]``, in one of the encodings."""
    secret = draw(secrets_st)
    prefix, suffix = draw(filler_st), draw(filler_st)
    kind = draw(st.sampled_from([*ENCODINGS, "json", "base64", "base64_urlsafe"]))
    if kind in ENCODINGS:
        written = ENCODINGS[kind](secret)
        text = prefix + written + suffix
        return secret, text, len(prefix), len(prefix) + len(written), written
    if kind == "json":
        document = json.dumps({"error": {"message": prefix + secret + suffix, "code": 7}})
        written = json.dumps(secret)[1:-1]
        start = document.index(written)
        return secret, document, start, start + len(written), written
    offset = draw(st.integers(0, 5))
    data = draw(st.binary(min_size=offset, max_size=offset)) + secret.encode() + draw(st.binary(max_size=6))
    encode = base64.b64encode if kind == "base64" else base64.urlsafe_b64encode
    encoded = encode(data).decode("ascii")
    stable = [i for i in range(len(encoded)) if 6 * i // 8 >= offset and (6 * i + 5) // 8 < offset + len(secret)]
    written = base64_middle(encoded, offset, len(secret))
    text = prefix + encoded + suffix
    start = len(prefix) + stable[0]
    return secret, text, start, start + len(written), written


@SETTINGS
@given(exposures())
def test_clip_hides_the_secret_at_every_cut(case: tuple[str, str, int, int, str]) -> None:
    secret, text, start, end, written = case
    forbidden = pieces(secret, written)
    with isolated_registry():
        register_secret(secret)
        for limit in range(max(start - PIECE, 0), end + PIECE + 1):
            output = clip(text, limit)
            assert len(output) <= limit
            assert_hidden(output, forbidden, f"clip(text, {limit})")
        assert_hidden(redact(text), forbidden, "redact")


@SETTINGS
@given(exposures())
def test_errors_hide_the_secret(case: tuple[str, str, int, int, str]) -> None:
    secret, text, _start, _end, written = case
    forbidden = pieces(secret, written)
    with isolated_registry():
        register_secret(secret)
        error = PatchbayError(text, provider="upstream")
        assert_hidden(error.message, forbidden, "PatchbayError.message")
        assert_hidden(str(error), forbidden, "str(PatchbayError)")
        assert_hidden(json.dumps(error.to_dict()), forbidden, "PatchbayError.to_dict")


def shifted(text: str, start: int, cut: int, shift: int) -> str:
    """``text`` padded in front so that its byte ``start`` lands ``shift`` characters after ``cut``."""
    return "~" * max(cut + shift - start, 0) + text


@SETTINGS
@given(exposures(), st.sampled_from([400, 401, 404, 429, 500, 502]))
def test_error_for_response_hides_the_secret_around_its_cut(case: tuple[str, str, int, int, str],
                                                             status: int) -> None:
    secret, text, start, end, written = case
    forbidden = pieces(secret, written)
    with isolated_registry():
        register_secret(secret)
        for shift in range(-(end - start) - PIECE, PIECE + 1):  # the secret ends 8 before .. starts 8 after the cut
            body = shifted(text, start, 200, shift)
            error = error_for_response(status, body, {})
            assert_hidden(str(error), forbidden, f"error_for_response (shift {shift})")
            wrapped = json.dumps({"error": {"message": shifted(secret, 0, 200, shift)}})
            assert_hidden(str(error_for_response(status, wrapped, {})), forbidden, "error_for_response JSON")


@SETTINGS
@given(exposures())
def test_openai_compatible_excerpts_hide_the_secret(case: tuple[str, str, int, int, str]) -> None:
    """The 500-character error message and the 80-character excerpt of a body that is not JSON."""
    secret, text, start, end, written = case
    forbidden = pieces(secret, written)
    with isolated_registry():
        register_secret(secret)
        for shift in range(-(end - start) - PIECE, PIECE + 1):
            message, _param = _error_message(shifted(text, start, 500, shift).replace("<", "("))
            assert_hidden(message, forbidden, f"_error_message (shift {shift})")
            body = "not json " + shifted(text, start, 80 - len("not json "), shift)
            try:
                _parse_json(body)
            except ProtocolError as error:
                assert_hidden(str(error), forbidden, f"_parse_json (shift {shift})")
            else:
                raise AssertionError("a body that is not JSON was parsed")


@SETTINGS
@given(st.text(alphabet=KEY_ALPHABET + "\"\\ é€\t", min_size=16, max_size=40), filler_st)
def test_odd_characters_are_hidden_json_escaped_and_quoted(secret: str, filler: str) -> None:
    """A secret with quotes, backslashes, spaces or non-ASCII, echoed JSON-escaped or URL-quoted."""
    with isolated_registry():
        register_secret(secret)
        for written in (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
                        urllib.parse.quote(secret), urllib.parse.quote_plus(secret)):
            text = filler + written + filler
            assert_hidden(redact(text), pieces(written), "redact")
            for limit in range(max(len(filler) - PIECE, 0), len(filler) + len(written) + PIECE):
                assert_hidden(clip(text, limit), pieces(written), f"clip(text, {limit})")


def test_issue_example_bearer_url_encoded() -> None:
    secret = "sk-test+Zr/Qy7w9mB2xK4pL1nV8cR5tH3jD0fA"
    with isolated_registry():
        register_secret(secret)
        body = "invalid header: Authorization=Bearer%20" + urllib.parse.quote(secret, safe="")
        assert "Zr%2F" not in redact(body)
        assert "[REDACTED]" in str(error_for_response(401, body, {}))


def test_encoded_forms_skip_duplicates_and_keep_the_value() -> None:
    forms = encoded_forms("abcdefghijklmnop")
    assert "abcdefghijklmnop" in forms
    assert len(forms) == len(set(forms))
    assert all(len(form) >= 4 for form in forms)


def test_clip_marks_a_cut_and_leaves_short_text_alone() -> None:
    assert clip("short", 10) == "short"
    assert clip("0123456789abc", 10) == "012345678…"
    assert clip("0123456789abc", 10, marker="...") == "0123456..."
    assert clip("0123456789", 0) == ""


def test_overlapping_secrets_are_hidden_together() -> None:
    first, second = "AAAAAAAAAAAAxyzw", "xyzwBBBBBBBBBBBB"
    with isolated_registry():
        register_secret(first)
        register_secret(second)
        output = redact("start AAAAAAAAAAAAxyzwBBBBBBBBBBBB end")
        assert output == "start [REDACTED] end"


def test_a_stored_cookie_is_redacted_afterwards() -> None:
    value = "s3ss10n-C00kie+value/that=leaks"
    with isolated_registry():
        jar = CookieJar()
        jar.update_from(URL("https://liaobots.example/api"), [f"gkp2={value}; Path=/; HttpOnly"])
        assert jar.header_for(URL("https://liaobots.example/api")) is not None
        output = redact(f"upstream said: cookie {value} rejected; Cookie: gkp2={urllib.parse.quote(value, safe='')}")
        assert value not in output
        assert not any(piece in output for piece in pieces(value, urllib.parse.quote(value, safe="")))
