"""A set of non-negative integers kept as sorted, disjoint half-open ranges.

The spool's released ids are mostly long runs (a partition's submissions are
acknowledged together, whole segments' worth of ids are released), so ranges
keep the bookkeeping small: its size grows with the number of alternations
between released and pending runs, not with the number of ids.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Iterable, Iterator


class RangeSet:
    """Sorted disjoint [lo, hi) ranges; touching ranges are merged."""

    __slots__ = ("_starts", "_ends", "_count")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._count = 0
        for lo, hi in ranges:
            self.add_range(lo, hi)

    def __len__(self) -> int:
        """How many integers the set holds."""
        return self._count

    def __contains__(self, x: int) -> bool:
        i = bisect_right(self._starts, x) - 1
        return i >= 0 and x < self._ends[i]

    def __repr__(self) -> str:
        shown = ", ".join(f"[{lo},{hi})" for lo, hi in list(self.ranges())[:8])
        more = "" if len(self._starts) <= 8 else f", ... {len(self._starts) - 8} more"
        return f"RangeSet({shown}{more})"

    def ranges(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends)

    @property
    def range_count(self) -> int:
        return len(self._starts)

    def add(self, x: int) -> bool:
        """Add one integer; True if it was not in the set before."""
        return self.add_range(x, x + 1) == 1

    def add_range(self, lo: int, hi: int) -> int:
        """Add [lo, hi); return how many integers were new."""
        if lo >= hi:
            return 0
        starts, ends = self._starts, self._ends
        i = bisect_left(ends, lo)        # first range ending at or after lo (touching merges)
        j = bisect_right(starts, hi)     # ranges starting at or before hi
        if i == j:                       # nothing overlaps or touches
            starts.insert(i, lo)
            ends.insert(i, hi)
            self._count += hi - lo
            return hi - lo
        if j == i + 1:               # the common case: one neighbour
            covered = max(0, min(ends[i], hi) - max(starts[i], lo))
        else:
            covered = sum(max(0, min(ends[k], hi) - max(starts[k], lo)) for k in range(i, j))
        new_lo, new_hi = min(lo, starts[i]), max(hi, ends[j - 1])
        starts[i:j] = [new_lo]
        ends[i:j] = [new_hi]
        self._count += (hi - lo) - covered
        return (hi - lo) - covered

    def count_in(self, lo: int, hi: int) -> int:
        """How many integers of [lo, hi) are in the set."""
        if lo >= hi:
            return 0
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, lo)
        total = 0
        while i < len(starts) and starts[i] < hi:
            total += min(ends[i], hi) - max(starts[i], lo)
            i += 1
        return total

    def first_missing(self, x: int) -> int:
        """The smallest integer >= x not in the set."""
        i = bisect_right(self._starts, x) - 1
        if i >= 0 and x < self._ends[i]:
            return self._ends[i]
        return x

    def missing_in(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """The ranges of [lo, hi) that are not in the set, in order."""
        x = self.first_missing(lo)
        starts = self._starts
        while x < hi:
            i = bisect_right(starts, x)
            nxt = starts[i] if i < len(starts) else hi
            yield x, min(nxt, hi)
            if nxt >= hi:
                return
            x = self.first_missing(nxt)

    def flat(self) -> list[int]:
        """[lo0, hi0, lo1, hi1, ...] for storage."""
        out: list[int] = []
        for lo, hi in self.ranges():
            out += (lo, hi)
        return out

    @classmethod
    def from_flat(cls, flat: list[int]) -> "RangeSet":
        if len(flat) % 2 or not all(isinstance(v, int) and v >= 0 for v in flat):
            raise ValueError("a stored range list must be pairs of non-negative ints")
        return cls(zip(flat[0::2], flat[1::2]))
