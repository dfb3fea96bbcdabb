import Foundation
import PPCore
import PPTesting
import PPWorkers
import Synchronization
import Testing

private let ids = IDAllocator()

/// Runs one call on `pool` and returns how it ended.
func run(_ pool: WorkerPool, _ bundle: FunctionBundle, _ args: String, timeout: Duration? = nil) async -> JobOutcome {
    await withCheckedContinuation { c in
        pool.submit(Job(id: ids.next(), bundle: bundle, arguments: JobArguments(jsonArray: Array(args.utf8)), timeout: timeout) {
            c.resume(returning: $0.outcome)
        })
    }
}

/// Runs many calls and returns their outcomes in order.
func runAll(_ pool: WorkerPool, _ bundle: FunctionBundle, _ args: [String], timeout: Duration? = nil) async -> [JobOutcome] {
    await withTaskGroup(of: (Int, JobOutcome).self) { group in
        for (i, a) in args.enumerated() {
            group.addTask { (i, await run(pool, bundle, a, timeout: timeout)) }
        }
        var out = [JobOutcome?](repeating: nil, count: args.count)
        for await (i, o) in group { out[i] = o }
        return out.map { $0! }
    }
}

func text(_ o: JobOutcome) -> String? {
    if case .success(let bytes) = o.result { return String(decoding: bytes, as: UTF8.self) }
    return nil
}

func failure(_ o: JobOutcome) -> JobError? {
    if case .failure(let e) = o.result { return e }
    return nil
}

let functions = """
    import os, sys, time, math, signal

    def square(x):
        return x * x

    def fib(n):
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return a

    def describe(d):
        return {"keys": sorted(d), "total": sum(d.values()), "pi": round(math.pi, 5)}

    def words(s):
        return [w.upper() for w in s.split()]

    def fail(x):
        return helper(x)

    def helper(x):
        raise ValueError("x was %r" % (x,))

    def chatty(x):
        print("out", x)
        print("err", x, file=sys.stderr)
        os.write(1, b"raw bytes on fd 1\\n")
        return sys.stdin.read()

    def killself(sig):
        os.kill(os.getpid(), sig)
        time.sleep(5)

    def exit_now(code):
        os._exit(code)

    def segfault():
        import ctypes
        ctypes.string_at(0)

    def hog():
        return bytearray(1 << 60)

    def sleep(s):
        time.sleep(s)
        return s

    def wait_for(path):
        for _ in range(6000):  # at most 60 s
            if os.path.exists(path):
                return "released"
            time.sleep(0.01)
        return "gave up"

    def not_json(kind):
        return {"set": {1}, "nan": float("nan"), "obj": object()}[kind]

    def pid():
        return os.getpid()

    def marked(x, path):
        # Job -1 says it started (a file), then sleeps a minute.
        if x == -1:
            open(path, "w").close()
            time.sleep(60)
        return x

    def batched(x):
        # How the worker called it: 'run_batch' inside a batch frame, else 'call'.
        if x == -1:
            os.kill(os.getpid(), signal.SIGKILL)
        if x % 5 == 1:
            print("job", x)
        if x % 7 == 3:
            raise ValueError("x was %d" % x)
        return [x * x, sys._getframe(1).f_code.co_name]
    """

func bundle(_ name: String) -> FunctionBundle {
    FunctionBundle(name: name, source: functions, filename: "functions.py")
}

/// Runs calls of `batched` queued with one submission, after enough tiny jobs that the
/// pool batches; returns their indices in the order they ended, and their outcomes.
func runQueued(_ pool: WorkerPool, _ args: [Int]) async -> (order: [Int], outcomes: [JobOutcome]) {
    await runQueued(pool, arguments: args.map { "[\($0)]" })
}

