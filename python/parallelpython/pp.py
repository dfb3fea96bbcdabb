"""A `pp`-compatible API (Parallel Python / ppft 1.7.8 semantics) on the engine.

    from parallelpython import pp
    job_server = pp.Server(ppservers=("*",))          # local workers and discovered nodes
    job = job_server.submit(sum_primes, (100,), (isprime,), ("math",))
    print(job())

As with ppft, a job's function travels as source: its own, its `depfuncs`', and the
classes of its arguments (and of a bound method's instance) that the program defines,
with `modules` imported first. Arguments and values are pickled. A job that raises
prints "An error has occured during the function execution" and its traceback when
called, and returns None. Unchanged ppft programs run with
`python -m parallelpython PROGRAM.py ARGS...` (`import pp` and `import ppft` then
resolve to this module for that program).
"""

import inspect
import pickle
import sys
import textwrap
import threading
import time
import types

from .executor import Executor, _decode

__version__ = version = "1.7.8"  # the ppft version whose behaviour this follows
copyright = "ParallelPython (Swift engine), pp-compatible API"

_NATIVE_PORT = 7340
_PP_PORT = 60000


class DestroyedServerError(RuntimeError):
    """The server was destroyed: it takes no more jobs."""


class _Statistics(object):
    """Counters of one job server (ppft's get_stats values)."""

    def __init__(self, ncpus, rworker=None):
        self.ncpus = ncpus
        self.time = 0.0
        self.njobs = 0
        self.rworker = rworker


class Template(object):
    """A function and its dependencies, submitted many times with other arguments."""

    def __init__(self, job_server, func, depfuncs=(), modules=(), callback=None, callbackargs=(), group="default", globals=None):
        self.job_server = job_server
        self.func = func
        self.depfuncs = depfuncs
        self.modules = modules
        self.callback = callback
        self.callbackargs = callbackargs
        self.group = group
        self.globals = globals

    def submit(self, *args):
        return self.job_server.submit(self.func, args, self.depfuncs, self.modules, self.callback, self.callbackargs, self.group, self.globals)


class _Task(object):
    """A submitted job: call it to get its value (None when it raised: the error is
    printed, as ppft does)."""

    def __init__(self, server, tid, callback, callbackargs, group):
        self.tid = tid
        self.group = group
        self.finished = False
        self.server = server
        self.callback = callback
        self.callbackargs = callbackargs
        self._server = server
        self._callback = callback
        self._callbackargs = callbackargs
        self._event = threading.Event()
        self._value = None
        self._output = ""
        self._failed = False
        # As ppft's: held until the job is done (pathos waits on it), and the value
        # with what the job printed, pickled (pathos reads it).
        self.lock = threading.Lock()
        self.lock.acquire()
        self.sresult = None

    def _done(self, value, output, failed):
        self._value = value
        self._output = output
        self._failed = failed
        try:
            self.sresult = pickle.dumps((None if failed else value, output), 2)
        except Exception:
            self.sresult = pickle.dumps((None, output), 2)
        self.finished = True
        self._event.set()
        self.lock.release()
        if self._callback is not None:
            try:
                self._callback(*(self._callbackargs + (None if failed else value,)))
            except Exception:
                import traceback
                traceback.print_exc()
        self._server._task_done(self)

    def wait(self):
        self._event.wait()

    def __call__(self, raw_result=False):
        self._event.wait()
        if self._output:
            print(self._output, end=" ")
        return None if self._failed else self._value


def _source(obj):
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError) as exc:
        raise TypeError(
            "cannot send %r: its source is not available (%s); define it in a file, or use "
            "parallelpython.Executor, which pickles functions" % (obj, exc)
        ) from None


def _main_classes(cls):
    """`cls` and its bases that the program defines (those of __main__), bases first."""
    out = []
    for klass in reversed(cls.__mro__):
        if getattr(klass, "__module__", None) == "__main__":
            out.append(klass)
    return out


