"""Recognising browser challenges in error answers (patchbay.net.challenge) and the error they become."""

from __future__ import annotations

import pytest

from patchbay.errors import ChallengeRequired, PermissionDenied, UpstreamError
from patchbay.net.session import error_for_response
from tests.replicas.base import CHALLENGE_PAGE

HTML = {"content-type": "text/html; charset=UTF-8"}


@pytest.mark.parametrize(("status", "headers", "body"), [
    (403, {**HTML, "cf-mitigated": "challenge"}, "<html></html>"),
    (503, HTML, CHALLENGE_PAGE),
    (403, HTML, "<!DOCTYPE html><title>Attention Required! | Cloudflare</title>"),
    (403, {**HTML, "server": "cloudflare"}, "<!DOCTYPE html><html><body>blocked</body></html>"),
    (429, {}, '<script src="/cdn-cgi/challenge-platform/h/b/orchestrate/jsch/v1"></script>'),
])
def test_challenge_pages_become_challenge_required_without_their_html(
        status: int, headers: dict[str, str], body: str) -> None:
    error = error_for_response(status, body, headers, during="chat")
    assert isinstance(error, ChallengeRequired) and error.status == 403
    assert error.cools_down_at_once
    assert "<" not in error.message and "patchbay cookies import" in error.message and "(chat)" in error.message


@pytest.mark.parametrize(("status", "headers", "body", "expected"), [
    (403, {"server": "cloudflare", "content-type": "application/json"}, '{"error": {"message": "no access"}}',
     PermissionDenied),  # an API behind Cloudflare refusing a key is not a challenge
    (502, {"server": "cloudflare"}, CHALLENGE_PAGE, UpstreamError),  # not a status challenges use
    (403, HTML, "<!DOCTYPE html><p>Forbidden</p>", PermissionDenied),
])
def test_ordinary_answers_are_not_challenges(status: int, headers: dict[str, str], body: str,
                                             expected: type) -> None:
    error = error_for_response(status, body, headers)
    assert type(error) is expected
