"""Configuration value objects shared by every provider.

Timeouts are a value object (like httpx's ``Timeout``) with one field per kind of wait, so a
provider, the router and the server all speak about the same four limits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from patchbay.errors import InvalidRequest

__all__ = ["UNSET", "Timeout", "TimeoutTypes", "Unset"]


class Unset(enum.Enum):
    """Sentinel type for "use the default", distinct from ``None`` (which means "no limit")."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET


@dataclass(frozen=True, slots=True)
class Timeout:
    """Limits in seconds for each kind of network wait; ``None`` means no limit.

    - ``connect``: opening the connection (TCP, TLS, proxy).
    - ``first_byte``: from sending the request to the first byte of the answer's body.
    - ``idle``: the longest gap between two chunks of a streamed answer.
    - ``total``: the whole request, start to end of stream.
    """

    connect: float | None = 10.0
    first_byte: float | None = 60.0
    idle: float | None = 60.0
    total: float | None = 600.0

    def __post_init__(self) -> None:
        for name in ("connect", "first_byte", "idle", "total"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise InvalidRequest(f"timeout {name} must be a positive number of seconds or None, got {value!r}",
                                     param=f"timeout.{name}")

    @classmethod
    def of(cls, value: TimeoutTypes) -> Timeout:
        """Build from what callers pass: a ``Timeout``, one number (a total), ``None`` or UNSET."""
        if value is UNSET or value is None:
            return cls()
        if isinstance(value, Timeout):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            # One number bounds the whole request and every wait inside it.
            default = cls()
            return cls(
                connect=min(float(value), default.connect or float(value)),
                first_byte=float(value),
                idle=float(value),
                total=float(value),
            )
        raise InvalidRequest(f"timeout must be a number of seconds or a patchbay.Timeout, got {value!r}",
                             param="timeout")

    def replace(self, **changes: float | None) -> Timeout:
        return replace(self, **changes)

    def with_total(self, total: float | None) -> Timeout:
        """A copy with another total (the router hands each attempt what is left of the deadline).

        Cheaper than :meth:`replace`, which re-checks every field; this runs once per attempt."""
        if total is not None and not total > 0:
            raise InvalidRequest(f"timeout total must be positive, got {total!r}", param="timeout.total")
        copy = object.__new__(Timeout)
        for name in ("connect", "first_byte", "idle"):
            object.__setattr__(copy, name, getattr(self, name))
        object.__setattr__(copy, "total", total)
        return copy


TimeoutTypes = Timeout | float | int | None | Unset
