"""The model's queue and the artifact store.

`Runner`: one worker thread runs the model (runs are serialised: the model is shared and the CPU is
the bottleneck); at most `capacity` runs are admitted at a time (the one running and the ones
waiting), and a run that cannot be admitted is refused at once (HTTP 429). A run carries a deadline
and a cancel flag, checked before it starts and between its steps.

`ArtifactStore`: the files of a run (PNGs, .npy) in memory under a server-generated id, dropped
after a time to live, and the oldest runs dropped first when more than `max_runs` are held.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


class Cancelled(Exception):
    """A run stopped because its client went away or its deadline passed."""


@dataclass
class Job:
    fn: Callable[[Job], object]  # the work; what it returns goes to `finish`
    deadline: float  # time.monotonic()
    finish: Callable[[object], None] | None = None  # called after the job's place in the queue is freed
    cancelled: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("cancelled")
        if time.monotonic() > self.deadline:
            raise Cancelled("deadline passed")


class Runner:
    def __init__(self, max_queue: int):
        if max_queue < 0:
            raise ValueError(f"max_queue must not be negative, got {max_queue}")
        self.capacity = 1 + max_queue
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="omni-serve-model", daemon=True)
        self._thread.start()

    def admit(self) -> int | None:
        """Reserve a place: the number of runs ahead of this one, or None when the queue is full."""
        with self._lock:
            if self._admitted >= self.capacity:
                return None
            self._admitted += 1
            return self._admitted - 1

    def submit(self, job: Job) -> None:
        """Queue an admitted job."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # closed before (an app restarted)
                self._start()
        self._q.put(job)

    def release(self) -> None:
        """Give back a place that was admitted but never submitted."""
        with self._lock:
            self._admitted -= 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"running": self._running, "waiting": self._admitted - self._running, "capacity": self.capacity}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the runs already queued."""
        with self._lock:
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._q.put(None)
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            with self._lock:
                self._running += 1
            result = None
            try:
                result = job.fn(job)  # reports its own errors in its result
            finally:
                with self._lock:
                    self._running -= 1
                    self._admitted -= 1
            if job.finish is not None:  # after the place is freed: a client told "done" may come straight back
                job.finish(result)


@dataclass
class _Run:
    created: float
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)


class ArtifactStore:
    def __init__(self, ttl_s: float, max_runs: int, clock: Callable[[], float] = time.time):
        self.ttl_s, self.max_runs, self.clock = ttl_s, max_runs, clock
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._lock = threading.Lock()

    def new_run(self) -> tuple[str, float]:
        """A fresh run id (random, URL-safe) and the Unix time its artifacts expire."""
        run_id = secrets.token_urlsafe(16)
        now = self.clock()
        with self._lock:
            self._purge(now)
            self._runs[run_id] = _Run(now)
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        return run_id, now + self.ttl_s

    def put(self, run_id: str, name: str, data: bytes, media_type: str) -> str:
        """Store a file of a run; returns its URL path."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                run.files[name] = (data, media_type)
        return f"/v1/artifacts/{run_id}/{name}"

    def get(self, run_id: str, name: str) -> tuple[bytes, str] | None:
        with self._lock:
            self._purge(self.clock())
            run = self._runs.get(run_id)
            return None if run is None else run.files.get(name)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def _purge(self, now: float) -> None:
        while self._runs:
            run_id, run = next(iter(self._runs.items()))
            if now - run.created < self.ttl_s:
                break
            del self._runs[run_id]