/// `runQueued` with each job's JSON arguments as given.
func runQueued(_ pool: WorkerPool, arguments args: [String]) async -> (order: [Int], outcomes: [JobOutcome]) {
    for i in 0..<30 { _ = await run(pool, bundle("batched"), "[\(i)]") }
    let ended = Mutex<[(Int, JobOutcome)]>([])
    return await withCheckedContinuation { c in
        pool.submit(
            contentsOf: args.enumerated().map { i, x in
                Job(id: ids.next(), bundle: bundle("batched"), arguments: JobArguments(jsonArray: Array(x.utf8))) { result in
                    let all = ended.withLock {
                        $0.append((i, result.outcome))
                        return $0.count == args.count ? $0 : nil
                    }
                    if let all { c.resume(returning: (all.map(\.0), all.sorted { $0.0 < $1.0 }.map(\.1))) }
                }
            }
        )
    }
}

@Suite("WorkerPool with real python3 workers")
struct WorkerPoolTests {
    @Test func embeddedScriptMatchesWorkerPy() throws {
        let file = try String(contentsOfFile: repositoryRoot + "/Sources/PPWorkers/Python/worker.py", encoding: .utf8)
        #expect(WorkerScript.source + "\n" == file, "run scripts/embed-worker after editing worker.py")
    }

    @Test func resultsEqualSerialPython() async throws {
        let pool = WorkerPool(configuration: .init(workers: 2))
        let squares = await runAll(pool, bundle("square"), (0..<50).map { "[\($0)]" })
        let fibs = await runAll(pool, bundle("fib"), (0..<30).map { "[\($0 * 7)]" })
        let described = await run(pool, bundle("describe"), #"[{"b": 2, "a": 1.5}]"#)
        let upper = await run(pool, bundle("words"), #"["héllo wörld \"q\""]"#)
        let serial = try runPython(
            functions + """

                import json
                print(json.dumps([square(i) for i in range(50)], separators=(",", ":")))
                print(json.dumps([fib(i * 7) for i in range(30)], separators=(",", ":")))
                print(json.dumps(describe({"b": 2, "a": 1.5}), separators=(",", ":"), ensure_ascii=False))
                print(json.dumps(words("héllo wörld \\"q\\""), separators=(",", ":"), ensure_ascii=False))
                """
        )
        #expect("[" + squares.compactMap(text).joined(separator: ",") + "]" == serial[0])
        #expect("[" + fibs.compactMap(text).joined(separator: ",") + "]" == serial[1])
        #expect(text(described) == serial[2])
        #expect(text(upper) == serial[3])
        await pool.shutdown()
    }

    @Test func exceptionCarriesTypeMessageAndTraceback() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let o = await run(pool, bundle("fail"), "[3]")
        let e = try #require(failure(o))
        #expect(e.code == .pythonException)
        #expect(e.pythonType == "ValueError")
        #expect(e.message == "x was 3")
        #expect(e.traceback.contains("File \"functions.py\", line 19, in fail"))
        #expect(e.traceback.contains("in helper"))
        #expect(e.traceback.contains("raise ValueError"))
        // The worker survives its user's exception.
        #expect(text(await run(pool, bundle("square"), "[4]")) == "16")
        await pool.shutdown()
    }

    @Test func outputIsCapturedAndStdinIsEmpty() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let o = await run(pool, bundle("chatty"), "[5]")
        #expect(text(o) == "\"\"")
        #expect(o.stdout == "out 5\n")
        #expect(o.stderr == "err 5\n")
        await pool.shutdown()
    }

