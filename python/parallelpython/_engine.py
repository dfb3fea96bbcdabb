"""The engine: one `pprun engine` helper process per Python process.

Frames both ways: a 4-byte big-endian length N (of type and body), a type byte, the
body (docs/PYTHON.md lists them). The engine runs the jobs (local workers, nodes,
discovery, TLS, failover); this side pickles. The engine stops when its stdin ends,
so it never outlives this process, and it kills its workers then.
"""

import atexit
import collections
import hashlib
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import threading

_HEADER = struct.Struct(">IB")
_JOB = struct.Struct(">Q32sI")
_RESULT = struct.Struct(">QBQI")
_PARTED = struct.Struct(">Q32sIH")
_REF = struct.Struct(">H32s")

# Large parts no job uses any more stay in the engine up to this many bytes (least
# recently used dropped first), so a program that submits one job at a time with the
# same large argument still sends it once.
PART_BUDGET = 512 << 20


class EngineError(RuntimeError):
    """The engine is missing, could not start, or stopped."""


def find_engine():
    """The `pprun` binary: $PP_ENGINE, then PATH, then a build next to this package."""
    explicit = os.environ.get("PP_ENGINE")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise EngineError("PP_ENGINE=%s is not an executable; point it at the pprun binary (swift build -c release; .build/release/pprun)" % explicit)
    found = shutil.which("pprun")
    if found:
        return found
    here = os.path.dirname(os.path.abspath(__file__))
    for up in (os.path.join(here, "..", ".."), os.path.join(here, "..")):
        for config in ("release", "debug"):
            candidate = os.path.normpath(os.path.join(up, ".build", config, "pprun"))
            if os.access(candidate, os.X_OK):
                return candidate
    raise EngineError(
        "parallelpython needs its engine, the pprun binary, and found none: build it in the "
        "ParallelPython repository (swift build -c release) and put .build/release on PATH, "
        "or set PP_ENGINE to its path"
    )


