# ParallelPython worker runtime.
#
# A long-lived process that runs Python functions for the Swift WorkerPool. It is
# embedded in the Swift binaries (WorkerScript.swift is generated from this file by
# scripts/embed-worker; a test checks that the two match) and started as
# `ppworker -B -c <bootstrap>` (argv[0] ppworker, the interpreter's own file), whose
# bootstrap reads this script from stdin. Standard library only.
#
# Frames on stdin and stdout: a 4-byte big-endian length N, then N bytes: one type
# byte and the body. docs/WORKER-PROTOCOL.md describes every frame byte by byte.
#
#   pool -> worker                         worker -> pool
#   'B' hash(32) spec-JSON  load bundle    'H' hello-JSON               once, at start
#   'D' hash(32)            drop bundle    'R' id(8) status(1) ns(8)    job result
#   'J' id(8) hash(32) args run a job          outlen(4) out errlen(4) err payload
#   'O' id(8) hash(32) bytes   run a job: fn(bytes), which returns bytes (opaque)
#   'C' id(8) hash(32)      check bundle   'C' id(8) status(1) error-JSON  check reply
#   'L' hash(32) bytes      load blob (a large argument)
#   'K' hash(32)            drop blob
#   'P' id(8) hash(32) flags(1) count(2) count x (position(2) hash(32)) args
#                           run a job whose large arguments are blobs
#   'M' hash(32) flags(1) count(4) count x (id(8) len(4)) args...
#                           run a batch of jobs; results flush at its end, or
#                           when 1 ms passed since the last flush
#                                          'X' reason(1)                retiring, exits
#
# Closing stdin asks the worker to exit.

# No module of the current directory may shadow ours or the user's: `python3 -c`
# puts '' (the cwd) first in sys.path. Drop it before anything else is imported.
# (Not -I or -E: users need PYTHONPATH and their site-packages.) A bundle puts its own
# file's directory first in sys.path, so helper modules next to the user's script import.
import sys

try:
    if sys.path and sys.path[0] in ("", __import__("os").getcwd()):
        del sys.path[0]
except OSError:  # the cwd was removed: '' still means it
    if sys.path and sys.path[0] == "":
        del sys.path[0]

import io
import json
import linecache
import os
import struct
import time
import traceback
import types
import importlib

MAX_FRAME = 1 << 30
OUTPUT_LIMIT = 1 << 20  # bytes of captured stdout/stderr kept per job, each

OK = 0
RAISED = 1
NOT_JSON = 2
BUNDLE_ERROR = 3
BAD_ARGUMENTS = 4

_header = struct.Struct(">IB")
_job_header = struct.Struct(">Q32s")
_refs_header = struct.Struct(">BH")
_ref = struct.Struct(">H32s")
_result_fields = struct.Struct(">BQBQI")
_batch_header = struct.Struct(">32sBI")
_batch_entry = struct.Struct(">QI")
FLUSH_NS = 1000000  # inside a batch, results wait at most this long after the last flush
_len = struct.Struct(">I")
_plain_result = struct.Struct(">IBQBQII")  # a whole 'R' frame but its payload, with no output
_perf_ns = time.perf_counter_ns
def _plain(value):
    """numpy scalars and arrays (anything with tolist()) as plain numbers and lists."""
    tolist = getattr(value, "tolist", None)
    if tolist is None:
        raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)
    return tolist()


_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False, default=_plain).encode
_loads = json.loads
_scan = json.scanner.make_scanner(json.JSONDecoder())  # (value, end) of the JSON at an offset


class BundleError(object):
    """A bundle that failed to load: every job naming it fails with this error."""

    __slots__ = ("payload",)

    def __init__(self, payload):
        self.payload = payload


class Capture(io.TextIOBase):
    """A cheap, bounded text sink standing in for sys.stdout/sys.stderr during a job."""

    __slots__ = ("parts", "size", "truncated")

    def __init__(self):
        self.parts = []
        self.size = 0
        self.truncated = False

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not " + type(s).__name__)
        n = len(s)
        if self.size < OUTPUT_LIMIT:
            self.parts.append(s)
            self.size += n
        else:
            self.truncated = True
        return n

    def flush(self):
        pass

    def take(self):
        """What was written since the last take, as bytes; the sink starts empty again."""
        if not self.parts:
            return b""
        data = "".join(self.parts).encode("utf-8", "replace")
        self.parts = []
        self.size = 0
        if len(data) > OUTPUT_LIMIT or self.truncated:
            data = data[:OUTPUT_LIMIT] + b"\n[output truncated at 1 MiB]\n"
            self.truncated = False
        return data


