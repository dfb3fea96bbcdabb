"""`Executor`: a concurrent.futures.Executor on the ParallelPython engine."""

import base64
import concurrent.futures as _cf
import json
import os
import pickle
import sys
import threading

from ._engine import EngineError, get_engine

_ADAPTER = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_adapter.py"), encoding="utf-8").read()

# RESULT status bytes (docs/PROTOCOL.md): what the engine says when the adapter did not
# answer itself.
_STATUS = {
    1: "python exception", 2: "result not JSON", 3: "function unavailable", 4: "bad arguments",
    5: "timeout", 6: "worker died", 7: "cancelled", 8: "shut down", 9: "engine error", 10: "result too large",
}


class RemoteError(Exception):
    """A job failed in a way that has no Python exception of its own (its worker died,
    its node was lost), or its exception could not be unpickled here: `type` names
    the remote exception type, `traceback` is the remote traceback."""

    def __init__(self, message, type=None, traceback="", code=None):
        super().__init__(message)
        self.type = type
        self.traceback = traceback
        self.code = code


class JobTimeout(RemoteError, TimeoutError):
    """The job ran past its timeout; its worker was killed and replaced."""


class WorkerDied(RemoteError):
    """The worker process running the job died (a crash, a kill, out of memory)."""


class _RemoteTraceback(Exception):
    """The remote traceback, attached as __cause__ as concurrent.futures does."""

    def __init__(self, tb):
        self.tb = tb

    def __str__(self):
        return self.tb


def _main_source():
    """The caller's main script (text, path), or (None, None) when there is none to
    ship: an interactive session, `python -c`, or a package's __main__ (`python -m
    unittest`), whose code must not run again in workers (as multiprocessing does)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return None, None
    if not path or not os.path.isfile(path):
        return None, None
    with open(path, encoding="utf-8") as f:
        return f.read(), os.path.abspath(path)


def _pickle_call(fn, args, kwargs):
    """The job's (function, args, kwargs) as bytes; names what cannot travel."""
    try:
        return pickle.dumps((fn, args, kwargs), protocol=5)
    except Exception as first:
        for name in ("cloudpickle", "dill"):
            try:
                module = __import__(name)
            except ImportError:
                continue
            try:
                return module.dumps((fn, args, kwargs))
            except Exception:
                break
        for i, a in enumerate(args):
            try:
                pickle.dumps(a, protocol=5)
            except Exception as exc:
                raise TypeError("argument %d of %s (a %s) cannot be pickled: %s" % (i, _name(fn), type(a).__name__, exc)) from None
        for k, v in kwargs.items():
            try:
                pickle.dumps(v, protocol=5)
            except Exception as exc:
                raise TypeError("keyword argument %r of %s (a %s) cannot be pickled: %s" % (k, _name(fn), type(v).__name__, exc)) from None
        raise TypeError(
            "%s cannot travel to a worker (%s): define it at module level, or install cloudpickle "
            "or dill (pip install cloudpickle) to send lambdas and closures" % (_name(fn), first)
        ) from None


def _name(fn):
    return getattr(fn, "__qualname__", None) or repr(fn)


class _Future(_cf.Future):
    """A future whose cancel() also cancels the job in the engine while it is queued."""

    def __init__(self, executor):
        super().__init__()
        self._executor = executor
        self._job_id = None

    def cancel(self):
        cancelled = super().cancel()
        if cancelled and self._job_id is not None:
            self._executor._engine.cancel(self._job_id)
        return cancelled


