"""Approximate-time synchronisation of image, camera info and LiDAR streams.

Used by the node when ``message_filters`` does not import, and always by replay. Policy
(close to ``message_filters.ApproximateTimeSynchronizer``, simpler): each stream keeps a
bounded queue; whenever a message arrives, the oldest message of the pivot stream (the
image, stream 0) is matched with the message nearest in time on every other stream; if
all are within ``slop`` the set is emitted and everything up to it is consumed. Pivot
messages that can no longer match (a stream without a partner for them has moved past
them by more than ``slop``), or that fall off a full queue, are dropped and counted.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable


class ApproxTimeSync:
    def __init__(self, streams: int, queue_size: int, slop_s: float, callback: Callable[..., None]) -> None:
        if streams < 2 or queue_size < 1 or slop_s < 0:
            raise ValueError(f"bad sync settings: streams={streams}, queue_size={queue_size}, slop={slop_s}")
        self.queues: list[deque] = [deque() for _ in range(streams)]
        self.queue_size = queue_size
        self.slop_ns = int(slop_s * 1e9)
        self.callback = callback
        self.dropped = 0  # pivot messages that never found partners
        self.newest: list[int | None] = [None] * streams  # latest stamp seen per stream

    def add(self, stream: int, msg: Any, stamp_ns: int) -> None:
        q = self.queues[stream]
        last = self.newest[stream]
        if last is not None and stamp_ns < last - self.slop_ns:
            # Time went back (bag loop, clock reset): what is queued belongs to the old timeline.
            for i, other in enumerate(self.queues):
                kept = [m for m in other if m[0] <= stamp_ns + self.slop_ns and other is not q]
                other.clear()
                other.extend(kept)
                self.newest[i] = max((m[0] for m in kept), default=None)
        q.append((stamp_ns, msg))
        self.newest[stream] = max(stamp_ns, self.newest[stream] or stamp_ns)
        while len(q) > self.queue_size:
            q.popleft()
            if stream == 0:
                self.dropped += 1
        self._match()

    def _match(self) -> None:
        pivot = self.queues[0]
        while pivot:
            t0, m0 = pivot[0]
            chosen = []
            for q in self.queues[1:]:
                if not q:
                    return
                best = min(range(len(q)), key=lambda i: abs(q[i][0] - t0))
                chosen.append(best)
            if all(abs(q[i][0] - t0) <= self.slop_ns for q, i in zip(self.queues[1:], chosen)):
                msgs = [m0] + [q[i][1] for q, i in zip(self.queues[1:], chosen)]
                pivot.popleft()
                for q, i in zip(self.queues[1:], chosen):
                    for _ in range(i + 1):
                        q.popleft()
                self.callback(*msgs)
                continue
            # Unmatched: drop the pivot when a stream without a partner in slop has already
            # moved past it (stamps normally grow; max() keeps this true after a jump back in
            # time); otherwise wait for more messages.
            if any(abs(q[i][0] - t0) > self.slop_ns and max(m[0] for m in q) > t0 + self.slop_ns
                   for q, i in zip(self.queues[1:], chosen)):
                pivot.popleft()
                self.dropped += 1
                continue
            return
