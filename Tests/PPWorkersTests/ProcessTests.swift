import Foundation
import PPCore
import PPTesting
import PPWorkers
import Synchronization
import Testing

private let ids = IDAllocator(start: 1 << 40)

let processFunctions = """
    import os, signal, time

    def alarm():
        def ring(signum, frame):
            raise RuntimeError("alarm fired after 1 s")
        signal.signal(signal.SIGALRM, ring)
        signal.alarm(1)
        time.sleep(60)
        return "no alarm"

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split(":", 1)[1].strip()

    def group():
        return [os.getpid(), os.getpgrp()]

    def nap(s):
        time.sleep(s)
        return s

    def square(x):
        return x * x

    def fork_and_record(path):
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        # Each pid with its start time (/proc/PID/stat field 22): pids are reused
        # quickly under a loaded suite, and a reused one is another process.
        def start(pid):
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[19]
        with open(path + ".tmp", "w") as f:
            f.write("%d:%s %d:%s" % (os.getpid(), start(os.getpid()), child, start(child)))
        os.rename(path + ".tmp", path)
        return "forked"
    """

func processBundle(_ name: String) -> FunctionBundle {
    FunctionBundle(name: name, source: processFunctions, filename: "processes.py")
}

/// Every outcome of one job, to check that it ends exactly once.
final class Outcomes: Sendable {
    let all = Mutex<[UInt64: [JobOutcome]]>([:])

    /// Submits a call and returns its id.
    func submit(_ pool: WorkerPool, _ name: String, _ args: String) -> UInt64 {
        let id = ids.next()
        pool.submit(Job(id: id, bundle: processBundle(name), arguments: JobArguments(jsonArray: Array(args.utf8))) { [self] o in
            self.all.withLock { $0[id, default: []].append(o.outcome) }
        })
        return id
    }

    func of(_ id: UInt64) -> [JobOutcome] { self.all.withLock { $0[id] ?? [] } }

    /// Waits (at most 60 s) until job `id` has ended.
    func wait(_ id: UInt64) async throws {
        for _ in 0..<3000 where self.of(id).isEmpty { try await Task.sleep(for: .milliseconds(20)) }
    }
}

