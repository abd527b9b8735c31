"""Wire formats: one module per protocol, two levels each (STYLE.md §2).

* A **checked view** (``XxxView``) wraps a ``memoryview``.  ``XxxView.check(buf)``
  validates every length the accessors depend on, once, and raises
  :class:`Malformed` otherwise; after that no accessor can fail or read out of
  bounds.  Views never copy.
* A **value** (``XxxHeader`` and friends): a small frozen dataclass with
  ``parse(view)`` (classmethod, may raise :class:`Malformed` for semantic
  errors), ``buffer_len`` (bytes ``emit`` will write) and
  ``emit(buf, offset, ...)`` that writes into a caller-provided ``bytearray``
  (headers are built in reserved headroom, never by concatenation on a hot
  path).

:class:`Malformed` carries the name of the drop counter the dispatch point
increments (``"ipv4.bad_ihl"``...), so every early return on ingress is
counted under a stable name.
"""


class Malformed(ValueError):
    """A frame failed a check; ``counter`` names the drop counter to bump."""

    __slots__ = ("counter",)

    def __init__(self, counter: str):
        super().__init__(counter)
        self.counter = counter
