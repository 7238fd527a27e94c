"""What the node's inputs are doing, for the 1 Hz diagnostics (no ROS imports).

Counts per input (image, camera info, cloud): messages, arrival rate over a sliding
window, the last header stamp and how long ago the last message came, the messages that
never became part of a synchronised triple, and -- where the middleware reports the
publisher's sequence numbers -- how many its publishers sent and how many were lost on the
way; the synchronised triples and the frames that did not make it, by reason. ``status()`` turns that into a
diagnostic level in the ``diagnostic_updater`` sense: OK, WARN naming the input that went
silent while others still arrive, STALE when nothing arrives.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

INPUTS = ("image", "camera_info", "cloud")
#: Seconds without a message after which an input counts as stopped.
SILENT_AFTER = 2.0
#: Window (s) of the arrival-rate estimate.
RATE_WINDOW = 5.0

OK, WARN, ERROR, STALE = 0, 1, 2, 3


class InputMonitor:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.counts = Counter()
        self.arrivals = {k: deque() for k in INPUTS}
        self.last_stamp_ns = {k: None for k in INPUTS}
        self.last_seen = {k: None for k in INPUTS}
        self.synced = 0
        self.dropped = Counter()  # reason -> frames
        # (input, publisher gid) -> [first sequence number, last, received]
        self.sequences: dict[tuple[str, bytes], list[int]] = {}

    def received(self, name: str, stamp_ns: int, info: dict | None = None) -> None:
        """One message on ``name``; ``info``: rclpy's MessageInfo when the callback got it."""
        now = self.clock()
        with self._lock:
            self.counts[name] += 1
            seq = (info or {}).get("publication_sequence_number")
            if seq:
                key = (name, bytes((info.get("publisher_gid") or {}).get("data", b"")))
                rec = self.sequences.setdefault(key, [seq, seq, 0])  # a restarted publisher has a new gid
                rec[0], rec[1] = min(rec[0], seq), max(rec[1], seq)
                rec[2] += 1
            q = self.arrivals[name]
            q.append(now)
            while q and now - q[0] > RATE_WINDOW:
                q.popleft()
            self.last_stamp_ns[name] = stamp_ns
            self.last_seen[name] = now

    def synchronised(self) -> None:
        with self._lock:
            self.synced += 1

    def drop(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1

    def rate(self, name: str) -> float:
        now = self.clock()
        q = [t for t in self.arrivals[name] if now - t <= RATE_WINDOW]
        if len(q) < 2 or now - q[-1] > SILENT_AFTER:  # a stopped input has no rate
            return 0.0
        return (len(q) - 1) / max(q[-1] - q[0], 1e-6)

    def status(self) -> tuple[int, str, dict[str, str]]:
        """``(level, message, values)`` of the inputs now."""
        now = self.clock()
        with self._lock:
            silent = [k for k in INPUTS if self.last_seen[k] is None or now - self.last_seen[k] > SILENT_AFTER]
            values = {}
            for k in INPUTS:
                values[f"{k}_rate_hz"] = f"{self.rate(k):.2f}"
                values[f"{k}_received"] = str(self.counts[k])
                values[f"{k}_last_stamp"] = ("none" if self.last_stamp_ns[k] is None
                                             else f"{self.last_stamp_ns[k] / 1e9:.3f}")
                values[f"{k}_age_s"] = ("never" if self.last_seen[k] is None
                                        else f"{now - self.last_seen[k]:.2f}")
                # every message is either in a synchronised triple or here (or still queued)
                values[f"{k}_not_synchronised"] = str(max(0, self.counts[k] - self.synced))
                recs = [r for (n, _), r in self.sequences.items() if n == k]
                if recs:  # what the publishers sent since we first heard them, and what never arrived
                    sent = sum(r[1] - r[0] + 1 for r in recs)
                    values[f"{k}_sent"] = str(sent)
                    values[f"{k}_lost"] = str(max(0, sent - sum(r[2] for r in recs)))
                else:
                    values[f"{k}_sent"] = values[f"{k}_lost"] = "unknown"
            images = self.counts["image"]
            values["synchronised"] = str(self.synced)
            values["synchronised_share"] = f"{self.synced / images:.3f}" if images else "nan"
            values["unsynchronised"] = str(max(0, images - self.synced))
            for reason, n in sorted(self.dropped.items()):
                values[f"dropped_{reason}"] = str(n)
        if len(silent) == len(INPUTS):
            return STALE, "no input: nothing received for %.0f s" % SILENT_AFTER, values
        if silent:
            return WARN, f"input stopped: no {', '.join(silent)} for more than {SILENT_AFTER:.0f} s", values
        return OK, "inputs arriving", values
