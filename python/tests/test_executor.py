"""The Executor against concurrent.futures.ProcessPoolExecutor on the same calls, with
the real engine ($PP_ENGINE or pprun on PATH) and real workers. Run:

    PP_ENGINE=.build/debug/pprun python3 -m unittest discover -s python/tests -v
"""

import concurrent.futures as cf
import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import parallelpython  # noqa: E402
from parallelpython import Executor, JobTimeout, RemoteError  # noqa: E402


def square(x):
    return x * x


def divide(a, b):
    return a / b


def raise_key(x):
    raise KeyError(x)


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


class Point(object):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __repr__(self):
        return "Point(%r, %r)" % (self.x, self.y)


def moved(p, dx):
    return Point(p.x + dx, p.y)


def kw(a, b=2, *, c=3):
    return (a, b, c)


def pid(_):
    return os.getpid()


def announce_then_sleep(path, seconds):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return "finished"


def grow_and_sum(data, i, extra=b""):
    # Changes its large argument in place: the next job must still get the original.
    data[0] += 1
    return data[0] + i, len(data), len(extra)


def take(table, i):
    return table[i]


class SameAsProcessPool(unittest.TestCase):
    """Each check runs the same calls on ProcessPoolExecutor and on ours."""

    @classmethod
    def setUpClass(cls):
        cls.ours = Executor(workers=2, discover=False)
        cls.theirs = cf.ProcessPoolExecutor(2)

    @classmethod
    def tearDownClass(cls):
        cls.ours.shutdown()
        cls.theirs.shutdown()

    def both(self, fn):
        return fn(self.theirs), fn(self.ours)

    def test_values_and_map_order(self):
        theirs, ours = self.both(lambda ex: list(ex.map(square, range(200))))
        self.assertEqual(ours, theirs)
        theirs, ours = self.both(lambda ex: list(ex.map(divide, [1, 2, 3], [4, 5, 6])))
        self.assertEqual(ours, theirs)
        theirs, ours = self.both(lambda ex: ex.submit(kw, 1, c=9).result())
        self.assertEqual(ours, theirs)

    def test_large_arguments_and_functions(self):
        # Over LARGE_PART, arguments and functions travel as parts (once per worker);
        # each job still gets its own copy, changed in place or not.
        big = bytearray(3 << 20)
        table = list(range(300_000))

        def run(ex):
            futures = [ex.submit(grow_and_sum, big, i) for i in range(6)]
            futures.append(ex.submit(grow_and_sum, bytearray(b"ab"), 5, extra=bytes(2 << 20)))
            futures.append(ex.submit(grow_and_sum, bytearray(b"ab"), 1, extra=b"x"))
            return [f.result() for f in futures], list(ex.map(functools.partial(take, table), range(0, 300_000, 30_000)))

        theirs, ours = self.both(run)
        self.assertEqual(ours, theirs)
        self.assertEqual(big[0], 0)

    def test_user_classes_travel_both_ways(self):
        theirs, ours = self.both(lambda ex: ex.submit(moved, Point(1, 2), 10).result())
        self.assertEqual(ours, theirs)
        self.assertIs(type(ours), Point)

    def test_exceptions_keep_their_type_and_traceback(self):
        for ex in (self.theirs, self.ours):
            with self.assertRaises(ZeroDivisionError):
                ex.submit(divide, 1, 0).result()
            with self.assertRaises(KeyError) as caught:
                ex.submit(raise_key, "k").result()
            self.assertIn("raise_key", str(caught.exception.__cause__))

    def test_map_timeout(self):
        for ex in (self.theirs, self.ours):
            it = ex.map(sleep_then, [1], [3], timeout=0.5)
            with self.assertRaises(cf.TimeoutError):
                next(it)

    def test_wait_and_as_completed(self):
        futures = [self.ours.submit(sleep_then, i, 0.2 * (3 - i)) for i in range(3)]
        done, not_done = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
        self.assertGreaterEqual(len(done), 1)
        order = [f.result() for f in cf.as_completed(futures)]
        self.assertEqual(sorted(order), [0, 1, 2])

    def test_shutdown_refuses_new_work(self):
        for ex in (cf.ProcessPoolExecutor(2), Executor(workers=2, discover=False)):
            self.assertEqual(ex.submit(square, 2).result(), 4)
            ex.shutdown(wait=True)
            with self.assertRaises(RuntimeError):
                ex.submit(square, 1)

    def test_shutdown_cancel_futures_cancels_only_what_has_not_started(self):
        import tempfile
        for ex in (cf.ProcessPoolExecutor(2), Executor(workers=2, discover=False)):
            folder = tempfile.mkdtemp()
            paths = [os.path.join(folder, str(i)) for i in range(2)]
            running = [ex.submit(announce_then_sleep, p, 1) for p in paths]
            deadline = time.monotonic() + 30
            while not all(os.path.exists(p) for p in paths) and time.monotonic() < deadline:
                time.sleep(0.02)
            queued = [ex.submit(square, i) for i in range(50)]
            ex.shutdown(wait=True, cancel_futures=True)
            for f in running:
                self.assertEqual(f.result(), "finished")
            for p in paths:
                os.remove(p)
            os.rmdir(folder)
            for i, f in enumerate(queued):
                self.assertTrue(f.cancelled() or f.result() == i * i, (type(ex).__name__, i))
            self.assertTrue(any(f.cancelled() for f in queued), type(ex).__name__)

    def test_workers_are_other_processes(self):
        pids = set(self.ours.map(pid, range(50)))
        self.assertNotIn(os.getpid(), pids)
        self.assertTrue(1 <= len(pids) <= 2, pids)


