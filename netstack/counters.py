"""Named drop and event counters (STYLE.md §3: drop early, count every drop).

Names are dotted, ``<protocol>.<reason>`` (``ipv4.bad_checksum``,
``tcp.no_flow``); the wire modules' :class:`~netstack.wire.Malformed`
carries such a name.  Counters only grow.  ``snapshot()`` is what tools and
tests read.
"""

from __future__ import annotations


class Counters:
    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, int] = {}

    def bump(self, name: str, n: int = 1) -> None:
        values = self._values
        values[name] = values.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)

    def __setitem__(self, name: str, value: int) -> None:
        # Lets modules written against collections.Counter share these
        # (``counters[name] += 1``).
        self._values[name] = value

    def snapshot(self) -> dict[str, int]:
        return dict(self._values)

    def total(self, prefix: str = "") -> int:
        return sum(v for k, v in self._values.items() if k.startswith(prefix))
