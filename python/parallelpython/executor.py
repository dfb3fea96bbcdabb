"""`Executor`: a concurrent.futures.Executor on the ParallelPython engine."""

import concurrent.futures as _cf
import json
import os
import pickle
import re
import sys
import threading
import time

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


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_CLAUSE = re.compile(r"\s*(?:(?:==|!=)\s*\d+(?:\.\d+){0,3}\.\*|(?:>=|<=|==|!=|>|<)\s*\d+(?:\.\d+){0,3})\s*")


def _requirements(requires):
    """The bundle's "requires" object for `requires`, checked here so that a typo
    fails in the caller, not in the engine."""
    if requires is None:
        return None
    if not isinstance(requires, dict) or not set(requires) <= {"python", "implementation", "modules"}:
        raise ValueError("requires must be a dict with the keys python, implementation, modules, "
                         "e.g. {'python': '>=3.9,<3.13', 'modules': ['numpy']}; got %r" % (requires,))
    python, implementation = requires.get("python"), requires.get("implementation")
    modules = list(requires.get("modules", ()))
    if python is not None and not (isinstance(python, str) and all(_CLAUSE.fullmatch(c) for c in python.split(","))):
        raise ValueError("requires python %r is not a version range; write clauses such as '>=3.9,<3.13' or '==3.11.*'" % (python,))
    if implementation is not None and not (isinstance(implementation, str) and re.fullmatch(_NAME, implementation)):
        raise ValueError("requires implementation %r is not a name; write e.g. 'cpython' or 'pypy'" % (implementation,))
    for module in modules:
        if not (isinstance(module, str) and re.fullmatch(r"%s(?:\.%s)*" % (_NAME, _NAME), module)):
            raise ValueError("requires modules: %r is not a module name; write e.g. 'numpy' or 'os.path'" % (module,))
    out = {"modules": modules}
    if python is not None:
        out["python"] = python
    if implementation is not None:
        out["implementation"] = implementation
    return out


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


