"""The monday.com rate governor: one per token per process, shared by every client and run in the process.

monday meters each token by **complexity points per minute** (personal token: 10M reads and writes combined, 1M
on trial/free accounts; app tokens: 5M reads plus 5M writes; one query at most 5M; API-FACTS §6.5) and answers
an exhausted budget with ``COMPLEXITY_BUDGET_EXHAUSTED`` and ``retry_in_seconds``. Every query the client sends
asks for ``complexity { before after query reset_in_x_seconds }`` and hands it to ``observe``; the governor then
knows the budget left and when it resets, and ``acquire`` makes a caller wait for the reset when its query's
estimated cost (the last observed cost of the same query shape, ``learn``/``estimate``) would not fit (plus
``reset_margin_s``: monday rounds ``reset_in_x_seconds`` to whole seconds and its window slides). An error's
``retry_in_seconds`` holds every caller of the token back (``note_retry_in``).

Mutations on one board are serialised (a per-board lock: monday's best practice says concurrent mutations on a
board "can corrupt" its data) and, when ``mutations_per_minute_per_board`` is set, paced to at most that many in
any 60 s. **ASSUMPTION**: the "40 mutations per minute per board" figure is not in monday's docs (only
duplicate_board/duplicate_group/create_board have a documented 40/min), so pacing is off unless configured.

The lock and the pacing hold inside this process only. Across processes, the budget is shared through monday's
answers (every answer's ``complexity.after`` is the token's budget left, whoever spent it; a refused query waits
``retry_in_seconds``), and one board's mutations take turns through the client's ``board_guard`` (a database
lease the Dagster resource passes), not through this object. UNCONFIRMED: whether
an app token's separate read and write budgets are what ``complexity`` reports per query (``split_read_write``
keeps one state per kind; off by default).

``waited_s`` is the total time the governor made its callers wait (``waits`` by reason: complexity, retry_in,
board_pacing, board_lock, backoff), for run metadata and the benchmark. Clock and sleep are injectable.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PERSONAL_BUDGET_PER_MINUTE = 10_000_000
MAX_QUERY_COMPLEXITY = 5_000_000
WINDOW_S = 60.0


@dataclass
class _Budget:
    limit: int | None
    remaining: float | None = None   # points left (None: not known yet)
    reset_at: float = 0.0            # clock time of the next reset


class RateGovernor:
    """Complexity budget, retry_in_seconds, per-board mutation lock and pacing for one token (see module doc)."""

    def __init__(self, *, budget_per_minute: int | None = PERSONAL_BUDGET_PER_MINUTE,
                 max_query_complexity: int = MAX_QUERY_COMPLEXITY, split_read_write: bool = False,
                 mutations_per_minute_per_board: int | None = None, window_s: float = WINDOW_S,
                 reset_margin_s: float = 1.0, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 name: str = "monday") -> None:
        if mutations_per_minute_per_board is not None and mutations_per_minute_per_board < 1:
            raise ValueError("mutations_per_minute_per_board must be at least 1 (or None: no pacing)")
        self.name = name
        self.budget_per_minute = budget_per_minute
        self.max_query_complexity = max_query_complexity
        self.split_read_write = split_read_write
        self.mutations_per_minute_per_board = mutations_per_minute_per_board
        self.window_s = window_s
        self.reset_margin_s = reset_margin_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._budgets: dict[str, _Budget] = {}
        self._blocked_until = 0.0
        self._costs: dict[str, int] = {}
        self._board_locks: dict[str, threading.Lock] = {}
        self._board_times: dict[str, deque[float]] = {}
        self.waited_s = 0.0
        self.waits: Counter[str] = Counter()
        self.observed = 0
        self.last_complexity: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (f"RateGovernor(name={self.name!r}, budget_per_minute={self.budget_per_minute}, "
                f"mutations_per_minute_per_board={self.mutations_per_minute_per_board}, waited_s={self.waited_s:.2f})")

    def configure(self, *, budget_per_minute: int | None = None, split_read_write: bool | None = None,
                  mutations_per_minute_per_board: int | None = None) -> None:
        """Change settings of a shared governor (given values only; later callers win)."""
        with self._lock:
            if budget_per_minute is not None:
                self.budget_per_minute = budget_per_minute
                for b in self._budgets.values():
                    b.limit = budget_per_minute
            if split_read_write is not None:
                self.split_read_write = split_read_write
            if mutations_per_minute_per_board is not None:
                if mutations_per_minute_per_board < 1:
                    raise ValueError("mutations_per_minute_per_board must be at least 1")
                self.mutations_per_minute_per_board = mutations_per_minute_per_board

    # -- time ---------------------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def pause(self, seconds: float, reason: str = "backoff") -> None:
        """Sleep ``seconds`` and count it (a caller's backoff, e.g. a locked board)."""
        if seconds <= 0:
            return
        self._sleep(seconds)
        self._count(reason, seconds)

    def _count(self, reason: str, seconds: float) -> None:
        with self._lock:
            self.waited_s += seconds
            self.waits[reason] += seconds

    # -- complexity ---------------------------------------------------------------------------------
    def _budget(self, kind: str) -> _Budget:
        key = kind if self.split_read_write else "all"
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = _Budget(limit=self.budget_per_minute)
        return budget

    def estimate(self, shape: str, default: int = 0) -> int:
        """The last observed cost of a query shape (``default`` before the first observation)."""
        with self._lock:
            return self._costs.get(shape, default)

    def learn(self, shape: str, cost: int) -> None:
        with self._lock:
            self._costs[shape] = int(cost)

    def acquire(self, estimate: int = 0, *, kind: str = "read") -> float:
        """Wait until a query costing ``estimate`` points fits the budget (and any retry_in has passed);
        reserve the points. Returns the seconds waited."""
        waited = 0.0
        reset_waited = False
        while True:
            with self._lock:
                now = self._clock()
                reason, wait = "", 0.0
                if self._blocked_until > now:
                    reason, wait = "retry_in", self._blocked_until - now
                else:
                    budget = self._budget(kind)
                    if budget.remaining is not None and budget.reset_at + self.reset_margin_s <= now:
                        budget.remaining = budget.limit   # the window has reset (None: unknown again) and a
                        budget.reset_at = now + self.window_s   # new one starts, until monday says otherwise
                    if (budget.remaining is not None and estimate > budget.remaining and budget.reset_at > now
                            and not reset_waited):
                        reason, wait = "complexity", budget.reset_at + self.reset_margin_s - now
                    elif budget.remaining is not None:
                        budget.remaining -= estimate
                if wait <= 0:
                    return waited
            log.info("%s governor: waiting %.2fs (%s)", self.name, wait, reason)
            self._sleep(wait)
            self._count(reason, wait)
            waited += wait
            if reason == "complexity":
                reset_waited = True   # waited for one reset: go (a too-big estimate must not wait forever)

    def observe(self, complexity: Mapping[str, Any] | None, *, kind: str = "read", shape: str | None = None) -> None:
        """Take monday's ``complexity {before after query reset_in_x_seconds}`` of an answered query."""
        if not complexity:
            return
        with self._lock:
            now = self._clock()
            budget = self._budget(kind)
            after = complexity.get("after")
            before = complexity.get("before")
            reset_in = complexity.get("reset_in_x_seconds")
            if isinstance(after, (int, float)):
                budget.remaining = float(after)
            if isinstance(reset_in, (int, float)):
                budget.reset_at = now + float(reset_in)
            if isinstance(before, (int, float)) and (budget.limit is None or before > budget.limit):
                budget.limit = int(before)   # a fresh window's "before" is the budget itself
            cost = complexity.get("query")
            if shape and isinstance(cost, (int, float)):
                self._costs[shape] = int(cost)
            self.observed += 1
            self.last_complexity = dict(complexity)

    def note_retry_in(self, seconds: float | None) -> None:
        """monday said retry in ``seconds``: every caller of this token waits until then."""
        if seconds is None:
            return
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, float(seconds)))
            for budget in self._budgets.values():   # whatever we believed, the budget is spent
                budget.remaining = 0.0
                budget.reset_at = max(budget.reset_at, self._blocked_until)

    def remaining(self, kind: str = "read") -> float | None:
        with self._lock:
            return self._budget(kind).remaining

    # -- mutations ----------------------------------------------------------------------------------
    def _board_lock(self, board_id: str) -> threading.Lock:
        with self._lock:
            lock = self._board_locks.get(board_id)
            if lock is None:
                lock = self._board_locks[board_id] = threading.Lock()
            return lock

    @contextmanager
    def mutation(self, board_id: Any, count: int = 1) -> Iterator[None]:
        """Hold the board's mutation lock (one mutation request per board at a time in this process) and, with
        pacing on, wait until ``count`` more mutations fit ``mutations_per_minute_per_board`` in the window."""
        key = str(board_id)
        lock = self._board_lock(key)
        start = self._clock()
        if not lock.acquire(blocking=False):
            lock.acquire()
            blocked = self._clock() - start
            if blocked > 0:
                self._count("board_lock", blocked)
        try:
            self._pace(key, count)
            yield
        finally:
            lock.release()

    def _pace(self, board_id: str, count: int) -> None:
        while True:
            with self._lock:
                cap = self.mutations_per_minute_per_board
                now = self._clock()
                times = self._board_times.setdefault(board_id, deque())
                while times and times[0] <= now - self.window_s:
                    times.popleft()
                if cap is None:
                    return
                count_now = min(count, cap)
                if len(times) + count_now <= cap:
                    times.extend([now] * count_now)
                    return
                wait = times[len(times) + count_now - cap - 1] + self.window_s - now
            log.info("%s governor: board %s paced, waiting %.2fs", self.name, board_id, wait)
            self._sleep(max(wait, 0.0))
            self._count("board_pacing", max(wait, 0.0))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"waited_s": round(self.waited_s, 3), "waits": {k: round(v, 3) for k, v in self.waits.items()},
                    "observed": self.observed, "remaining": {k: b.remaining for k, b in self._budgets.items()}}