def error_payload(exc, tb_skip=0):
    """The JSON error body for an exception: type, message, formatted traceback."""
    tb = exc.__traceback__
    for _ in range(tb_skip):
        if tb is not None:
            tb = tb.tb_next
    text = ""
    if tb is not None or isinstance(exc, SyntaxError):
        # With no frame of user code left (a call with wrong arguments), the
        # exception line alone says everything: no traceback.
        try:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except BaseException:  # a broken __str__ must not kill the worker
            text = "Traceback unavailable\n"
    try:
        message = str(exc)
    except BaseException:
        message = "<exception message unavailable>"
    name = type(exc).__module__ + "." + type(exc).__qualname__
    if type(exc).__module__ == "builtins":
        name = type(exc).__qualname__
    return _dumps({"type": name, "message": message, "traceback": text}).encode()


def simple_error(kind, message):
    return _dumps({"type": kind, "message": message, "traceback": ""}).encode()


def check_requires(requires):
    """Raises ImportError (ModuleNotFoundError for a module) unless this Python is
    the implementation, in the version range (PEP 440 release comparisons; == and !=
    take a trailing .*) and has the modules that `requires` names."""
    here = "%s %s" % (sys.implementation.name, sys.version.split()[0])
    implementation = requires.get("implementation")
    if implementation and implementation.lower() != sys.implementation.name:
        raise ImportError("needs Python implementation %s; this worker runs %s" % (implementation, here))
    version, wanted = tuple(sys.version_info[:3]), requires.get("python")
    for clause in wanted.split(",") if wanted else ():
        clause = clause.strip()
        op = clause[:2] if clause[:2] in (">=", "<=", "==", "!=") else clause[:1]
        number = clause[len(op):].strip()
        prefix = number.endswith(".*") and op in ("==", "!=")
        release = tuple(int(part) for part in (number[:-2] if prefix else number).split("."))
        if prefix:
            inside = (version[:len(release)] == release) == (op == "==")
        else:
            n = max(len(version), len(release))
            a, b = version + (0,) * (n - len(version)), release + (0,) * (n - len(release))
            inside = {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "==": a == b, "!=": a != b}[op]
        if not inside:
            raise ImportError("needs Python %s; this worker runs %s" % (wanted, here))
    for module in requires.get("modules", ()):
        importlib.import_module(module)


def real_interpreter():
    """The interpreter's own file, which starts this same Python without a wrapper (a
    pyenv shim runs bash and more at every start): /proc/self/exe, or in a venv its
    bin/python; "" when unknown."""
    try:
        if sys.prefix == sys.base_prefix:
            return os.readlink("/proc/self/exe")
        candidate = os.path.join(sys.prefix, "bin", "python3")
        return candidate if os.access(candidate, os.X_OK) else ""
    except OSError:
        return ""


def _parse(data):
    """The JSON value of `data` (bytes): scanned in place when it is ASCII with nothing
    around it (a json.loads costs 2 us more per call), else json.loads and its errors."""
    if data.isascii():
        try:
            value, end = _scan(data.decode("ascii"), 0)
            if end == len(data):
                return value
        except Exception:  # StopIteration, ValueError, RecursionError: loads says what
            pass
    return _loads(data)


