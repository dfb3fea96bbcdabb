import Foundation
import PPTesting
import Testing

/// The Python package (`python/parallelpython`) against the real engine (`pprun
/// engine`) and real workers: its own unittest suite, which compares the Executor with
/// concurrent.futures.ProcessPoolExecutor on the same calls.
@Suite("Python package on the engine")
struct PythonPackageTests {
    @Test func executorSuitePasses() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let r = try runProcess(
            "/usr/bin/env",
            ["python3", "-m", "unittest", "discover", "-s", root + "/python/tests", "-v"],
            environment: ["PP_ENGINE": builtCommand("pprun"), "PP_BROADCAST": "127.255.255.255", "PP_DNSSD": "off"],
            directory: root
        )
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("OK"), "\(r.stderr)")
    }
}

/// The package with nodes: real ppnodes on loopback, the engine linking them over TLS.
@Suite("Python package with nodes", .serialized)
struct PythonPackageNodeTests {
    static let secret = "python-package-secret-0123456789"
    static var root: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    func runPython(_ script: String, in dir: TemporaryDirectory, arguments: [String] = []) throws -> ProcessResult {
        let file = try dir.write("main.py", script)
        return try runProcess(
            "/usr/bin/env",
            ["python3", file] + arguments,
            environment: [
                "PP_ENGINE": builtCommand("pprun"), "PP_BROADCAST": "127.255.255.255", "PP_DNSSD": "off",
                "PP_SECRET": Self.secret, "PYTHONPATH": Self.root + "/python",
            ],
            directory: dir.path
        )
    }

