"""A deep model's timeline from shallow traces: trace few layers, verify the period, repeat.

A fake-tensor trace costs the same per op whatever the sizes, and most ops are in the
repeated layers: SOLAR-10.7B's training step is 48 copies of one block's forward,
recompute and backward. The layers are identical, so the recorded timeline (allocations,
frees, retags, phases: ``tracer.LiveStorageTracker.events``) of a model with ``d + 1``
layers per stack is the one with ``d`` layers plus one layer's events inserted at a few
points (each stack's forward, its backward in reverse, the optimizer's per-parameter
work, ...). Events carry their own sizes, so the insertions are plain sub-sequences and
repeating them ``n`` times gives the timeline with ``d + n`` layers:

    T(d + n) = T(d)[:p1] + I1 * n + T(d)[p1:p2] + I2 * n + ... + T(d)[pk:]

``insertions`` finds the points and segments from ``T(d)`` and ``T(d + 1)`` (the
alignment with the fewest inserted runs: one per place a layer adds work); the caller
traces ``T(d + 2)`` as well and uses the repetition only when ``pumped(T(d), ins, 2)``
equals it event for event (and parameter counts and compute costs are exactly affine in
the depth). Peaks are then taken by replaying the full-depth timeline, never
extrapolated: a peak that moves with depth (the backward peak does when embedding
gradients are large) is found where it is. Anything that is not exactly periodic fails
the check and the caller traces the full model.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import numpy as np

Event = tuple
Insertions = list[tuple[int, list[Event]]]


def _table_dtype(width: int) -> tuple[type, int]:
    """The alignment table's integer type and its "unreachable" value ``far``.

    A reachable cell counts runs of inserted events, at most one per inserted event, so
    at most ``width - 1``. No cell exceeds ``far + 1``: a match copies a value of the row
    above (``matched <= far``), ``_opened`` adds 1 to a matched value. The traceback only
    ever compares a reachable cell with another cell, so any ``far`` above every reachable
    value gives the same alignment; int16 then halves the table of int32 (on a T5-base
    step, 12k x 5k cells: the table's memory is most of the time)."""
    far = width + 1
    if far + 1 <= np.iinfo(np.int16).max:
        return np.int16, far
    return np.int32, far


def insertions(a: Sequence[Event], b: Sequence[Event]) -> Insertions | None:
    """``[(position in a, segment)]`` with ``b`` = ``a`` with each segment inserted at its
    position (positions ascending), using as few segments as possible; None when ``b``
    is not ``a`` with insertions.

    A banded dynamic program over (events of ``a`` aligned, events of ``b`` inserted so
    far): ``matched[i][k]`` / ``inserting[i][k]`` is the fewest runs that align
    ``a[:i]`` with ``b[:i + k]`` ending in a match / inside an inserted run.
    ``k <= len(b) - len(a)``, so the table is ``len(a) x (extra + 1)``, one numpy row
    per event of ``a``, each computed into place (no temporaries: the rows of the large
    tables are the cost)."""
    extra = len(b) - len(a)
    if extra < 0:
        return None
    ids: dict[Event, int] = {}
    a_ids = np.fromiter((ids.setdefault(e, len(ids)) for e in a), np.int32, len(a))
    b_ids = np.fromiter((ids.setdefault(e, len(ids)) for e in b), np.int32, len(b))
    n, width = len(a), extra + 1
    dtype, far = _table_dtype(width)
    matched = np.empty((n + 1, width), dtype)
    inserting = np.empty((n + 1, width), dtype)
    matched[0] = far
    matched[0, 0] = 0
    _opened(matched[0], inserting[0], far)
    unequal = np.empty(width, bool)
    for i in range(1, n + 1):
        # a[i-1] against b[i-1+k] for every k: a match keeps k, from either state; no
        # match, no way to end there in a match (``far``).
        np.not_equal(b_ids[i - 1 : i - 1 + width], a_ids[i - 1], out=unequal)
        row = matched[i]
        np.minimum(matched[i - 1], inserting[i - 1], out=row)
        np.copyto(row, far, where=unequal)
        _opened(row, inserting[i], far)
    if min(matched[n, extra], inserting[n, extra]) >= far:
        return None
    return _runs(b, _inserted(matched, inserting, n, extra))


def _opened(matched_row: np.ndarray, out: np.ndarray, far: int) -> None:
    """Inserting ``b[i + k - 1]``: a run opened after a match at some ``k' < k`` (cost
    + 1) and extended for free, so the prefix minimum of the shifted row (into ``out``)."""
    out[0] = far
    np.add(matched_row[:-1], 1, out=out[1:])
    np.minimum.accumulate(out, out=out)


def _inserted(matched: np.ndarray, inserting: np.ndarray, i: int, k: int) -> list[int]:
    """Walk the table back from ``(i, k)``: the indices of ``b`` that were inserted
    (descending). Ties keep an inserted run going, so runs stay whole."""
    out: list[int] = []
    in_run = inserting[i, k] <= matched[i, k]
    while i > 0 or k > 0:
        if in_run:
            out.append(i + k - 1)
            cost = inserting[i, k]
            k -= 1
            in_run = inserting[i, k] == cost
        else:
            i -= 1
            in_run = inserting[i, k] < matched[i, k]
    return out


def _runs(b: Sequence[Event], inserted: list[int]) -> Insertions:
    """Inserted indices of ``b`` -> ``(position in a, run)`` per run of consecutive ones."""
    bounds: list[list[int]] = []
    for index in sorted(inserted):
        if bounds and index == bounds[-1][1] + 1:
            bounds[-1][1] = index
        else:
            bounds.append([index, index])
    found: Insertions = []
    before = 0  # events of b inserted before this run
    for first, last in bounds:
        found.append((first - before, list(b[first : last + 1])))
        before += last + 1 - first
    return found


def repeating(
    a: Sequence[Event],
    b: Sequence[Event],
    c: Sequence[Event],
    rounds: int = 64,
    view: Callable[[Sequence[Event]], list[Event]] | None = None,
) -> Insertions | None:
    """Insertions that turn ``a`` into ``b`` once and into ``c`` twice; None if there are
    none this search finds.

    With ``view``, ``c`` is a recording at another batch size (other sizes, same ops):
    ``view(a twice inserted)`` must equal ``view(c)`` (``timeline.structure``: sizes and
    costs aside), and in ``c`` the two copies of each insertion must be equal event for
    event (``split`` then cuts ``c`` at them).

    The fewest runs that turn ``a`` into ``b`` can merge two layers' insertions: with
    ``a = E E D D`` (two encoder layers' gradients, then two decoder layers') and
    ``b = E E E D D D``, inserting ``E D`` between the stacks also gives ``b``, but
    twice it gives ``E E E D E D D D``, not ``c``. Where ``pumped(a, ins, 2)`` first
    differs from ``c``, the run there is split into ``X`` (kept in place) and ``Y`` moved
    to the end of the repeats of ``Y`` that follow it in ``a`` (which leaves ``b``
    unchanged); a split that makes the two agree further on is kept."""
    found = insertions(a, b)
    if found is None:
        return None
    if view is None:

        def reach(inserted: Insertions) -> int | None:
            return _agreement(pumped(a, inserted, 2), c)
    else:
        seen_c = view(c)

        def reach(inserted: Insertions) -> int | None:
            agree = _agreement(view(pumped(a, inserted, 2)), seen_c)
            unequal = _unequal_copies(c, inserted)
            return min((i for i in (agree, unequal) if i is not None), default=None)

    for _ in range(rounds):
        agree = reach(found)
        if agree is None:
            return found
        better = None
        for candidate in _splits(a, found, _run_at(found, agree)):
            further = reach(candidate)
            if further is None:
                return candidate
            if further > agree and (better is None or further > better[0]):
                better = (further, candidate)
        if better is None:
            return None
        found = better[1]
    return None


def _unequal_copies(c: Sequence[Event], inserted: Insertions) -> int | None:
    """Index in ``c`` (read as ``a`` with each insertion made twice) of the first event of
    a second copy that differs from the first; None when every two copies are equal."""
    cursor, before = 0, 0
    for position, segment in inserted:
        cursor += position - before
        length = len(segment)
        for k in range(length):
            second = cursor + length + k
            if second >= len(c) or c[second] != c[cursor + k]:
                return min(second, len(c))
        cursor += 2 * length
        before = position
    return None


def _agreement(out: list[Event], c: Sequence[Event]) -> int | None:
    """Index of the first difference of ``out`` and ``c``; None when they are equal."""
    if len(out) == len(c) and out == c:
        return None
    for index, (x, y) in enumerate(zip(out, c, strict=False)):
        if x != y:
            return index
    return min(len(out), len(c))


def _run_at(found: Insertions, index: int) -> int:
    """The last insertion whose two copies start at or before ``index`` of the output."""
    run, inserted = 0, 0
    for j, (position, segment) in enumerate(found):
        if position + inserted > index:
            break
        run = j
        inserted += 2 * len(segment)
    return run


def _splits(a: Sequence[Event], found: Insertions, j: int) -> list[Insertions]:
    """``found`` with run ``j`` split as ``_splits`` in ``repeating`` describes."""
    position, segment = found[j]
    limit = found[j + 1][0] if j + 1 < len(found) else len(a)
    out = []
    for cut in range(1, len(segment)):
        tail = segment[cut:]
        end = position
        while end + len(tail) <= limit and list(a[end : end + len(tail)]) == tail:
            end += len(tail)
        if end == position:
            continue
        split = [*found[:j], (position, segment[:cut]), (end, tail), *found[j + 1 :]]
        out.append(split)
    return out


def split(
    longer: Sequence[Event], layout: Sequence[tuple[int, int]], copies: int
) -> tuple[list[Event], Insertions] | None:
    """``(a, insertions)`` with ``pumped(a, insertions, copies) == longer``, where
    ``layout`` gives each insertion's position in ``a`` and length (``repeat.Repeat``); None
    when the ``copies`` of some segment differ (not periodic) or the lengths do not fit."""
    inserted_total = copies * sum(length for _, length in layout)
    if len(longer) < inserted_total:
        return None
    base: list[Event] = []
    found: Insertions = []
    cursor, before = 0, 0  # index in ``longer``; position in ``a`` reached
    for position, length in layout:
        if position < before:
            return None
        base.extend(longer[cursor : cursor + position - before])
        cursor += position - before
        segment = list(longer[cursor : cursor + length])
        if len(segment) != length:
            return None
        for copy in range(1, copies):
            start = cursor + copy * length
            if list(longer[start : start + length]) != segment:
                return None
        found.append((position, segment))
        cursor += copies * length
        before = position
    base.extend(longer[cursor:])
    return base, found


def carried_layout(
    longer: Sequence[Event],
    inserted: Insertions,
    other: Sequence[Event],
    view: Callable[[Sequence[Event]], list[Event]],
) -> list[tuple[int, int]] | None:
    """Where the two copies of each insertion of ``longer`` (``a`` with ``inserted`` made
    twice) lie in ``other``, the same step at another batch size that leaves some of
    ``longer``'s events out (in ``view``, e.g. ``timeline.structure``, ``other`` is
    ``longer`` with events removed): ``(position, length)`` per insertion, in ``split``'s
    terms; None when ``other`` is not such a subsequence or two copies lose different
    counts of events (``split`` then checks the copies are equal event for event).

    The events left out are the fewest runs of ``view(longer)`` whose removal gives
    ``view(other)`` (``insertions``, the other way round)."""
    missing = insertions(view(other), view(longer))
    if missing is None:
        return None
    dropped: list[int] = []  # indices in ``longer`` of the events ``other`` lacks
    for position, segment in missing:
        first = position + len(dropped)
        dropped.extend(range(first, first + len(segment)))

    def kept_before(index: int) -> int:
        return index - bisect.bisect_left(dropped, index)

    layout: list[tuple[int, int]] = []
    inserted_before, kept_inserted = 0, 0  # events of copies before this insertion
    for position, segment in inserted:
        start = position + inserted_before
        bounds = [kept_before(start + k * len(segment)) for k in range(3)]
        length = bounds[1] - bounds[0]
        if length <= 0 or bounds[2] - bounds[1] != length:
            return None
        layout.append((bounds[0] - kept_inserted, length))
        inserted_before += 2 * len(segment)
        kept_inserted += 2 * length
    return layout


def pumped(a: Sequence[Event], inserted: Insertions, copies: int) -> list[Event]:
    """``a`` with each segment inserted ``copies`` times at its position."""
    out: list[Event] = []
    start = 0
    for position, segment in inserted:
        out.extend(a[start:position])
        for _ in range(copies):
            out.extend(segment)
        start = position
    out.extend(a[start:])
    return out