def _dumps_any(obj):
    """Pickle, else cloudpickle or dill when installed; raises the first error."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception as first:
        for name in ("cloudpickle", "dill"):
            try:
                module = __import__(name)
            except ImportError:
                continue
            try:
                return module.dumps(obj)
            except Exception:
                break
        raise first


# A job whose pickles pass this size travels in parts: the function's pickle and each
# argument larger than this go to the engine once, by SHA-256, and from there once to
# each node and each worker; jobs name them.
LARGE_PART = 1 << 20


def _size_hint(value):
    """The size of bytes, str and arrays (numpy's nbytes), else 0: cheap, no pickling."""
    if value.__class__ in _SIZED:
        return len(value)
    n = getattr(value, "nbytes", 0)
    return n if n.__class__ is int else 0


_SIZED = (bytes, bytearray, str)


def _looks_large(args, kwargs):
    """Whether an argument is plainly larger than LARGE_PART, so the job goes straight
    to parts without pickling the whole call first."""
    for value in args:
        if _size_hint(value) > LARGE_PART:
            return True
    for value in kwargs.values():
        if _size_hint(value) > LARGE_PART:
            return True
    return False


def _pickle_function(fn):
    try:
        data = _dumps_any(fn)
    except Exception as exc:
        raise TypeError(
            "%s cannot travel to a worker (%s): define it at module level, or install cloudpickle "
            "or dill (pip install cloudpickle) to send lambdas and closures" % (_name(fn), exc)
        ) from None
    return len(data).to_bytes(4, "big") + data


def _pickle_args(fn, args, kwargs):
    """(args, kwargs) as pickle bytes; names an argument that cannot travel."""
    try:
        return pickle.dumps((args, kwargs), protocol=5)
    except Exception:
        pass
    try:
        return _dumps_any((args, kwargs))
    except Exception:
        pass
    for i, a in enumerate(args):
        try:
            _dumps_any(a)
        except Exception as exc:
            raise TypeError("argument %d of %s (a %s) cannot be pickled: %s" % (i, _name(fn), type(a).__name__, exc)) from None
    for k, v in kwargs.items():
        try:
            _dumps_any(v)
        except Exception as exc:
            raise TypeError("keyword argument %r of %s (a %s) cannot be pickled: %s" % (k, _name(fn), type(v).__name__, exc)) from None
    raise TypeError("the arguments of %s cannot be pickled" % _name(fn))


def _main_dir():
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return os.path.dirname(os.path.abspath(path)) if path else None


def _is_local(module, main_dir):
    """Whether a module is the caller's own: a plain .py file under the main script's
    directory or the current directory, not in site-packages or the standard library."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py") or getattr(module, "__name__", "") == "__main__":
        return False
    path = os.path.abspath(path)
    if "site-packages" in path or "dist-packages" in path or path.startswith(os.path.abspath(sys.prefix)) or path.startswith(os.path.abspath(sys.base_prefix)):
        return False
    here = os.path.dirname(os.path.abspath(__file__))
    if path.startswith(os.path.dirname(here) + os.sep):
        return False  # this package itself
    roots = [r for r in (main_dir, os.getcwd()) if r]
    return any(path.startswith(r + os.sep) for r in roots)


def _local_modules(main_dir):
    """name -> (filename, source, is_package) of the caller's own modules and packages
    (and their submodules) imported so far."""
    out = {}
    for name, module in list(sys.modules.items()):
        if not _is_local(module, main_dir):
            continue
        try:
            with open(module.__file__, encoding="utf-8") as f:
                is_package = os.path.basename(module.__file__) == "__init__.py"
                out[name] = (os.path.abspath(module.__file__), f.read(), is_package)
        except OSError:
            continue
    return out


def _name(fn):
    return getattr(fn, "__qualname__", None) or repr(fn)


class _OrderedResults(object):
    """The results of one map, slot by slot, read in order: lighter than a Future per
    job (no lock and condition each)."""

    def __init__(self, n):
        self.slots = [None] * n
        self.ready = [False] * n
        self.condition = threading.Condition()

    def completion(self, index):
        def done(status, ns, out, err, payload):
            if out:
                sys.stdout.write(out.decode("utf-8", "replace"))
            if err:
                sys.stderr.write(err.decode("utf-8", "replace"))
            try:
                result = (True, _decode(status, payload))
            except BaseException as exc:
                result = (False, exc)
            with self.condition:
                self.slots[index] = result
                self.ready[index] = True
                self.condition.notify_all()

        return done

    def take(self, index, end):
        with self.condition:
            while not self.ready[index]:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise _cf.TimeoutError()
                self.condition.wait(left)
            result = self.slots[index]
            self.slots[index] = None
            return result


class _Future(_cf.Future):
    """A future whose cancel() stops its job wherever it is: queued, or running (its
    worker is killed and replaced). ProcessPoolExecutor's cannot cancel a running job."""

    def __init__(self, executor):
        super().__init__()
        self._executor = executor
        self._job_id = None

    def cancel(self):
        cancelled = super().cancel()
        if cancelled and self._job_id is not None:
            self._executor._engine.stop(self._job_id)
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
      requires (per Executor): what its jobs need of a worker's Python, a dict of
        python (a version range, e.g. '>=3.9,<3.13'), implementation ('cpython',
        'pypy') and modules (names that must import); jobs run only on workers where
        that holds, and fail with RemoteError naming every executor when none can.
    """

    def __init__(self, max_workers=None, *, workers=None, nodes=(), discover=True, secret_file=None, python=None, timeout=None, secret=None, requires=None):
        if workers is None:
            workers = max_workers
        if workers is not None and workers < 0:
            raise ValueError("workers must be 0 or more, not %r" % (workers,))
        self._requires = _requirements(requires)
        config = {
            "workers": workers,
            "nodes": list(nodes),
            "discover": bool(discover),
            "secret_file": secret_file,
            "python": python or sys.executable,
        }
        if secret is not None:
            config["secret"] = secret
        self._engine = get_engine(config)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._futures = set()
        self._functions = {}
        self._function_part = None  # (prefix, the function pickle as a part), last used
        self._argument_part = None  # (a large bytes or str, its pickle), last used
        self._shutdown = False
        self._shipped = set()
        self._bundles = {}
        self._make_bundle()

    def _bundle(self, source, path):
        """The digest of an adapter bundle whose main script is `source` (pp's
        function sources), made and sent once per source."""
        digest = self._bundles.get(source)
        if digest is None:
            client_path = [os.path.abspath(p or os.curdir) for p in sys.path]
            local = _local_modules(_main_dir())
            header = "MAIN_SOURCE = %r\nMAIN_FILE = %r\nCLIENT_PATH = %r\nLOCAL_MODULES = %r\n" % (source, path, client_path, local)
            spec = {"name": "__pp_call__", "filename": "<parallelpython adapter>", "imports": [], "deps": [], "source": header + _ADAPTER}
            if self._requires:
                spec["requires"] = self._requires
            digest = self._engine.ensure_bundle(json.dumps(spec).encode())
            self._bundles[source] = digest
        return digest

    def _make_bundle(self):
        """The adapter bundle: the adapter, the caller's main script, its import path,
        and the sources of the caller's own modules imported so far (those under the
        main script's directory or the current directory, outside site-packages), so
        that they import on a node too. Sent once per content (named by its hash)."""
        source, path = _main_source()
        client_path = [os.path.abspath(p or os.curdir) for p in sys.path]
        local = _local_modules(os.path.dirname(path) if path else None)
        self._shipped = set(local)
        header = "MAIN_SOURCE = %r\nMAIN_FILE = %r\nCLIENT_PATH = %r\nLOCAL_MODULES = %r\n" % (
            source, path or "<main>", client_path, local)
        spec = {
            "name": "__pp_call__",
            "filename": "<parallelpython adapter>",
            "imports": [],
            "deps": [],
            "source": header + _ADAPTER,
        }
        if path:
            spec["path"] = os.path.dirname(path)
        if self._requires:
            spec["requires"] = self._requires
        self._digest = self._engine.ensure_bundle(json.dumps(spec).encode())

    # -- submitting -----------------------------------------------------------

    def submit(self, fn, /, *args, **kwargs):
        return self.apply(fn, args, kwargs)

    def apply(self, fn, args=(), kwargs=None, timeout=None):
        """Like submit, with a per-job `timeout` in seconds (the worker is killed)."""
        return self._submit_many(fn, [(tuple(args), dict(kwargs or {}))], timeout)[0]

    def _submit_many(self, fn, calls, timeout, digest=None, completion=None):
        """Futures for calls `(args, kwargs)` of `fn`, sent to the engine in one write."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        timeout = self._timeout if timeout is None else timeout
        completion = completion or self._completion
        prefix = self._function_blob(fn)
        jobs = []
        futures = []
        for args, kwargs in calls:
            future = _Future(self)
            futures.append(future)
            jobs.append(self._job(fn, prefix, args, kwargs, completion(future)))
        with self._lock:
            self._futures.update(futures)
        for future, job_id in zip(futures, self._engine.submit_many(digest or self._digest, jobs, timeout)):
            future._job_id = job_id
        return futures

    def _job(self, fn, prefix, args, kwargs, callback):
        """One job for Engine.submit_many: its bytes inline, or in parts when large."""
        if len(prefix) <= LARGE_PART and not _looks_large(args, kwargs):
            blob = _pickle_args(fn, args, kwargs)
            if len(prefix) + len(blob) <= LARGE_PART:
                return (prefix + blob, callback)
            return self._parted_job(fn, prefix, args, kwargs, blob, callback)
        return self._parted_job(fn, prefix, args, kwargs, None, callback)

    def _parted_job(self, fn, prefix, args, kwargs, blob, callback):
        """A job whose large pickles travel as parts (`Engine.ensure_part`): the
        inline bytes are the function's u32 length and pickle, or 0xFFFFFFFF when the
        function is the first part, then the pickle of (args, kwargs, refs) with each
        large argument None and named in refs as (index or keyword, part number)."""
        engine = self._engine
        parts = []
        if len(prefix) > LARGE_PART:
            cached = self._function_part
            if cached is None or cached[0] is not prefix:
                cached = self._function_part = (prefix, prefix[4:])
            parts.append(engine.ensure_part(cached[1]))  # the same bytes object: not hashed again
            prefix = b"\xff\xff\xff\xff"
        if blob is None or len(blob) > LARGE_PART:
            args, kwargs, refs = list(args), dict(kwargs), []
            for key, value in list(enumerate(args)) + list(kwargs.items()):
                data = self._part_pickle(fn, key, value)
                if len(data) > LARGE_PART:
                    refs.append((key, len(parts)))
                    parts.append(engine.ensure_part(data))
                    if isinstance(key, int):
                        args[key] = None
                    else:
                        kwargs[key] = None
            blob = _dumps_any((tuple(args), kwargs, tuple(refs))) if refs else _pickle_args(fn, tuple(args), kwargs)
        return (prefix + blob, callback, parts) if parts else (prefix + blob, callback)

    def _part_pickle(self, fn, key, value):
        """One argument's pickle. The last large bytes or str (immutable) is pickled
        once while the same object comes back, as in `submit(f, big, i)` in a loop."""
        cached = self._argument_part
        if cached is not None and cached[0] is value:
            return cached[1]
        try:
            data = _dumps_any(value)
        except Exception as exc:
            where = "argument %d" % key if isinstance(key, int) else "keyword argument %r" % key
            raise TypeError("%s of %s (a %s) cannot be pickled: %s" % (where, _name(fn), type(value).__name__, exc)) from None
        if value.__class__ in (bytes, str) and len(data) > LARGE_PART:
            self._argument_part = (value, data)
        return data

    def _function_blob(self, fn):
        """The job prefix for a function: u32 length and its pickle, made once per
        function. A function of a
        local module imported after the bundle was made brings a new bundle."""
        module = getattr(fn, "__module__", None)
        if module and module not in self._shipped and module not in ("__main__", "builtins") and _is_local(sys.modules.get(module), _main_dir()):
            self._make_bundle()
        try:
            blob = self._functions.get(fn)
        except TypeError:  # unhashable callable
            return _pickle_function(fn)
        if blob is None:
            blob = _pickle_function(fn)
            if len(self._functions) >= 256:
                self._functions.clear()
            self._functions[fn] = blob
        return blob

    def _completion(self, future):
        def done(status, ns, out, err, payload):
            with self._lock:
                self._futures.discard(future)
            if status == 7 and not future.done():
                # Cancelled before it started (shutdown with cancel_futures).
                _cf.Future.cancel(future)
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

        return done

    def imap_unordered(self, fn, iterable, timeout=None):
        """Calls fn on every item; yields the values as the jobs complete."""
        futures = self._submit_many(fn, [((item,), {}) for item in iterable], timeout)
        for f in _cf.as_completed(futures):
            yield f.result()

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """As Executor.map: values in input order; `timeout` bounds the whole map.
        Jobs go to the engine in batches (chunksize is accepted and not needed: the
        engine and the pool batch by themselves), and no Future is made per job."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        end = None if timeout is None else time.monotonic() + timeout
        calls = list(zip(*iterables))
        batch = _OrderedResults(len(calls))
        prefix = self._function_blob(fn)
        ids = []
        for start in range(0, len(calls), 2048):
            jobs = []
            for k, args in enumerate(calls[start:start + 2048]):
                jobs.append(self._job(fn, prefix, args, {}, batch.completion(start + k)))
            ids += self._engine.submit_many(self._digest, jobs, self._timeout)
        engine = self._engine

        def results():
            index = 0
            try:
                while index < len(calls):
                    ok, value = batch.take(index, end)
                    index += 1
                    if ok:
                        yield value
                    else:
                        raise value
            finally:
                for job_id in ids[index:]:
                    engine.cancel(job_id)

        return results()

    # -- engine state ---------------------------------------------------------

    def stats(self):
        """The engine's counters: workers, executors (local and nodes) with their
        jobs and busy seconds, and each node's own counters."""
        return self._engine.statistics()

    def nodes(self, why=False):
        """The nodes in use, with their counters (like ppnodes). With why=True, every
        node known, used or not, each with "status" and "reason" (like ppnodes --why)."""
        stats = self._engine.statistics()
        if not why:
            return stats.get("nodes", {})
        return {a: dict(stats.get("nodes", {}).get(a, {}), **v) for a, v in stats.get("why", {}).items()}

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True
        with self._lock:
            futures = list(self._futures)
        if cancel_futures:
            # As ProcessPoolExecutor: jobs not started are cancelled, running ones finish.
            for f in futures:
                if f._job_id is not None:
                    self._engine.cancel(f._job_id)
        if wait:
            _cf.wait(futures)


def _decode(status, payload):
    if status is None:
        raise EngineError(payload.decode("utf-8", "replace"))
    if status == 0:
        if payload[:1] == b"v":
            return pickle.loads(payload[1:])
        answer = pickle.loads(payload[1:])
        exc = None
        if answer.get("e"):
            try:
                exc = pickle.loads(answer["e"])
            except Exception:
                exc = None
        tb = answer.get("tb", "")
        if not isinstance(exc, BaseException):
            exc = RemoteError("%s: %s" % (answer.get("type"), answer.get("message")), type=answer.get("type"), traceback=tb)
        exc.__cause__ = _RemoteTraceback('\n"""\n' + tb + '"""')
        raise exc
    answer = json.loads(payload)
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
