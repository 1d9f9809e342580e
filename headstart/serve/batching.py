"""One thread owns the model; requests that arrive while it is busy share its next forward pass.

Requests never touch the model themselves, so concurrent ones cannot interleave inside it, and the CPU's cores are
not split between competing forward passes. The batch forms by itself: nothing waits for company, the thread takes
whatever queued up during the previous pass (at most ``max_batch`` images). ``benchmarks/serve_load.py`` measures
what this gives against one request per pass (``max_batch=1``).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field


@dataclass
class _Job:
    images: list
    topk: int
    future: Future = field(default_factory=Future)


class Batcher:
    """``submit(images, topk)`` returns a future of the model's results for those images, in order.

    Args:
        model: anything with ``predict(images, topk) -> list[dict]``.
        max_batch: the most images in one forward pass (a request with more is never split; 1 turns batching off).
    """

    def __init__(self, model, max_batch: int = 16):
        self.model, self.max_batch = model, max(1, int(max_batch))
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.passes = 0  # forward passes run, and images through them: their ratio is the mean batch
        self.images = 0

    def submit(self, images: list, topk: int) -> Future:
        job = _Job(list(images), topk)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="headstart-serve-model", daemon=True)
                self._thread.start()
            self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Stops the thread once the queued jobs are done."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._queue.put(None)
                self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            jobs = [job]
            size = len(job.images)
            while size < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # close() was called: finish this batch, then stop
                    self._queue.put(None)
                    break
                jobs.append(more)
                size += len(more.images)
            self._run([j for j in jobs if j.future.set_running_or_notify_cancel()])

    def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            results = self.model.predict([im for j in jobs for im in j.images], topk=max(j.topk for j in jobs))
        except Exception as exc:  # noqa: BLE001  (the requests get the error; the thread serves the next batch)
            for j in jobs:
                j.future.set_exception(exc)
            return
        self.passes += 1
        self.images += len(results)
        start = 0
        for j in jobs:
            mine = results[start:start + len(j.images)]
            start += len(j.images)
            j.future.set_result([_trim(r, j.topk) for r in mine])


def _trim(result: dict, topk: int) -> dict:
    if "topk" not in result or len(result["topk"]) <= topk:
        return result
    return {**result, "topk": result["topk"][:topk]}
