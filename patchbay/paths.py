"""Where patchbay keeps its files, and how it writes the private ones.

One reader of ``PATCHBAY_HOME``: when it is set, config and data both live there (a test, a
container, a second installation); otherwise the XDG directories are used.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["config_dir", "data_dir", "write_private_json"]


def _home() -> Path | None:
    home = os.environ.get("PATCHBAY_HOME")
    return Path(home) if home else None


def config_dir() -> Path:
    """patchbay's config directory: ``$PATCHBAY_HOME``, else ``$XDG_CONFIG_HOME/patchbay``."""
    return _home() or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "patchbay"


def data_dir() -> Path:
    """Where patchbay keeps its data: ``$PATCHBAY_HOME``, else ``$XDG_DATA_HOME/patchbay``."""
    return _home() or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "patchbay"


def write_private_json(path: Path, document: object) -> None:
    """Write ``document`` as JSON to ``path``, replaced atomically: created 0600 in a 0700
    directory, it never exists with wider permissions nor half written (stored keys, cookies)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # a directory made before, by an older version or by hand
        os.chmod(path.parent, 0o700)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)  # 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2, sort_keys=True, ensure_ascii=False)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