class Server(object):
    """A job server: local workers (`ncpus`) and nodes (`ppservers`).

    ppservers: "*" or "*:PORT" finds nodes on the LAN (DNS-SD and broadcast); "HOST"
    or "HOST:PORT" is a node, by its native port (7340) or its pp port (60000, mapped
    to the native port). `secret` is the cluster secret (the text of a node's secret
    file); without it, $PP_SECRET or ~/.config/ppnode/secret is used. `requires` (not
    in ppft) is what every job needs of a worker's Python, as Executor's: e.g.
    {"python": ">=3.9,<3.13", "implementation": "cpython", "modules": ["numpy"]}.
    """

    default_port = _PP_PORT
    default_secret = None

    def __init__(self, ncpus="autodetect", ppservers=(), secret=None, restart=False, proto=2, socket_timeout=3600, requires=None):
        if not isinstance(ppservers, tuple):
            raise TypeError("ppservers argument must be a tuple")
        nodes = []
        discover = False
        self.ppservers = []
        for entry in ppservers:
            host, _, port = str(entry).partition(":")
            if host == "*":
                discover = True
                continue
            number = int(port) if port else _NATIVE_PORT
            self.ppservers.append((host, number))
            if number == _PP_PORT:
                number = _NATIVE_PORT
            nodes.append("%s:%d" % (host, number))
        self.auto_ppservers = discover
        self.secret = secret
        workers = None if ncpus == "autodetect" else int(ncpus)
        self._executor = Executor(workers=workers, nodes=nodes, discover=discover, secret=secret, requires=requires)
        self._ncpus = self._executor._engine.info.get("workers", 0) if workers is None else workers
        self._lock = threading.Lock()
        self._tid = 0
        self._active = []
        self._all_done = threading.Condition(self._lock)
        self._creation_time = time.time()
        self._exiting = False
        self._sources = {}

    # -- jobs -------------------------------------------------------------------

    def submit(self, func, args=(), depfuncs=(), modules=(), callback=None, callbackargs=(), group="default", globals=None):
        """Submits func(*args) for execution; returns a callable job (ppft semantics)."""
        if self._exiting:
            raise DestroyedServerError("Cannot submit jobs: server instance has been destroyed")
        for name, value, kind in (("args", args, tuple), ("depfuncs", depfuncs, tuple), ("modules", modules, tuple), ("callbackargs", callbackargs, tuple)):
            if not isinstance(value, kind):
                raise TypeError("%s argument must be a tuple" % name)
        if globals is not None and not isinstance(globals, dict):
            raise TypeError("globals argument must be a dictionary")
        for module in modules:
            if not isinstance(module, str):
                raise TypeError("modules argument must be a list of strings")
        if globals:
            modules = tuple(set(modules) | {v.__name__ for v in globals.values() if isinstance(v, types.ModuleType) and v.__name__ not in ("pp", "ppft", "parallelpython.pp")})
            depfuncs = depfuncs + tuple(v for v in globals.values() if isinstance(v, types.FunctionType) and v.__module__ == "__main__")
        if isinstance(func, types.MethodType):
            args = (func.__self__,) + args
            func = func.__func__
        classes = []
        for arg in args:
            if not isinstance(arg, (int, float, str, bytes, bool, list, tuple, dict, set, type(None))):
                classes += [c for c in _main_classes(type(arg)) if c not in classes]
        if not isinstance(func, types.FunctionType) and callable(func):
            classes += [c for c in _main_classes(type(func)) if c not in classes]
        digest = self._bundle_for(func, depfuncs, modules, tuple(classes))
        with self._lock:
            self._tid += 1
            task = _Task(self, self._tid, callback, callbackargs, group)
            self._active.append(task)

        def completion(future):
            def done(status, ns, out, err, payload):
                text = (out + err).decode("utf-8", "replace")
                try:
                    value = _decode(status, payload)
                    failed = False
                except BaseException as exc:
                    value = None
                    failed = True
                    tb = getattr(exc, "traceback", "") or str(getattr(exc, "__cause__", "") or "").strip('\n"')
                    text += "An error has occured during the function execution\n" + (tb or "%s: %s\n" % (type(exc).__name__, exc))
                with self._executor._lock:
                    self._executor._futures.discard(future)
                task._done(value, text, failed)
            return done

        self._executor._submit_many(func, [(args, {})], None, digest=digest, completion=completion)
        return task

    def _bundle_for(self, func, depfuncs, modules, classes):
        """The bundle whose main script defines what the job needs, like ppft's."""
        key = (func, depfuncs, modules, classes)
        digest = self._sources.get(key)
        if digest is None:
            parts = ["import %s\n" % m for m in modules]
            parts += [_source(c) for c in classes]
            parts += [_source(f) for f in depfuncs if isinstance(f, (types.FunctionType, type))]
            if isinstance(func, types.FunctionType):
                parts.append(_source(func))
            digest = self._executor._bundle("\n".join(parts), "<pp job %s>" % getattr(func, "__name__", "?"))
            self._sources[key] = digest
        return digest

    def _task_done(self, task):
        with self._lock:
            if task in self._active:
                self._active.remove(task)
            self._all_done.notify_all()

    def wait(self, group=None):
        """Waits for every job (of `group`) to finish."""
        with self._lock:
            while any(group is None or t.group == group for t in self._active):
                self._all_done.wait()

    # -- workers and nodes ---------------------------------------------------------

    def get_ncpus(self):
        """The number of local workers."""
        return self._ncpus

    def set_ncpus(self, ncpus="autodetect"):
        """Resizes the local workers while jobs run."""
        if ncpus == "autodetect":
            import os
            ncpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if not isinstance(ncpus, int) or ncpus < 0:
            raise ValueError("ncpus must be an integer > 0")
        self._executor._engine.set_workers(ncpus)
        self._ncpus = ncpus

    def get_active_nodes(self):
        """{"local": workers, "host:port": workers, ...} for the nodes in use."""
        out = {"local": self._ncpus}
        for name, counters in self._executor.nodes().items():
            out[name] = counters.get("workers", 0) if isinstance(counters, dict) else 0
        return out

    def get_stats(self):
        """{"local": stats, "host:port": stats}: ncpus, njobs, time (busy seconds)."""
        stats = {"local": _Statistics(self._ncpus)}
        nodes = self.get_active_nodes()
        for e in self._executor.stats().get("executors", []):
            s = stats.setdefault(e["name"], _Statistics(nodes.get(e["name"], 0), rworker=e["name"] != "local" or None))
            s.njobs = e["jobs"]
            s.time = e["seconds"]
        return stats

    def print_stats(self):
        """Prints the job statistics table, as ppft does."""
        print("Job execution statistics:")
        walltime = time.time() - self._creation_time
        statistics = list(self.get_stats().items())
        total = float(sum(s.njobs for _, s in statistics)) or 1.0
        print(" job count | % of all jobs | job time sum | time per job | job server")
        for name, s in statistics:
            if s.njobs:
                print("    %6i |        %6.2f |     %8.4f |  %11.6f | %s" % (s.njobs, 100.0 * s.njobs / total, s.time, s.time / s.njobs, name))
        print("Time elapsed since server creation %s" % walltime)
        with self._lock:
            active = len(self._active)
        print("%s active tasks, %s cores" % (active, self.get_ncpus()))
        print("")

    def destroy(self):
        """Takes no more jobs (the engine stops when the program exits)."""
        self._exiting = True

    def insert(self, *args, **kwargs):
        raise NotImplementedError("Server.insert is not supported; use submit")