class Extras(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ex = Executor(workers=2, discover=False)

    def test_per_job_timeout_kills_the_worker(self):
        started = time.monotonic()
        with self.assertRaises(JobTimeout):
            self.ex.apply(sleep_then, (1, 30), timeout=1).result()
        self.assertLess(time.monotonic() - started, 25)
        self.assertEqual(self.ex.submit(square, 7).result(), 49)

    def test_cancel_stops_a_running_job(self):
        import tempfile
        path = os.path.join(tempfile.mkdtemp(), "started")
        future = self.ex.submit(announce_then_sleep, path, 60)
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        worker = int(open(path).read())
        self.assertTrue(future.cancel())
        self.assertTrue(future.cancelled())
        # Its worker is killed (and replaced), well before the job's 60 s.
        deadline = time.monotonic() + 20
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertFalse(_alive(worker), "the worker running the cancelled job still runs")
        self.assertEqual(self.ex.submit(square, 3).result(), 9)
        os.remove(path)
        os.rmdir(os.path.dirname(path))

    def test_imap_unordered(self):
        self.assertEqual(sorted(self.ex.imap_unordered(square, range(20))), [i * i for i in range(20)])

    def test_cancel_pending_future_and_shutdown(self):
        ex = self.ex
        blockers = [ex.submit(sleep_then, i, 1) for i in range(2)]
        queued = [ex.submit(square, i) for i in range(5)]
        cancelled = [f.cancel() for f in queued]
        for f in blockers:
            self.assertIn(f.result(), (0, 1))
        for f, c in zip(queued, cancelled):
            if c:
                self.assertTrue(f.cancelled())
            else:
                self.assertIn(f.result(), range(25))

    def test_stats_count_the_jobs(self):
        before = sum(e["jobs"] for e in self.ex.stats()["executors"])
        list(self.ex.map(square, range(10)))
        after = sum(e["jobs"] for e in self.ex.stats()["executors"])
        self.assertGreaterEqual(after - before, 10)

    def test_unpicklable_argument_is_named(self):
        import threading
        with self.assertRaises(TypeError) as caught:
            self.ex.submit(square, threading.Lock())
        self.assertIn("argument 0 of square", str(caught.exception))

    def test_lambdas_travel_with_cloudpickle_or_say_how(self):
        try:
            import cloudpickle  # noqa: F401
            have = True
        except ImportError:
            try:
                import dill  # noqa: F401
                have = True
            except ImportError:
                have = False
        if have:
            self.assertEqual(self.ex.submit(lambda x: x + 1, 1).result(), 2)
        else:
            with self.assertRaises(TypeError) as caught:
                self.ex.submit(lambda x: x + 1, 1)
            self.assertIn("install cloudpickle", str(caught.exception))

    def test_after_shutdown_submit_is_refused(self):
        ex = Executor(workers=2, discover=False)
        ex.shutdown()
        with self.assertRaises(RuntimeError):
            ex.submit(square, 1)


    def test_requires_places_jobs_where_they_can_run(self):
        ok = Executor(workers=2, discover=False, requires={"python": ">=3.0", "modules": ["json"]})
        self.assertEqual(list(ok.map(square, [1, 2])), [1, 4])
        for requires, text in (({"modules": ["ppplace_missing"]}, "No module named 'ppplace_missing'"), ({"python": ">=99"}, "needs Python >=99"),
                               ({"implementation": "pypy"}, "needs Python implementation pypy")):
            ex = Executor(workers=2, discover=False, requires=requires)
            with self.assertRaises(RemoteError) as caught:
                ex.submit(square, 1).result()
            self.assertIn(text, str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            Executor(workers=2, discover=False, requires={"python": "3.9"})
        self.assertIn("'3.9' is not a version range", str(caught.exception))

    def test_pp_server_takes_requires_too(self):
        from parallelpython import pp
        import contextlib
        import io
        server = pp.Server(2, requires={"implementation": "pypy"})
        try:
            job = server.submit(square, (3,))
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                self.assertIsNone(job())
            self.assertIn("needs Python implementation pypy", printed.getvalue())
        finally:
            server.destroy()
        server = pp.Server(2, requires={"implementation": "CPython", "modules": ["json"]})
        try:
            self.assertEqual(server.submit(square, (3,))(), 9)
        finally:
            server.destroy()


class Engine(unittest.TestCase):
    def run_program(self, code, env=None, timeout=60):
        environment = dict(os.environ)
        environment.update(env or {})
        environment["PYTHONPATH"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environment, timeout=timeout)

    def test_missing_engine_says_how_to_install_it(self):
        r = self.run_program(
            """
            from parallelpython import Executor, EngineError
            try:
                Executor(discover=False)
            except EngineError as e:
                print(e)
            """,
            env={"PP_ENGINE": "/nonexistent/pprun"},
        )
        self.assertIn("PP_ENGINE=/nonexistent/pprun is not an executable", r.stdout, r.stderr)
        self.assertIn("swift build -c release", r.stdout)

    def test_engine_and_workers_die_with_a_killed_program(self):
        r = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(
                """
                import os, sys, time
                sys.path.insert(0, %r)
                from parallelpython import Executor
                ex = Executor(workers=2, discover=False)
                engine = ex._engine.process.pid
                list(ex.map(abs, [-1, -2, -3, -4]))  # the workers are up
                print(engine, flush=True)
                time.sleep(60)
                """ % os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
            )],
            stdout=subprocess.PIPE, text=True,
        )
        engine = int(r.stdout.readline())
        r.stdout.close()
        children = _children(engine)
        os.kill(r.pid, signal.SIGKILL)
        r.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_alive(engine) or any(_alive(c) for c in children)):
            time.sleep(0.05)
        self.assertFalse(_alive(engine), "the engine outlived its program")
        self.assertEqual([c for c in children if _alive(c)], [])


def _children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    unittest.main()