class Worker(object):
    def __init__(self, rfd, wfd):
        self.rfd = rfd
        self.wfd = wfd
        self.bundles = {}
        self.blobs = {}  # digest -> bytes of a large argument
        self.parsed = {}  # digest -> its JSON value, parsed once: jobs share it
        self.out = []
        self.retire = False
        self.captured = (Capture(), Capture())  # each job's stdout and stderr, emptied after it

    # -- output -------------------------------------------------------------

    def send(self, kind, body):
        self.out.append(_header.pack(len(body) + 1, kind) + body)

    def flush(self):
        if not self.out:
            return
        data = b"".join(self.out)
        self.out.clear()  # in place: a batch holds its append method
        view = memoryview(data)
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]

    # -- bundles ------------------------------------------------------------

    def load_bundle(self, h, spec_bytes):
        try:
            spec = _loads(spec_bytes)
            name = spec["name"]
            filename = spec.get("filename") or "<bundle %s>" % h.hex()[:12]
            path = spec.get("path")
            if path and path not in sys.path:
                # First, where `python3 FILE.py` puts it (the cwd entry is gone).
                sys.path.insert(0, path)
            if "requires" in spec:
                check_requires(spec["requires"])
            module = types.ModuleType("__ppbundle__")
            module.__file__ = filename
            namespace = module.__dict__
            for name_to_import in spec.get("imports", ()):
                imported = importlib.import_module(name_to_import)
                top = name_to_import.split(".")[0]
                namespace[top] = sys.modules[top] if top != name_to_import else imported
            for index, dep in enumerate(spec.get("deps", ())):
                dep_name = "<%s helper %d>" % (filename, index + 1)
                linecache.cache[dep_name] = (len(dep), None, dep.splitlines(True), dep_name)
                exec(compile(dep, dep_name, "exec"), namespace)
            source = spec["source"]
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            exec(compile(source, filename, "exec"), namespace)
            fn = namespace.get(name)
            if fn is None or not callable(fn):
                defined = sorted(
                    k for k, v in namespace.items()
                    if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == "__ppbundle__"
                )
                if fn is None:
                    message = "%s defines no function named %r" % (filename, name)
                else:
                    message = "%r in %s is a %s, not a function" % (name, filename, type(fn).__name__)
                message += "; functions defined there: %s" % (", ".join(defined) if defined else "none")
                self.bundles[h] = BundleError(simple_error("FunctionNotFound", message))
            else:
                self.bundles[h] = fn
        except BaseException as exc:  # SyntaxError, ImportError, errors at import time
            self.bundles[h] = BundleError(error_payload(exc, tb_skip=1))

    # -- jobs ---------------------------------------------------------------

    def blob_args(self, body):
        # 'P': flags(1) count(2) count x (position(2) digest(32)), then the inline args.
        flags, count = _refs_header.unpack_from(body, 40)
        refs = [_ref.unpack_from(body, 43 + 34 * i) for i in range(count)]
        for _, d in refs:
            if d not in self.blobs:
                raise LookupError("large argument %s was never loaded on this worker" % d.hex())
        if flags & 1:
            # Opaque: the inline bytes (when any) are one bytes argument, the blobs others.
            inline = body[43 + 34 * count :]
            args = [inline] if inline else []
            for position, d in refs:
                args.insert(position, self.blobs[d])
            return args
        args = _parse(body[43 + 34 * count :])
        if args.__class__ is not list:
            raise TypeError("arguments must be a JSON array, got %s" % type(args).__name__)
        for position, d in refs:
            if d not in self.parsed:
                self.parsed[d] = _loads(self.blobs[d])
            args.insert(position, self.parsed[d])
        return args

    def run_job(self, body, opaque=False, refs=False):
        job_id, h = _job_header.unpack_from(body, 0)
        self.run(job_id, h, body if refs else body[40:], opaque, refs)

    def run_batch(self, body):
        # 'M': hash(32) flags(1: bit 0 opaque) count(4), count x (id(8) len(4)), then
        # the arguments back to back. ASCII JSON arguments are scanned in place in one
        # string (a json.loads per job cost 2.6 us of a tiny job's 3.6 here); a job
        # whose arguments do not scan to exactly their length takes the general path.
        h, flags, count = _batch_header.unpack_from(body, 0)
        opaque = flags & 1 == 1
        base = 37 + 12 * count
        fn = self.bundles.get(h)
        text = None
        if not opaque and fn is not None and fn.__class__ is not BundleError:
            region = body[base:]
            if region.isascii():
                text = region.decode("ascii")
        out, err = self.captured
        saved = sys.stdout, sys.stderr
        append = self.out.append
        offset = 0
        last = _perf_ns()
        try:
            for job_id, n in _batch_entry.iter_unpack(body[37:base]):
                args = None
                if text is not None:
                    try:
                        args, end = _scan(text, offset)
                        if end != offset + n:
                            args = None
                    except Exception:  # StopIteration, ValueError, RecursionError
                        args = None
                if args.__class__ is list:
                    # The common case inline: an int result and no output is one pack.
                    if sys.stdout is not out or sys.stderr is not err:  # a job may replace them
                        sys.stdout, sys.stderr = out, err
                    start = _perf_ns()
                    try:
                        value = fn(*args)
                    except BaseException as exc:
                        now = _perf_ns()
                        self.finish(job_id, RAISED, exc, now - start, False)
                    else:
                        now = _perf_ns()
                        if value.__class__ is int and not out.parts and not err.parts:
                            payload = str(value).encode()
                            append(_plain_result.pack(26 + len(payload), 82, job_id, OK, now - start, 0, 0) + payload)
                        else:
                            self.finish(job_id, OK, value, now - start, False)
                else:
                    if args.__class__ is dict:
                        if sys.stdout is not out or sys.stderr is not err:
                            sys.stdout, sys.stderr = out, err
                        self.call(job_id, fn, (), args, False)
                    else:
                        self.run(job_id, h, body[base + offset : base + offset + n], opaque, False)
                    now = _perf_ns()
                offset += n
                if self.retire:
                    return
                if now - last > FLUSH_NS:  # a long job does not hold back finished ones
                    self.flush()
                    last = now
        finally:
            sys.stdout, sys.stderr = saved

    def run(self, job_id, h, data, opaque, refs):
        """Runs one job on `data` (its arguments; a 'P' frame's whole body with refs)
        and queues its 'R' frame."""
        fn = self.bundles.get(h)
        if fn is None:
            payload = simple_error("ProtocolError", "bundle %s was never loaded on this worker" % h.hex())
            return self.result(job_id, BUNDLE_ERROR, 0, b"", b"", payload)
        if fn.__class__ is BundleError:
            return self.result(job_id, BUNDLE_ERROR, 0, b"", b"", fn.payload)
        kwargs = None
        try:
            if refs:
                args = self.blob_args(data)
                opaque = data[40] & 1 == 1
            elif opaque:
                args = [data]
            else:
                args = _parse(data)
                if args.__class__ is dict:  # keyword arguments
                    kwargs, args = args, ()
                elif args.__class__ is not list:
                    raise TypeError("arguments must be a JSON array or object, got %s" % type(args).__name__)
        except Exception as exc:
            payload = simple_error(type(exc).__name__, "bad job arguments: %s" % exc)
            return self.result(job_id, BAD_ARGUMENTS, 0, b"", b"", payload)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.captured
        try:
            self.call(job_id, fn, args, kwargs, opaque)
        finally:
            sys.stdout, sys.stderr = saved

    def call(self, job_id, fn, args, kwargs, opaque):
        """Calls `fn` (the caller has installed the output capture) and queues the
        job's 'R' frame with its value or error and its output."""
        start = _perf_ns()
        try:
            value = fn(*args) if kwargs is None else fn(**kwargs)
            status = OK
        except BaseException as exc:
            status = RAISED
            value = exc
        self.finish(job_id, status, value, _perf_ns() - start, opaque)

    def finish(self, job_id, status, value, elapsed, opaque):
        """Queues the 'R' frame of a job that returned `value` or raised it (RAISED),
        with the output it captured. Called from the frame that called the function."""
        if status == OK and opaque:
            if value.__class__ is bytes:
                payload = value
            else:
                status = NOT_JSON
                payload = simple_error("TypeError", "an opaque job must return bytes, not %s" % type(value).__name__)
        elif status == OK:
            try:
                payload = str(value).encode() if value.__class__ is int else _dumps(value).encode()
            except (TypeError, ValueError, RecursionError) as exc:
                status = NOT_JSON
                hint = "return None, bool, int, float, str, or lists and dicts of them"
                if isinstance(exc, ValueError):
                    hint = "NaN and infinity have no JSON form: return None or a string such as 'nan' for them"
                payload = simple_error(
                    type(exc).__name__,
                    "the function returned a %s, which JSON cannot encode (%s); %s"
                    % (type(value).__name__, exc, hint),
                )
        else:
            payload = error_payload(value, tb_skip=1)
            if isinstance(value, MemoryError):
                self.retire = True
        out, err = self.captured
        self.result(job_id, status, elapsed, out.take() if out.parts else b"", err.take() if err.parts else b"", payload)

    def result(self, job_id, status, elapsed, out_bytes, err_bytes, payload):
        """Queues an 'R' frame."""
        fields = _result_fields.pack(82, job_id, status, elapsed, len(out_bytes))  # 82 = 'R'
        body_len = len(fields) + len(out_bytes) + 4 + len(err_bytes) + len(payload)
        self.out.append(
            _len.pack(body_len) + fields + out_bytes + _len.pack(len(err_bytes)) + err_bytes + payload
        )

    def check(self, body):
        request_id, h = _job_header.unpack_from(body, 0)
        fn = self.bundles.get(h)
        if fn is None:
            reply = struct.pack(">QB", request_id, 1) + simple_error("ProtocolError", "bundle never loaded")
        elif fn.__class__ is BundleError:
            reply = struct.pack(">QB", request_id, 1) + fn.payload
        else:
            reply = struct.pack(">QB", request_id, 0)
        self.send(ord("C"), reply)

    # -- main loop ----------------------------------------------------------

    def serve(self):
        hello = {
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "implementation": sys.implementation.name,
            "executable": sys.executable,
            "interpreter": real_interpreter(),
        }
        self.send(ord("H"), _dumps(hello).encode())
        self.flush()
        buf = b""
        read = os.read
        rfd = self.rfd
        unpack = _header.unpack_from
        while True:
            # 64 KiB: below malloc's mmap threshold. A 1 MiB read allocated its buffer
            # with mmap and gave it back with mremap and munmap, for every frame read:
            # half the worker's CPU time per job when jobs come one at a time.
            chunk = read(rfd, 65536)
            if not chunk:
                break
            buf = buf + chunk if buf else chunk
            if len(buf) >= 5:
                # A large frame: read the rest of it now and join once (appending chunk
                # by chunk would copy it over and over: time quadratic in its size).
                need = 4 + unpack(buf, 0)[0] - len(buf)
                if 0 < need <= MAX_FRAME:
                    parts = [buf]
                    while need > 0:
                        chunk = read(rfd, min(need, 1 << 24))
                        if not chunk:
                            break
                        parts.append(chunk)
                        need -= len(chunk)
                    buf = b"".join(parts)
            pos = 0
            end = len(buf)
            while end - pos >= 5:
                length, kind = unpack(buf, pos)
                if length < 1 or length > MAX_FRAME:
                    sys.__stderr__.write("ppworker: bad frame length %d, exiting\n" % length)
                    self.flush()
                    os._exit(70)
                if end - pos - 4 < length:
                    break
                body = buf[pos + 5 : pos + 4 + length]
                pos += 4 + length
                if kind == 74 or kind == 79 or kind == 80 or kind == 77:  # 'J', 'O' (opaque), 'P' (blobs), 'M' (batch)
                    if kind == 77:
                        self.run_batch(body)
                    else:
                        self.run_job(body, kind == 79, kind == 80)
                    self.flush()
                    if self.retire:
                        self.send(ord("X"), b"\x01")
                        self.flush()
                        os._exit(0)
                elif kind == 66:  # 'B'
                    self.load_bundle(body[:32], body[32:])
                elif kind == 68:  # 'D'
                    self.bundles.pop(body[:32], None)
                elif kind == 76:  # 'L'
                    self.blobs[body[:32]] = body[32:]
                elif kind == 75:  # 'K'
                    self.blobs.pop(body[:32], None)
                    self.parsed.pop(body[:32], None)
                elif kind == 67:  # 'C'
                    self.check(body)
                    self.flush()
                else:
                    sys.__stderr__.write("ppworker: unknown frame type %r, exiting\n" % chr(kind))
                    self.flush()
                    os._exit(70)
            buf = buf[pos:]
        self.flush()


def main():
    # A worker keeps no descriptor it inherited by accident (a pipe of another child of
    # its parent would otherwise stay open, and that child's reader never see EOF).
    os.closerange(3, 1 << 16)
    # Started as ppworker (argv[0]), the interpreter learnt its own file from
    # PYTHONEXECUTABLE (Python 3.11+; older ones leave sys.executable empty). Jobs
    # inherit neither the variable nor the name.
    sys.executable = sys.executable or os.environ.get("PYTHONEXECUTABLE", "")
    os.environ.pop("PYTHONEXECUTABLE", None)
    try:  # ps -e and top show ppworker, as ps -f does (argv[0])
        with open("/proc/self/comm", "w") as comm:
            comm.write("ppworker")
    except OSError:
        pass
    # Frames use private copies of fds 0 and 1. User code that reads stdin reads
    # /dev/null, and C code that writes to fd 1 writes to stderr: neither can corrupt
    # the frame stream.
    rfd = os.dup(0)
    wfd = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull, "r")
    sys.stdout = sys.stderr
    try:
        Worker(rfd, wfd).serve()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        pass


if __name__ == "__main__":
    main()
