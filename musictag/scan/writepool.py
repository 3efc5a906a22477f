"""Tag writes on a few threads, everything around them on the thread that owns the scan.

A tag write is a whole-file copy, a read-back and an fsync: mostly waiting on the disk, so a few at once
keep up with a GPU where one at a time would cap the scan. What must stay on one thread stays on the
owner (the thread that made the pool): the SQLite connection (sqlite3 refuses a connection from another
thread), the per-file locks and the scan's counts. A write's `done` runs there, and so does every call a
write makes through `on_owner` / `owner_proxy` (recording its temporary copy in the database before the
copy exists): the worker waits for the owner to run it. The owner runs both whenever it waits here
(`collect`, `make_room`, `drain`), so it must call one of them regularly; a scan does before each write.

With 0 threads the pool is a plain loop: each write runs at once, on the owner, and `done` follows it.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable

_REPLY_POLL_S = 0.5  # how often a worker waiting for the owner checks that the pool is still there
_LOST_AFTER_S = 2.0  # abandon: no call from the workers for this long, a worker still waiting lost its call


class PoolClosed(Exception):
    """A worker's call to the owner that no one will run: the pool was abandoned and its owner has gone."""


class WritePool:
    def __init__(self, threads: int, in_flight: int = 0):
        self.limit = in_flight or 2 * threads  # writes submitted and not yet done: the owner waits beyond it
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="musictag-write") if threads > 0 else None
        self.owner = threading.get_ident()
        # from the workers to the owner: (done, error) when a write ends, (call, reply) for on_owner
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.futures: set[Future] = set()  # the workers' tasks, for abandon
        self.running = 0
        self.answering: Future | None = None  # the reply of the worker's call the owner is running
        self.gone = False  # abandoned: calls to the owner fail instead of waiting forever

    def submit(self, write: Callable[[], object], done: Callable[[Exception | None], None]) -> None:
        """Start write() on a thread; done(None or the Exception it raised) runs later on the owner, from
        one of the waits below. With no threads both run now (a KeyboardInterrupt goes straight up)."""
        if self.executor is None:
            done(_outcome(write))
            return
        self.running += 1
        future = self.executor.submit(self._work, write, done)
        self.futures.add(future)
        future.add_done_callback(self.futures.discard)

    def _work(self, write: Callable[[], object], done: Callable) -> None:
        """A worker: the write, then its outcome to the owner, whatever it was (the owner counts on it)."""
        error = None
        try:
            write()
        except BaseException as e:  # noqa: B036 - anything else would leave the owner waiting for this write
            error = e
        self.events.put((done, error))

    def on_owner(self, fn: Callable) -> Callable:
        """fn as a function a write may call from its thread: it runs on the owner, the write waits."""
        def call(*args, **kwargs):
            if threading.get_ident() == self.owner:
                return fn(*args, **kwargs)
            reply: Future = Future()
            self.events.put((lambda: reply.set_result(fn(*args, **kwargs)), reply))
            # wait(), not result(timeout): on Python 3.10 the timeout raises concurrent.futures.TimeoutError, not
            # the builtin, and a write whose owner was busy for one poll failed with it
            while not wait([reply], timeout=_REPLY_POLL_S).done:
                if self.gone and self.answering is not reply:
                    raise PoolClosed(f"{getattr(fn, '__name__', fn)}: the scan has stopped")
            return reply.result()
        return call

    def owner_proxy(self, target: object) -> "_OwnerProxy":
        """`target` (the database) whose methods, called by a write, run on the owner."""
        return _OwnerProxy(target, self)

    def collect(self) -> None:
        """Run what the workers have handed over (done writes, calls) without waiting."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self._run(event)

    def make_room(self) -> None:
        """collect, then wait until fewer than `in_flight` writes are under way."""
        self.collect()
        while self.running >= max(self.limit, 1):
            self._run(self.events.get())

    def drain(self) -> None:
        """Wait for every write under way, running their `done` (which may start others: those too)."""
        while self.running:
            self._run(self.events.get())

    def close(self) -> None:
        self.drain()
        if self.executor is not None:
            self.executor.shutdown()

    def abandon(self) -> None:
        """After an error or an interrupt: writes not started never start; those started finish (their
        calls to the owner still run, so each ends as it would have), but no `done` runs: the caller
        records nothing more of them."""
        try:
            for future in list(self.futures):
                future.cancel()
            quiet = 0.0
            while self.futures:
                try:
                    call, reply = self.events.get(timeout=0.05)
                except queue.Empty:  # a call taken but never answered (an interrupt came between): let it fail
                    quiet += 0.05
                    self.gone = self.gone or quiet >= _LOST_AFTER_S
                    continue
                quiet = 0.0
                if isinstance(reply, Future):
                    self._answer(call, reply)
        finally:  # also after a second Ctrl-C here: a worker waiting for the owner then stops within _REPLY_POLL_S
            self.gone = True
            if self.executor is not None:
                self.executor.shutdown(cancel_futures=True)

    def _run(self, event: tuple) -> None:
        call, detail = event
        if isinstance(detail, Future):  # a worker's call, detail its reply
            self._answer(call, detail)
            return
        self.running -= 1
        call(detail)

    def _answer(self, call: Callable[[], None], reply: Future) -> None:
        """Run a worker's call on the owner; its exception (a full database disk) goes back to the worker,
        and an interrupt here ends the worker's wait too before it goes up."""
        self.answering = reply
        try:
            call()
        except Exception as e:
            if not reply.done():
                reply.set_exception(e)
        except BaseException:
            if not reply.done():
                reply.set_exception(PoolClosed("the scan was interrupted"))
            raise
        finally:
            self.answering = None


class _OwnerProxy:
    def __init__(self, target: object, pool: WritePool):
        self._target, self._pool = target, pool

    def __getattr__(self, name: str):
        return self._pool.on_owner(getattr(self._target, name))


def _outcome(write: Callable[[], object]) -> Exception | None:
    try:
        write()
    except Exception as e:  # the write's own failure, for its `done`; anything else ends the run
        return e
    return None