@Suite("Worker processes: signals, groups, stop, start failures")
struct ProcessTests {
    @Test func signalsWorkInJobs() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        #expect(text(await run(pool, processBundle("status"), "[\"SigBlk\"]")) == "\"0000000000000000\"")
        let e = try #require(failure(await run(pool, processBundle("alarm"), "[]")))
        #expect(e.code == .pythonException)
        #expect(e.message.contains("alarm fired after 1 s"), "\(e)")
        // Each worker leads its own process group.
        let pg = try #require(text(await run(pool, processBundle("group"), "[]")))
        let ids = pg.dropFirst().dropLast().split(separator: ",").map { Int32($0)! }
        #expect(ids.count == 2 && ids[0] == ids[1] && ids[0] != getpgrp())
        await pool.shutdown()
    }

    @Test func stoppingARunningJobReplacesItsWorker() async throws {
        let pool = WorkerPool(configuration: .init(workers: 1))
        let outcomes = Outcomes()
        let before = try #require(text(await run(pool, processBundle("group"), "[]")))
        // Tiny jobs first: the pool then keeps several jobs in the worker's pipe.
        _ = await runAll(pool, processBundle("square"), (0..<50).map { "[\($0)]" })
        let running = outcomes.submit(pool, "nap", "[60]")
        let stoppedBehind = outcomes.submit(pool, "square", "[7]")
        let behind = outcomes.submit(pool, "square", "[3]")
        var stats = await pool.statistics()
        for _ in 0..<3000 where stats.running == 0 {
            try await Task.sleep(for: .milliseconds(20))
            stats = await pool.statistics()
        }
        // Behind the running job (in its pipe, or queued): ends at once.
        #expect(await pool.stop(jobID: stoppedBehind))
        #expect(outcomes.of(stoppedBehind).count == 1)
        #expect(failure(outcomes.of(stoppedBehind)[0])?.code == .cancelled)
        // The running job: ends cancelled, its worker is killed and replaced.
        #expect(await pool.stop(jobID: running))
        try await outcomes.wait(behind)
        let e = try #require(outcomes.of(running).first.flatMap(failure))
        #expect(e.code == .cancelled)
        #expect(e.message.contains("cancelled while it ran"), "\(e.message)")
        #expect(outcomes.of(behind).first.flatMap(text) == "9")
        let after = try #require(text(await run(pool, processBundle("group"), "[]")))
        #expect(after != before)
        #expect(await pool.stop(jobID: running) == false)  // it ended already
        let stats2 = await pool.statistics()
        #expect(stats2.workers.contains { $0.exit == .signaled(SIGKILL) }, "\(stats2.workers)")
        await pool.shutdown()
        // Exactly once each, even after every worker has been reaped.
        #expect(outcomes.of(running).count == 1)
        #expect(outcomes.of(stoppedBehind).count == 1)
        #expect(outcomes.of(behind).count == 1)
        // Statistics after the shutdown are the last ones (the pool's loop is gone).
        #expect(await pool.statistics().liveWorkers == 0)
    }

    /// A program that calls exit() with workers running leaves nothing: the atexit
    /// handler kills every worker's process group, a job's forked child included (the
    /// parent-death signal alone would end only the worker). The test runs itself again
    /// as that program.
    @Test func exitOfALibraryProgramLeavesNothing() async throws {
        let env = ProcessInfo.processInfo.environment
        if let path = env["PP_TEST_EXIT_PROBE"] {
            // The child: a pool whose job leaves a process behind, then exit().
            let pool = WorkerPool(configuration: .init(workers: 1))
            _ = await run(pool, processBundle("fork_and_record"), "[\"\(path)\"]")
            exit(0)
        }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let record = dir.path + "/pids"
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let probe = try BackgroundProcess(
            exe,
            ["--testing-library", "swift-testing", "--filter", "ProcessTests/exitOfALibraryProgramLeavesNothing"],
            environment: ["PP_TEST_EXIT_PROBE": record]
        )
        var left: [ProcessIdentity] = []
        defer {
            probe.stop()
            for p in left { p.killIfRunning() }
        }
        #expect(probe.wait() == 0, "\(probe.stderr)")
        left = ((try? String(contentsOfFile: record, encoding: .utf8)) ?? "").split(separator: " ").compactMap { entry in
            let parts = entry.split(separator: ":")
            guard parts.count == 2, let pid = Int32(parts[0]), let start = UInt64(parts[1]) else { return nil }
            return ProcessIdentity(pid: pid, startTime: start)
        }
        #expect(left.count == 2, "\(probe.stderr)")
        #expect(waitFor(seconds: 3) { left.allSatisfy { !$0.isRunning } }, "left running: \(left.filter(\.isRunning))")
    }

    @Test func startFailuresBackOffAndRecover() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let real = try #require(try runPython("import sys; print(sys.executable)").first)
        let wrapper = dir.path + "/python-wrapper"
        let pool = WorkerPool(configuration: .init(workers: 1, python: wrapper))
        // No interpreter yet: the queued job fails with the reason.
        let e = try #require(failure(await run(pool, processBundle("square"), "[2]")))
        #expect(e.code == .workerDied)
        #expect(e.message.contains("cannot start '\(wrapper)': No such file or directory"), "\(e.message)")
        // Once the interpreter is there, a new submission runs.
        try dir.write("python-wrapper.tmp", "#!/bin/sh\nexec '\(real)' \"$@\"\n")
        chmod(dir.path + "/python-wrapper.tmp", 0o755)
        rename(dir.path + "/python-wrapper.tmp", wrapper)
        #expect(text(await run(pool, processBundle("square"), "[3]")) == "9")

        // A pool with a worker that cannot start more keeps its worker busy, retries
        // with backoff, and grows when starting works again.
        rename(wrapper, dir.path + "/python-wrapper.off")
        pool.resize(to: 2)
        #expect(text(await run(pool, processBundle("square"), "[4]")) == "16")
        rename(dir.path + "/python-wrapper.off", wrapper)
        var stats = await pool.statistics()
        for _ in 0..<3000 where stats.liveWorkers < 2 {
            try await Task.sleep(for: .milliseconds(20))
            stats = await pool.statistics()
        }
        #expect(stats.liveWorkers == 2, "\(stats.workers)")
        await pool.shutdown()
    }
}