    @Test func aHelperModuleAndPackageNextToTheScriptAreUsedOnANode() throws {
        let node = try NodeProcess(secret: Self.secret)
        defer { node.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try dir.write("helper.py", "FACTOR = 7\n\ndef scale(x):\n    return x * FACTOR\n")
        try FileManager.default.createDirectory(atPath: dir.path + "/tools", withIntermediateDirectories: true)
        try dir.write("tools/__init__.py", "from .plus import plus\n")
        try dir.write("tools/plus.py", "def plus(x):\n    return x + 1\n")
        let r = try runPython(
            """
            import os, shutil, sys
            import helper
            import tools
            from parallelpython import Executor

            def job(x):
                return tools.plus(helper.scale(x)) - 1, os.getpid()

            if __name__ == "__main__":
                with Executor(workers=0, nodes=[sys.argv[1]], discover=False) as ex:
                    # The helper is gone from disk: the node can only use the source that
                    # travelled with the job.
                    os.remove(helper.__file__)
                    shutil.rmtree(os.path.dirname(tools.__file__))
                    results = list(ex.map(job, range(20)))
                    print([v for v, _ in results])
                    print(sorted(ex.nodes()))
            """,
            in: dir,
            arguments: [node.address]
        )
        #expect(r.status == 0, "\(r.stderr)")
        let expected: String = "[" + (0..<20).map { String($0 * 7) }.joined(separator: ", ") + "]"
        #expect(r.lines.first == expected, "\(r.stdout)")
        #expect(r.lines.dropFirst().first == "['\(node.address)']", "\(r.stdout)")
    }

    @Test func cancellingARunningJobStopsItOnTheNode() throws {
        let node = try NodeProcess(secret: Self.secret)
        defer { node.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let r = try runPython(
            """
            import os, sys, time

            def announce_then_sleep(path):
                with open(path + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.rename(path + ".tmp", path)
                time.sleep(60)

            def alive(pid):
                try:
                    with open("/proc/%d/stat" % pid) as f:
                        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
                except OSError:
                    return False

            if __name__ == "__main__":
                from parallelpython import Executor
                path = os.path.abspath("started")
                with Executor(workers=0, nodes=[sys.argv[1]], discover=False) as ex:
                    future = ex.submit(announce_then_sleep, path)
                    deadline = time.monotonic() + 30
                    while not os.path.exists(path) and time.monotonic() < deadline:
                        time.sleep(0.02)
                    worker = int(open(path).read())
                    print("cancelled", future.cancel())
                    deadline = time.monotonic() + 20
                    while alive(worker) and time.monotonic() < deadline:
                        time.sleep(0.02)
                    print("worker alive", alive(worker))
                    print("next", ex.submit(abs, -5).result())
            """,
            in: dir,
            arguments: [node.address]
        )
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == ["cancelled True", "worker alive False", "next 5"], "\(r.stdout) \(r.stderr)")
    }

    @Test func numpyArraysAndUserClassesTravelThroughANode() throws {
        let node = try NodeProcess(secret: Self.secret)
        defer { node.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let r = try runPython(
            """
            import sys
            from parallelpython import Executor
            try:
                import numpy
            except ImportError:
                numpy = None

            class Box:
                def __init__(self, v):
                    self.v = v

            def grow(box, arr):
                return Box(box.v + 1), (arr * 2 if arr is not None else None)

            if __name__ == "__main__":
                with Executor(workers=0, nodes=[sys.argv[1]], discover=False) as ex:
                    arr = numpy.arange(6).reshape(2, 3) if numpy is not None else None
                    box, doubled = ex.submit(grow, Box(41), arr).result()
                    print(type(box).__name__, box.v)
                    print("numpy absent" if numpy is None else (type(doubled).__name__, doubled.tolist()))
            """,
            in: dir,
            arguments: [node.address]
        )
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines.first == "Box 42", "\(r.stdout)")
        let second = r.lines.dropFirst().first ?? ""
        #expect(second == "numpy absent" || second == "('ndarray', [[0, 2, 4], [6, 8, 10]])", "\(r.stdout)")
    }

    @Test func largeArgumentsAndFunctionsMoveOncePerNode() throws {
        let a = try NodeProcess(secret: Self.secret), b = try NodeProcess(secret: Self.secret)
        defer { a.stop(); b.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let r = try runPython(
            """
            import functools, os, pickle, sys
            from parallelpython import Executor

            def measure(big, i, tail=b""):
                return len(big) * 1000 + i + len(tail)

            def pick(table, i):
                return table[i]

            if __name__ == "__main__":
                big = os.urandom(20 << 20)
                size = len(pickle.dumps(big, protocol=5))
                with Executor(workers=0, nodes=sys.argv[1:], discover=False) as ex:
                    # 200 jobs, each pickled on its own (different i), sharing one argument.
                    futures = [ex.submit(measure, big, i) for i in range(200)]
                    assert [f.result() for f in futures] == [len(big) * 1000 + i for i in range(200)]
                    # A large keyword argument, next to a small positional one.
                    assert ex.submit(measure, b"ab", 1, tail=big).result() == 2001 + len(big)
                    nodes = ex.nodes()
                    print(sorted((s["blobs_received"], s["blob_bytes_received"] - size, s["jobs_received"] > 0) for s in nodes.values()))
                    # A function that carries a large value (a partial) moves once too.
                    table = list(range(300_000))
                    assert list(ex.map(functools.partial(pick, table), range(100))) == list(range(100))
                    print(sorted(s["blobs_received"] for s in ex.nodes().values()))
                    why = ex.nodes(why=True)
                    print(sorted((v["status"], "blobs_received" in v) for v in why.values()))
            """,
            in: dir,
            arguments: [a.address, b.address]
        )
        #expect(r.status == 0, "\(r.stderr)")
        // Each node received the 20 MiB argument once (its pickle, exactly), and ran jobs.
        #expect(r.lines.first == "[(1, 0, True), (1, 0, True)]", "\(r.stdout)")
        // The partial's pickle: one more blob on each node that ran its jobs (at least one).
        let after = r.lines.dropFirst().first ?? ""
        #expect(["[2, 2]", "[1, 2]"].contains(after), "\(r.stdout)")
        #expect(r.lines.dropFirst(2).first == "[('usable', True), ('usable', True)]", "\(r.stdout)")
    }

    @Test func aNodeKilledMidMapLosesNothing() throws {
        let a = try NodeProcess(secret: Self.secret), b = try NodeProcess(secret: Self.secret)
        defer { a.stop(); b.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let started = dir.path + "/started"
        Thread {
            // Kill b once the map is under way.
            for _ in 0..<3000 where !FileManager.default.fileExists(atPath: started) { usleep(10_000) }
            usleep(300_000)
            b.signal(SIGKILL)
        }.start()
        let r = try runPython(
            """
            import sys, time
            from parallelpython import Executor

            def slow(x):
                time.sleep(0.02)
                return x * x

            if __name__ == "__main__":
                with Executor(workers=0, nodes=sys.argv[1:3], discover=False) as ex:
                    open(sys.argv[3], "w").close()
                    values = list(ex.map(slow, range(200)))
                    print(values == [x * x for x in range(200)])
            """,
            in: dir,
            arguments: [a.address, b.address, started]
        )
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == ["True"], "\(r.stdout) \(r.stderr)")
        #expect(b.process.terminationReason == .uncaughtSignal)
    }
}