class Engine(object):
    """A running `pprun engine` and the jobs in flight on it."""

    def __init__(self, config):
        self.config = config
        path = find_engine()
        try:
            self.process = subprocess.Popen(
                [path, "engine"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
            )
        except OSError as exc:
            raise EngineError("cannot start the engine %s: %s" % (path, exc))
        self.path = path
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending = {}  # job id -> callback(status, ns, stdout, stderr, payload)
        self._stats = {}
        self._bundles = set()
        self._parts = collections.OrderedDict()  # digest -> size, least recently used first
        self._part_users = {}  # digest -> jobs (and reservations) that use it
        self._part_bytes = 0
        self._job_parts = {}  # job id -> the digests of its parts
        self._recent = collections.OrderedDict()  # len -> (bytes, digest): compared, not hashed
        self._ids = itertools.count(1)
        self._closed = False
        self._reason = None
        self._send(b"C", json.dumps(config).encode())
        kind, body = self._read_frame()
        if kind != b"R":
            self.process.wait()
            message = body.decode("utf-8", "replace") if body else "it exited with status %s" % self.process.returncode
            raise EngineError("the engine did not start: " + message)
        self.info = json.loads(body)
        self._reader = threading.Thread(target=self._read_loop, name="parallelpython-engine", daemon=True)
        self._reader.start()

    # -- frames ---------------------------------------------------------------

    def _send(self, kind, body):
        self._write(_HEADER.pack(len(body) + 1, kind[0]) + body)

    def _write(self, data):
        with self._write_lock:
            try:
                self.process.stdin.write(data)
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                raise EngineError("the engine has stopped: %s" % (self._reason or "its pipe is closed"))

    def _read_exact(self, n):
        out = self.process.stdout.read(n)
        if out is None or len(out) < n:
            return None
        return out

    def _read_frame(self):
        header = self._read_exact(5)
        if header is None:
            return None, None
        length, kind = _HEADER.unpack(header)
        body = self._read_exact(length - 1) if length > 1 else b""
        if body is None:
            return None, None
        return bytes([kind]), body

    def _read_loop(self):
        while True:
            kind, body = self._read_frame()
            if kind is None:
                break
            if kind == b"r":
                job_id, status, ns, outlen = _RESULT.unpack_from(body, 0)
                pos = _RESULT.size
                out = body[pos:pos + outlen]
                pos += outlen
                (errlen,) = struct.unpack_from(">I", body, pos)
                pos += 4
                err = body[pos:pos + errlen]
                payload = body[pos + errlen:]
                with self._lock:
                    callback = self._pending.pop(job_id, None)
                    if self._job_parts:
                        self._release(self._job_parts.pop(job_id, ()))
                if callback is not None:
                    callback(status, ns, out, err, payload)
            elif kind == b"S":
                token = body[:8]
                with self._lock:
                    waiter = self._stats.pop(token, None)
                if waiter is not None:
                    waiter[1] = json.loads(body[8:])
                    waiter[0].set()
            elif kind == b"E":
                self._reason = body.decode("utf-8", "replace")
                break
        self._closed = True
        with self._lock:
            pending = self._pending
            self._pending = {}
            waiters = list(self._stats.values())
            self._stats = {}
        reason = self._reason or "the engine exited (status %s)" % self.process.poll()
        for callback in pending.values():
            callback(None, 0, b"", b"", reason.encode())
        for waiter in waiters:
            waiter[0].set()

    # -- requests -------------------------------------------------------------

    def ensure_bundle(self, spec):
        """Sends a bundle once; returns its digest."""
        digest = hashlib.sha256(spec).digest()
        if digest not in self._bundles:
            self._send(b"B", digest + spec)
            self._bundles.add(digest)
        return digest

    def ensure_part(self, data):
        """Sends a large part of opaque jobs to the engine once (while it is kept there);
        returns its digest, reserved for one job: pass it in that job's parts."""
        recent = self._recent.get(len(data))
        if recent is not None and (recent[0] is data or recent[0] == data):
            digest = recent[1]
        else:
            digest = hashlib.sha256(data).digest()
            self._recent[len(data)] = (data, digest)
            while len(self._recent) > 2:
                self._recent.popitem(last=False)
        with self._lock:
            known = digest in self._parts
            self._part_users[digest] = self._part_users.get(digest, 0) + 1
        if not known:
            self._write(_HEADER.pack(len(data) + 33, 76) + digest + data)  # 'L'
        with self._lock:
            if digest in self._parts:
                self._parts.move_to_end(digest)
            else:
                self._parts[digest] = len(data)
                self._part_bytes += len(data)
                self._trim()
        return digest

    def _release(self, digests):
        for digest in digests:
            users = self._part_users.get(digest, 0) - 1
            if users > 0:
                self._part_users[digest] = users
            else:
                self._part_users.pop(digest, None)

    def _trim(self):
        """Drops the least recently used parts no job uses while over the budget
        (under self._lock; only when a part is added, so the reader thread never writes)."""
        if self._part_bytes <= PART_BUDGET:
            return
        for digest in [d for d in self._parts if d not in self._part_users]:
            if self._part_bytes <= PART_BUDGET:
                break
            self._part_bytes -= self._parts.pop(digest)
            try:
                self._send(b"U", digest)
            except EngineError:
                return

    def submit_many(self, digest, jobs, timeout):
        """Queues opaque jobs `(argument_bytes, callback)`, or `(inline_bytes, callback,
        part_digests)` for jobs in parts (`ensure_part`; the function gets the inline
        bytes and then each part), with one write; returns their ids. Each
        `callback(status, ns, stdout, stderr, payload)` runs on the reader thread
        (status None: the engine stopped)."""
        if self._closed:
            raise EngineError("the engine has stopped: %s" % (self._reason or "unknown reason"))
        ms = 0 if timeout is None else max(1, int(timeout * 1000))
        ids = []
        parts = []
        pack_header = _HEADER.pack
        pack_job = _JOB.pack
        with self._lock:
            for job in jobs:
                job_id = next(self._ids)
                self._pending[job_id] = job[1]
                ids.append(job_id)
                if len(job) == 2:
                    # 'O': the arguments are opaque bytes (pickles) the engine does not read.
                    parts.append(pack_header(len(job[0]) + 45, 79) + pack_job(job_id, digest, ms) + job[0])
                else:
                    # 'P': the inline bytes at position 0, the parts after them.
                    refs = b"".join(_REF.pack(i + 1, d) for i, d in enumerate(job[2]))
                    self._job_parts[job_id] = job[2]
                    parts.append(pack_header(len(job[0]) + len(refs) + 47, 80) + _PARTED.pack(job_id, digest, ms, len(job[2])) + refs + job[0])
        self._write(b"".join(parts))
        return ids

    def set_workers(self, n):
        """Resizes the local worker pool while jobs run."""
        self._send(b"W", struct.pack(">I", n))

    def stop(self, job_id):
        """Stops a job wherever it is, running included (its worker is replaced)."""
        if not self._closed:
            try:
                self._send(b"K", struct.pack(">Q", job_id))
            except EngineError:
                pass

    def cancel(self, job_id):
        """Cancels a job that has not started (it ends with status 7)."""
        if not self._closed:
            try:
                self._send(b"X", struct.pack(">Q", job_id))
            except EngineError:
                pass

    def statistics(self, timeout=5.0):
        token = os.urandom(8)
        waiter = [threading.Event(), None]
        with self._lock:
            self._stats[token] = waiter
        self._send(b"S", token)
        waiter[0].wait(timeout)
        return waiter[1] or {}

    def close(self):
        if self.process.poll() is None:
            try:
                self._send(b"Q", b"")
                self.process.stdin.close()
            except (EngineError, OSError):
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._closed = True
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass


_engine = None
_engine_lock = threading.Lock()


def get_engine(config):
    """The process's engine, started with `config` on first use."""
    global _engine
    if os.environ.get("PP_IN_WORKER"):
        raise EngineError(
            "a parallelpython job tried to start an engine: the program's top-level code ran "
            "in a worker; put it under `if __name__ == \"__main__\":`, as with multiprocessing"
        )
    with _engine_lock:
        if _engine is None or _engine._closed:
            _engine = Engine(config)
            atexit.register(_engine.close)
        elif config != _engine.config:
            raise ValueError(
                "this process already runs an engine with other options (%r); one engine per "
                "process: create Executors with the same options, or call parallelpython.shutdown() first"
                % (_engine.config,)
            )
        return _engine


def shutdown_engine():
    global _engine
    with _engine_lock:
        if _engine is not None:
            _engine.close()
            _engine = None