# -- one governor per token per process --------------------------------------------------------------

_GOVERNORS: dict[str, RateGovernor] = {}
_GOVERNORS_LOCK = threading.Lock()


def token_key(token: str) -> str:
    """The registry key of a token: its SHA-256 (the token itself is never kept as a key)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def governor_for(token: str, **settings: Any) -> RateGovernor:
    """The process's governor for ``token`` (made on first use with ``settings``; later ``settings`` given
    with a non-None value are applied to the shared one: ``budget_per_minute``, ``split_read_write``,
    ``mutations_per_minute_per_board``)."""
    key = token_key(token)
    with _GOVERNORS_LOCK:
        gov = _GOVERNORS.get(key)
        if gov is None:
            gov = _GOVERNORS[key] = RateGovernor(name=f"monday:{key[:8]}", **settings)
            return gov
    updates = {k: v for k, v in settings.items()
               if v is not None and k in ("budget_per_minute", "split_read_write", "mutations_per_minute_per_board")}
    if updates:
        gov.configure(**updates)
    return gov


def reset_governors() -> None:
    """Forget every governor (tests)."""
    with _GOVERNORS_LOCK:
        _GOVERNORS.clear()


__all__ = [
    "MAX_QUERY_COMPLEXITY",
    "PERSONAL_BUDGET_PER_MINUTE",
    "RateGovernor",
    "governor_for",
    "reset_governors",
    "token_key",
]