class Executor(_cf.Executor):
    """Runs calls on local worker processes and on the LAN's ppnodes.

    Works like `concurrent.futures.ProcessPoolExecutor`: `submit`, `map` (with
    `timeout`; `chunksize` is accepted and ignored: the engine batches by itself),
    `shutdown(wait, cancel_futures)`, `with`; its futures work with
    `concurrent.futures.wait` and `as_completed`. Also: `apply(fn, args, kwargs,
    timeout=)` (a per-job timeout: the worker is killed), `imap_unordered`, `nodes()`,
    `stats()`.

    Options (one engine per process: every Executor of a process must use the same):
      max_workers / workers: local worker processes (default: the usable cores; 0:
        nodes only); nodes: "host:port" of ppnodes to use; discover: find ppnodes by
        DNS-SD and broadcast (default True); secret_file: the cluster secret (default
        $PP_SECRET, then ~/.config/ppnode/secret); python: the workers' interpreter
        (default: the one running this program); timeout: default per-job timeout.
    """

    def __init__(self, max_workers=None, *, workers=None, nodes=(), discover=True, secret_file=None, python=None, timeout=None):
        if workers is None:
            workers = max_workers
        if workers is not None and workers < 0:
            raise ValueError("workers must be 0 or more, not %r" % (workers,))
        config = {
            "workers": workers,
            "nodes": list(nodes),
            "discover": bool(discover),
            "secret_file": secret_file,
            "python": python or sys.executable,
        }
        self._engine = get_engine(config)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._futures = set()
        self._shutdown = False
        source, path = _main_source()
        # The caller's import path (the cwd for ''), so that a worker on this machine
        # imports the caller's own modules; entries missing on a node are skipped there.
        client_path = [os.path.abspath(p or os.curdir) for p in sys.path]
        header = "MAIN_SOURCE = %r\nMAIN_FILE = %r\nCLIENT_PATH = %r\n" % (source, path or "<main>", client_path)
        spec = {
            "name": "__pp_call__",
            "filename": "<parallelpython adapter>",
            "imports": [],
            "deps": [],
            "source": header + _ADAPTER,
        }
        if path:
            spec["path"] = os.path.dirname(path)
        self._digest = self._engine.ensure_bundle(json.dumps(spec).encode())

    # -- submitting -----------------------------------------------------------

    def submit(self, fn, /, *args, **kwargs):
        return self.apply(fn, args, kwargs)

    def apply(self, fn, args=(), kwargs=None, timeout=None):
        """Like submit, with a per-job `timeout` in seconds (the worker is killed)."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        blob = _pickle_call(fn, tuple(args), dict(kwargs or {}))
        arguments = b'["' + base64.b64encode(blob) + b'"]'
        future = _Future(self)
        with self._lock:
            self._futures.add(future)
        timeout = self._timeout if timeout is None else timeout

        def done(status, ns, out, err, payload):
            with self._lock:
                self._futures.discard(future)
            if not future.set_running_or_notify_cancel():
                return
            if out:
                sys.stdout.write(out.decode("utf-8", "replace"))
            if err:
                sys.stderr.write(err.decode("utf-8", "replace"))
            try:
                future.set_result(_decode(status, payload))
            except BaseException as exc:
                future.set_exception(exc)

        future._job_id = self._engine.submit(self._digest, arguments, timeout, done)
        return future

    def imap_unordered(self, fn, iterable, timeout=None):
        """Calls fn on every item; yields the values as the jobs complete."""
        futures = [self.apply(fn, (item,), None, timeout) for item in iterable]
        for f in _cf.as_completed(futures):
            yield f.result()

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return super().map(fn, *iterables, timeout=timeout)

    # -- engine state ---------------------------------------------------------

    def stats(self):
        """The engine's counters: workers, executors (local and nodes) with their
        jobs and busy seconds, and each node's own counters."""
        return self._engine.statistics()

    def nodes(self):
        """The nodes in use, with their counters (like ppnodes)."""
        return self._engine.statistics().get("nodes", {})

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True
        with self._lock:
            futures = list(self._futures)
        if cancel_futures:
            for f in futures:
                f.cancel()
        if wait:
            _cf.wait(futures)


def _decode(status, payload):
    if status is None:
        raise EngineError(payload.decode("utf-8", "replace"))
    answer = json.loads(payload)
    if status == 0:
        if "v" in answer:
            return pickle.loads(base64.b64decode(answer["v"]))
        exc = None
        if answer.get("e"):
            try:
                exc = pickle.loads(base64.b64decode(answer["e"]))
            except Exception:
                exc = None
        tb = answer.get("tb", "")
        if not isinstance(exc, BaseException):
            exc = RemoteError("%s: %s" % (answer.get("type"), answer.get("message")), type=answer.get("type"), traceback=tb)
        exc.__cause__ = _RemoteTraceback('\n"""\n' + tb + '"""')
        raise exc
    message = answer.get("message", "")
    kind = answer.get("type") or None
    tb = answer.get("traceback", "")
    code = _STATUS.get(status, "engine error")
    if status == 5:
        raise JobTimeout(message, type=kind, traceback=tb, code=code)
    if status == 6:
        raise WorkerDied(message, type=kind, traceback=tb, code=code)
    if status == 7:
        raise _cf.CancelledError(message)
    raise RemoteError("%s: %s" % (code, message), type=kind, traceback=tb, code=code)
