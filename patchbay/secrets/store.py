"""Stored credentials: ``patchbay keys set NAME`` keeps a key in ``keys.json`` in the config directory.

A stored key stands in for the environment variable of the same name: a provider configured with
``api_key_env = "GROQ_API_KEY"`` (or Liaobots, which reads ``LIAOBOTS_AUTH_CODES``) uses
``$GROQ_API_KEY`` when it is set, else the key stored as ``GROQ_API_KEY``. The file is readable by
its owner only (0600, in a 0700 directory) and is replaced atomically on every change.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from patchbay.errors import InvalidRequest
from patchbay.paths import config_dir, write_private_json

__all__ = ["KEY_NAME", "keys_path", "load_keys", "remove_key", "save_key", "stored_key"]

log = logging.getLogger("patchbay.secrets.store")

KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a valid environment variable name


def keys_path() -> Path:
    """``keys.json`` in the config directory (``$PATCHBAY_HOME``, else ``~/.config/patchbay``)."""
    return config_dir() / "keys.json"


def load_keys(path: Path | None = None) -> dict[str, str]:
    """The stored keys by name (empty when there is no file). A broken file is InvalidRequest."""
    path = path or keys_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read the keys file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InvalidRequest(f"the keys file {path} must be a JSON object of strings")
    return data


def save_key(name: str, value: str, path: Path | None = None) -> Path:
    """Store ``value`` as ``name`` (replacing any earlier value); returns the file written."""
    if not KEY_NAME.fullmatch(name):
        raise InvalidRequest(f"invalid key name {name!r}: use letters, digits and _, as in an environment variable")
    if not value:
        raise InvalidRequest("the key is empty")
    path = path or keys_path()
    keys = load_keys(path)
    keys[name] = value
    _write(path, keys)
    return path


def remove_key(name: str, path: Path | None = None) -> bool:
    """Forget the key ``name``; False when there was none."""
    path = path or keys_path()
    keys = load_keys(path)
    if keys.pop(name, None) is None:
        return False
    _write(path, keys)
    return True


def stored_key(name: str) -> str | None:
    """The stored key ``name``, or None (also when the file cannot be read: one warning)."""
    try:
        return load_keys().get(name)
    except InvalidRequest as exc:
        log.warning("%s", exc.message)
        return None


def _write(path: Path, keys: dict[str, str]) -> None:
    write_private_json(path, keys)  # sorted keys, 0600, replaced atomically