    @Test func workerKilledMidJobIsReplaced() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let before = try #require(text(await run(pool, bundle("pid"), "[]")))
        // Killed from outside, mid-job.
        async let slow = run(pool, bundle("sleep"), "[30]")
        try await Task.sleep(for: .milliseconds(300))
        #expect(kill(Int32(before)!, SIGKILL) == 0)
        let e = try #require(failure(await slow))
        #expect(e.code == .workerDied)
        #expect(e.message.contains("killed by signal 9 (SIGKILL)"))
        // Killed by its own job, and ending by os._exit.
        let e2 = try #require(failure(await run(pool, bundle("killself"), "[9]")))
        #expect(e2.code == .workerDied && e2.message.contains("signal 9"))
        let e3 = try #require(failure(await run(pool, bundle("exit_now"), "[3]")))
        #expect(e3.code == .workerDied && e3.message.contains("exited with status 3"))
        let e4 = try #require(failure(await run(pool, bundle("segfault"), "[]")))
        #expect(e4.code == .workerDied && e4.message.contains("SIGSEGV"))
        // A replacement runs the next job.
        let after = try #require(text(await run(pool, bundle("pid"), "[]")))
        #expect(after != before)
        let stats = await pool.statistics()
        #expect(stats.workers.count == 5)
        #expect(stats.liveWorkers == 1)
        await pool.shutdown()
    }

    @Test func aWrapperScriptStartsOnlyTheFirstWorkers() async throws {
        // A wrapper on PATH (as a pyenv shim is) runs at every start it is used for; once
        // a worker named its real interpreter, replacements start from that file.
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let log = dir.path + "/starts"
        let wrapper = try dir.write("python-wrapper", "#!/bin/sh\necho start >> \(log)\nexec python3 \"$@\"\n")
        chmod(wrapper, 0o755)
        let pool = WorkerPool(configuration: .init(workers: 1, python: wrapper))
        for _ in 0..<3 {
            let e = try #require(failure(await run(pool, bundle("exit_now"), "[3]")))
            #expect(e.code == .workerDied)
        }
        #expect(text(await run(pool, bundle("square"), "[7]")) == "49")
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "start\n")
        await pool.shutdown()
    }

    @Test func memoryErrorRetiresTheWorker() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let before = await run(pool, bundle("pid"), "[]")
        let e = try #require(failure(await run(pool, bundle("hog"), "[]")))
        #expect(e.code == .pythonException, "\(e.code): \(e.message)")
        #expect(e.pythonType == "MemoryError")
        let after = await run(pool, bundle("pid"), "[]")
        #expect(text(after) != nil && text(after) != text(before))
        await pool.shutdown()
    }

    @Test func opaqueBytesGoInAndComeBackAsTheyAre() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let reverse = FunctionBundle(name: "rev", source: "def rev(b):\n    return bytes(reversed(b))\n")
        let notBytes = FunctionBundle(name: "size", source: "def size(b):\n    return len(b)\n")
        let input: [UInt8] = [0, 1, 2, 0xff, 10, 13]  // not JSON, not UTF-8
        func call(_ b: FunctionBundle) async -> JobOutcome {
            await withCheckedContinuation { c in
                pool.submit(Job(id: ids.next(), bundle: b, arguments: JobArguments(opaque: input)) { c.resume(returning: $0.outcome) })
            }
        }
        guard case .success(let bytes) = (await call(reverse)).result else { Issue.record("opaque job failed"); return }
        #expect(bytes == input.reversed())
        let e = try #require(failure(await call(notBytes)))
        #expect(e.code == .resultNotJSON && e.message.contains("must return bytes, not int"), "\(e)")
        await pool.shutdown()
    }

    @Test func queuedJobsBehindADyingWorkerStillRun() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        // Tiny jobs get pipelined; one of them kills the worker.
        var args = (0..<200).map { "[\($0)]" }
        args[100] = "[9]"
        let outcomes = await withTaskGroup(of: (Int, JobOutcome).self) { group in
            for (i, a) in args.enumerated() {
                let b = i == 100 ? bundle("killself") : bundle("square")
                group.addTask { (i, await run(pool, b, a)) }
            }
            var out = [Int: JobOutcome]()
            for await (i, o) in group { out[i] = o }
            return out
        }
        #expect(outcomes.count == 200)
        for i in 0..<200 where i != 100 {
            #expect(text(outcomes[i]!) == String(i * i))
        }
        #expect(failure(outcomes[100]!)?.code == .workerDied)
        await pool.shutdown()
    }

    @Test func aBatchOfTenThousandTinyJobsEndsInOrderWithItsOwnOutputsAndErrors() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let (order, outcomes) = await runQueued(pool, Array(0..<10_000))
        #expect(order == Array(0..<10_000))
        var batched = 0
        for (x, o) in outcomes.enumerated() {
            if x % 7 == 3 {
                let e = failure(o)
                #expect(e?.code == .pythonException && e?.message == "x was \(x)", "job \(x)")
            } else {
                let value = text(o) ?? ""
                #expect(value.hasPrefix("[\(x * x),"), "job \(x): \(value)")
                if value.hasSuffix("\"run_batch\"]") { batched += 1 }
            }
            #expect(o.stdout == (x % 5 == 1 ? "job \(x)\n" : ""), "job \(x)")
        }
        #expect(batched > 0)  // they did travel in batches
        await pool.shutdown()
    }

    @Test func eachJobOfABatchHasItsOwnArgumentsWhateverItsNeighbours() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        // The worker scans a batch's arguments in one string: two halves of an array in
        // two jobs must not join into one job's arguments. Spaces and keyword arguments
        // take the general path; so does a batch with non-ASCII text.
        let tail = ["[1, [2", "]]", " [6] ", #"{"x": 4}"#, "[8]"]
        let (_, outcomes) = await runQueued(pool, arguments: (0..<300).map { "[\($0)]" } + tail)
        for i in 0..<300 where i % 7 != 3 {
            #expect(text(outcomes[i])?.hasPrefix("[\(i * i),") == true, "job \(i)")
        }
        #expect(failure(outcomes[300])?.code == .badArguments)
        #expect(failure(outcomes[301])?.code == .badArguments)
        #expect(text(outcomes[302])?.hasPrefix("[36,") == true)
        #expect(text(outcomes[303])?.hasPrefix("[16,") == true)
        #expect(text(outcomes[304]) == #"[64,"run_batch"]"#)
        let (_, more) = await runQueued(pool, arguments: (0..<300).map { "[\($0)]" } + [#"{"x": 2, "é": 1}"#])
        for i in 0..<300 where i % 7 != 3 {
            #expect(text(more[i])?.hasPrefix("[\(i * i),") == true, "job \(i)")
        }
        #expect(failure(more[300])?.message.contains("'é'") == true, "\(more[300])")
        await pool.shutdown()
    }

    @Test func aWorkerKilledInsideABatchFailsOnlyTheJobThatRan() async throws {
        let pool = WorkerPool(configuration: .init(workers: 2))
        var args = Array(0..<2_000)
        args[1_000] = -1  // kills its worker
        let (_, outcomes) = await runQueued(pool, args)
        for (i, o) in outcomes.enumerated() where i != 1_000 && i % 7 != 3 {
            #expect(text(o)?.hasPrefix("[\(i * i),") == true, "job \(i)")
        }
        let e = try #require(failure(outcomes[1_000]))
        #expect(e.code == .workerDied && e.message.contains("killed by signal 9"), "\(e)")
        // One worker died in the batch; when the job was not the last one unanswered
        // there, its batch ran again job by job and it killed a second one.
        let stats = await pool.statistics()
        #expect((1...2).contains(stats.workers.filter { !$0.alive }.count))
        await pool.shutdown()
    }

    @Test func aJobStoppedInsideABatchIsKilledAndTheRestRun() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let marker = dir.path + "/started"
        func job(_ x: Int, _ done: @escaping @Sendable (JobOutcome) -> Void) -> Job {
            Job(id: ids.next(), bundle: bundle("marked"), arguments: try! JobArguments([x, marker])) { done($0.outcome) }
        }
        for i in 0..<30 { _ = await run(pool, bundle("marked"), "[\(i), \"\(marker)\"]") }  // short jobs: batches
        let ended = Mutex<[Int: JobOutcome]>([:])
        let all = AsyncStream.makeStream(of: Void.self)
        let jobs = (0..<200).map { i in
            job(i == 100 ? -1 : i) { o in
                if ended.withLock({ $0[i] = o; return $0.count }) == 200 { all.continuation.finish() }
            }
        }
        pool.submit(contentsOf: jobs)
        // Job 100 runs (inside a batch: its worker writes results at the batch's end).
        var waited = 0
        while !FileManager.default.fileExists(atPath: marker), waited < 200 {
            try await Task.sleep(for: .milliseconds(50))
            waited += 1
        }
        #expect(await pool.stop(jobID: jobs[100].id))
        for await _ in all.stream {}
        let outcomes = ended.withLock { $0 }
        #expect(failure(outcomes[100]!)?.code == .cancelled)
        for i in 0..<200 where i != 100 { #expect(text(outcomes[i]!) == "\(i)", "job \(i)") }
        // Its worker was killed (else the job would sleep on there for a minute).
        #expect(await pool.statistics().workers.filter { !$0.alive }.count == 1)
        await pool.shutdown()
    }

    @Test func timeoutKillsAndReplacesTheWorker() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let o = await run(pool, bundle("sleep"), "[30]", timeout: .milliseconds(300))
        let e = try #require(failure(o))
        #expect(e.code == .timeout)
        #expect(e.message.contains("timeout of 0.3 s"))
        #expect(text(await run(pool, bundle("sleep"), "[0.01]", timeout: .seconds(20))) == "0.01")
        await pool.shutdown()
    }

    @Test func resultsJSONCannotEncode() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        for kind in ["set", "nan", "obj"] {
            let e = try #require(failure(await run(pool, bundle("not_json"), "[\"\(kind)\"]")))
            #expect(e.code == .resultNotJSON)
            #expect(e.message.contains("JSON cannot encode"))
        }
        await pool.shutdown()
    }

    @Test func badBundlesAndArguments() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let syntax = FunctionBundle(name: "f", source: "def f(x:\n    return 1\n", filename: "broken.py")
        let e = try #require(await pool.check(syntax))
        #expect(e.code == .functionUnavailable)
        #expect(e.pythonType == "SyntaxError")
        #expect(e.traceback.contains("broken.py\", line 1"))
        let missing = try #require(await pool.check(bundle("nope")))
        #expect(missing.pythonType == "FunctionNotFound")
        #expect(missing.message.contains("defines no function named 'nope'"))
        #expect(missing.message.contains("square"))
        let importFails = try #require(await pool.check(FunctionBundle(name: "f", source: "def f(): pass\n", imports: ["no_such_module_xyz"])))
        #expect(importFails.pythonType == "ModuleNotFoundError")
        #expect(await pool.check(bundle("square")) == nil)
        // A job of a broken bundle ends with the load error; bad arguments are reported.
        #expect(failure(await run(pool, syntax, "[1]"))?.code == .functionUnavailable)
        #expect(failure(await run(pool, bundle("square"), "\"not a list\""))?.code == .badArguments)
        // A JSON object is the keyword arguments.
        #expect(failure(await run(pool, bundle("square"), "{\"x\": 3, \"y\": 2}"))?.message.contains("unexpected keyword argument 'y'") == true)
        #expect(failure(await run(pool, bundle("square"), "[1, 2]"))?.pythonType == "TypeError")
        await pool.shutdown()
    }

    @Test func resizeWhileJobsRun() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        async let outcomes = runAll(pool, bundle("sleep"), Array(repeating: "[0.03]", count: 100))
        try await Task.sleep(for: .milliseconds(100))
        pool.resize(to: 3)
        #expect(await pool.size() == 3)
        // Wait (bounded) until the new workers have taken jobs, then shrink while jobs run.
        var stats = await pool.statistics()
        for _ in 0..<200 where stats.workers.filter({ $0.jobsDone > 0 }).count < 3 {
            try await Task.sleep(for: .milliseconds(20))
            stats = await pool.statistics()
        }
        #expect(stats.workers.filter { $0.jobsDone > 0 }.count == 3, "\(stats.workers)")
        pool.resize(to: 1)
        #expect(await pool.size() == 1)
        let results = await outcomes
        #expect(results.allSatisfy { text($0) == "0.03" })
        stats = await pool.statistics()
        for _ in 0..<100 where stats.liveWorkers != 1 {
            try await Task.sleep(for: .milliseconds(50))
            stats = await pool.statistics()
        }
        #expect(stats.liveWorkers == 1)
        #expect(stats.workers.count == 3)
        #expect(stats.jobsDone == 100)
        await pool.shutdown()
    }

    @Test func manyBundlesPastTheCacheLimit() async throws {
        var configuration = WorkerPool.Configuration(workers: 1)
        configuration.bundleCacheBytes = 4_000
        let pool = WorkerPool(configuration: configuration)
        let bundles = (0..<6).map { i in
            FunctionBundle(name: "f", source: "# \(String(repeating: "x", count: 1_500))\ndef f(x):\n    return x + \(i)\n")
        }
        for round in 0..<3 {
            for (i, b) in bundles.enumerated() {
                #expect(text(await run(pool, b, "[\(round)]")) == String(round + i))
            }
        }
        await pool.shutdown()
    }

    @Test func missingInterpreterFailsJobsClearly() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1, python: "/nonexistent/python3"))
        let e = try #require(failure(await run(pool, bundle("square"), "[1]")))
        #expect(e.code == .workerDied)
        #expect(e.message.contains("cannot start '/nonexistent/python3'"))
        await pool.shutdown()
    }

    @Test func waitUntilReadyReportsAReadyWorkerOrWhyNoneStarts() async throws {
        let pool = WorkerPool(configuration: .init(workers: 2))
        try await pool.waitUntilReady()
        let stats = await pool.statistics()
        #expect(stats.pythonVersion != nil && stats.liveWorkers >= 1, "\(stats)")
        try await pool.waitUntilReady()  // ready stays ready
        await pool.shutdown()
        await #expect(throws: WorkerStartError.self) { try await pool.waitUntilReady() }

        let missing = WorkerPool(configuration: .init(workers: 2, python: "/nonexistent/python3"))
        do {
            try await missing.waitUntilReady()
            Issue.record("a pool without an interpreter said it was ready")
        } catch {
            #expect(error.reason.contains("cannot start '/nonexistent/python3'"), "\(error)")
        }
        // Asked again after the limit was reached: the same answer at once.
        await #expect(throws: WorkerStartError.self) { try await missing.waitUntilReady() }
        await missing.shutdown()

        let empty = WorkerPool(configuration: .init(workers: 0, python: "/nonexistent/python3"))
        try await empty.waitUntilReady()  // no workers: nothing to wait for
        await empty.shutdown()
    }

    @Test func shutdownEndsQueuedJobs() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let gate = try JobArguments(single: dir.path + "/go")
        let pool = WorkerPool(configuration: .init(workers: 1))
        _ = await run(pool, bundle("pid"), "[]")  // the worker is up
        // The first job holds the only worker until the test creates the gate file, so
        // the second stays queued however slowly this test is scheduled.
        async let running = run(pool, bundle("wait_for"), String(decoding: gate.json, as: UTF8.self))
        var stats = await pool.statistics()
        for _ in 0..<1000 where stats.running == 0 {
            try await Task.sleep(for: .milliseconds(10))
            stats = await pool.statistics()
        }
        async let queued = run(pool, bundle("wait_for"), String(decoding: gate.json, as: UTF8.self))
        for _ in 0..<1000 where stats.queued == 0 {
            try await Task.sleep(for: .milliseconds(10))
            stats = await pool.statistics()
        }
        #expect(stats.running == 1 && stats.queued == 1, "\(stats)")
        async let stopped: Void = pool.shutdown()
        // Shutdown ends the queued job at once, while the running one still holds the worker.
        let q = await queued
        #expect(failure(q)?.code == .shutdown, "\(q.result)")
        try dir.write("go", "")
        await stopped
        await pool.shutdown()  // a second call is harmless
        let r = await running
        #expect(text(r) == "\"released\"", "\(r.result)")
    }
}
