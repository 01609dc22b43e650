"""One worker thread owns the Hub (a Hub is not thread-safe); requests wait in a bounded, fair
queue. Events cross to the web server's event loop through per-request asyncio queues.

Fair: waiting requests are served round-robin by client, so one client that queues many
requests cannot starve the others. Bounded: a full queue refuses at once (429 + Retry-After)
instead of letting latency grow without limit. A request whose client has gone is dropped
from the queue, or, when running, its generation is closed at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from etr_hub.errors import EtrHubError

log = logging.getLogger("etr_hub.server")

END = object()  # the last item of every job's event queue


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__("queue full")
        self.retry_after = retry_after


class NotServing(Exception):
    """The worker is stopping (or died): answer 503."""


@dataclass
class Failed:
    status: int  # 400: the request cannot be answered as asked; 500: our bug
    message: str


@dataclass(eq=False)
class Job:
    call: Callable[[Any], Generator[Any, None, Any]]  # hub -> the Hub's event generator
    client: str  # fairness key (the peer address)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queue: Any = None  # the FairQueue holding it while it waits
    trace: Any = None  # the request's metrics.Trace: sees each event as the event loop receives it
    started: float | None = None  # time.monotonic() when the worker took it

    def see(self, item: Any) -> None:
        if self.trace is not None:
            self.trace.see(item)

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancelled.set()

    def cancel(self) -> None:
        """The client left: drop it from the queue, or stop its generation at the next token."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self.queue is not None:
                self.queue.discard(self)


class FairQueue:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._cond = threading.Condition()
        self._by_client: OrderedDict[str, deque[Job]] = OrderedDict()
        self._waiting = 0
        self._closed = False

    def __len__(self) -> int:
        return self._waiting

    def put(self, job: Job, retry_after: Callable[[int], int]) -> None:
        with self._cond:
            if self._closed:
                raise NotServing()
            if self._waiting >= self.capacity:
                raise QueueFull(retry_after(self._waiting))
            self._by_client.setdefault(job.client, deque()).append(job)
            self._waiting += 1
            job.queue = self
            self._cond.notify()

    def get(self) -> Job | None:
        """The next job, round-robin over clients; None once closed."""
        with self._cond:
            while self._waiting == 0 and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            client, jobs = next(iter(self._by_client.items()))
            job = jobs.popleft()
            if jobs:
                self._by_client.move_to_end(client)
            else:
                del self._by_client[client]
            self._waiting -= 1
            job.queue = None
            return job

    def discard(self, job: Job) -> None:
        with self._cond:
            jobs = self._by_client.get(job.client)
            if jobs and job in jobs:
                jobs.remove(job)
                self._waiting -= 1
                job.queue = None
                if not jobs:
                    del self._by_client[job.client]

    def close(self) -> list[Job]:
        with self._cond:
            self._closed = True
            left = [j for jobs in self._by_client.values() for j in jobs]
            self._by_client.clear()
            self._waiting = 0
            self._cond.notify_all()
            return left


class HubWorker:
    """`threads` workers take jobs from the queue: 1 for a Hub (not thread-safe); a router's
    (RouterHub.parallel) answer many at once, its engine batching them."""

    def __init__(self, hub: Any, capacity: int, threads: int = 1):
        self.hub = hub
        self.queue = FairQueue(capacity)
        self.active: set[Job] = set()
        self.stats = {"completed": 0, "failed": 0, "cancelled": 0, "rejected": 0}
        self._mean_s = 1.0  # moving average of one job's duration, for Retry-After
        self._threads = [
            threading.Thread(target=self._loop, name=f"etr-hub-worker-{i}", daemon=True) for i in range(threads)
        ]
        self._thread = self._threads[0]

    @property
    def running(self) -> Job | None:
        return next(iter(set(self.active)), None)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10) -> None:
        for job in self.queue.close():
            job.emit(Failed(503, "the server is shutting down"))
            job.emit(END)
        for job in set(self.active):
            job.cancelled.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def submit(self, job: Job) -> None:
        if not self._thread.is_alive():
            raise NotServing()
        try:
            self.queue.put(job, self.retry_after)
        except QueueFull:
            self.stats["rejected"] += 1
            raise

    def retry_after(self, waiting: int) -> int:
        """Seconds until a slot is likely free: the queue ahead times a job's mean duration."""
        return max(1, min(60, math.ceil(self._mean_s * (waiting + 1) / 2)))

    def health(self) -> dict:
        return {
            "waiting": len(self.queue),
            "running": self.running is not None,
            "capacity": self.queue.capacity,
            **self.stats,
        }

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            if job.cancelled.is_set():
                self.stats["cancelled"] += 1
                continue
            self.active.add(job)
            started = job.started = time.monotonic()
            try:
                self._run(job)
            finally:
                self.active.discard(job)
                job.emit(END)
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - started)

    def _run(self, job: Job) -> None:
        try:
            events = job.call(self.hub)
            try:
                for event in events:
                    if job.cancelled.is_set():
                        break
                    job.emit(event)
            finally:
                events.close()  # stops decoding (and a remote expert's stream) at once
        except EtrHubError as exc:
            self.stats["failed"] += 1
            job.emit(Failed(getattr(exc, "http_status", 400), str(exc)))  # a router's failed engine: 502
            return
        except Exception:  # a bug: logged here with its traceback, a plain 500 for the client
            log.exception("internal error while answering a request")
            self.stats["failed"] += 1
            job.emit(Failed(500, "internal server error (see the server's log)"))
            return
        self.stats["cancelled" if job.cancelled.is_set() else "completed"] += 1
