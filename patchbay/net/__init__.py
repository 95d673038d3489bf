"""Upstream HTTP: the one transport interface, its implementations, sessions and decoders.

- :mod:`patchbay.net.transport`: the :class:`~patchbay.net.transport.Transport` interface.
- :mod:`patchbay.net.pool` (httptools) and :mod:`patchbay.net.curl` (curl_cffi): its implementations.
- :mod:`patchbay.net.session`: redirects, cookies (:mod:`patchbay.net.cookiejar`), deadlines, browser
  challenges (:mod:`patchbay.net.challenge`) and the mapping of failures to patchbay's errors.
- :mod:`patchbay.net.decoders`: bytes in, text / lines / server-sent events / JSON values out.

No module of patchbay outside this package imports an HTTP client library: an import-linter
contract in pyproject.toml checks it (tests/test_layers.py runs it). Being a regular package (this
file) is what lets import-linter, mypy and pkgutil see the modules below.
"""

__all__: list[str] = []
