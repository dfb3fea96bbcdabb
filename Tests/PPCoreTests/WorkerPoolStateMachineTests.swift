import NIOCore
import PPCore
import Testing

// The worker pool's logic as values: no processes, no pipes, no clock. Each test feeds
// the machine events (with explicit times) and reads the actions it returns, written
// as short lines by `describe` ("spawn 1", "write 1: B(square) J7", "kill 1",
// "complete 7: timeout: ...").

private typealias Machine = WorkerPoolStateMachine
private typealias Action = WorkerPoolStateMachine.Action

private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
private func at(_ ms: Int64) -> NIODeadline { t0 + .milliseconds(ms) }

private let square = FunctionBundle(name: "square", source: "def square(x):\n    return x * x\n")
private let cube = FunctionBundle(name: "cube", source: "def cube(x):\n    return x * x * x\n")
private func big(_ name: String) -> FunctionBundle {
    FunctionBundle(name: name, source: "# \(String(repeating: "x", count: 1_500))\ndef \(name)(x):\n    return x\n")
}
private let bundleA = big("a")
private let bundleB = big("b")
private let bundleC = big("c")
private let bundleNames: [[UInt8]: String] = Dictionary(
    uniqueKeysWithValues: [square, cube, bundleA, bundleB, bundleC].map { ($0.digest.bytes, $0.name) }
)

private let hello = WorkerMessage.hello(ByteBuffer(string: #"{"pid":1,"python":"3.12.1","implementation":"CPython"}"#))

private func job(_ id: UInt64, _ bundle: FunctionBundle = square, timeout: Duration? = nil, kind: Job.Kind = .call) -> Job {
    Job(id: id, bundle: bundle, arguments: JobArguments(jsonArray: Array("[\(id)]".utf8)), timeout: timeout, kind: kind) { _ in }
}

private func result(_ id: UInt64, ns: UInt64 = 1_000_000, code: JobError.Code? = nil) -> WorkerMessage {
    .result(JobResult(id: id, code: code, nanoseconds: ns, payload: Array("\(id)".utf8), executor: ""))
}

private func text(_ t: TimeAmount) -> String {
    t.nanoseconds % 1_000_000_000 == 0 ? "\(t.nanoseconds / 1_000_000_000)s" : "\(t.nanoseconds / 1_000_000)ms"
}

/// The frames of a write: `B(name)`, `D(name)`, `J<id>`, `O<id>`, `C<id>`, `M(<id> <id> ...)`.
private func frames(_ buffer: ByteBuffer) -> String {
    var b = buffer
    var parts: [String] = []
    while let length = b.readInteger(as: UInt32.self), var body = b.readSlice(length: Int(length)) {
        let type = Character(UnicodeScalar(body.readInteger(as: UInt8.self)!))
        switch type {
        case "B", "D": parts.append("\(type)(\(bundleNames[body.readBytes(length: 32)!] ?? "?"))")
        case "L", "K": parts.append("\(type)(\(body.readBytes(length: 32)!.first!))")
        case "M":
            body.moveReaderIndex(forwardBy: 33)
            let ids = (0..<body.readInteger(as: UInt32.self)!).map { _ in
                let id = body.readInteger(as: UInt64.self)!
                body.moveReaderIndex(forwardBy: 4)  // the length; the arguments follow all ids
                return "\(id)"
            }
            parts.append("M(\(ids.joined(separator: " ")))")
        default: parts.append("\(type)\(body.readInteger(as: UInt64.self)!)")
        }
    }
    return parts.joined(separator: " ")
}

private func describe(_ actions: [Action], logs: Bool = false) -> [String] {
    actions.compactMap { action in
        switch action {
        case .spawnWorker(let index): return "spawn \(index)"
        case .write(let index, let buffer): return "write \(index): \(frames(buffer))"
        case .closeStdin(let index): return "close stdin \(index)"
        case .killProcessGroup(let index): return "kill \(index)"
        case .checkProcess(let index, let after): return after == .zero ? "check \(index)" : "check \(index) in \(text(after))"
        case .reap(let index): return "reap \(index)"
        case .scheduleRetry(let after): return "retry in \(text(after))"
        case .cancelRetry: return "cancel retry"
        case .complete(let job, let result):
            guard result.id == job.id, result.executor == "test" else { return "complete \(job.id): wrong id or executor" }
            guard case .failure(let error) = result.outcome.result else { return "complete \(job.id): ok" }
            return "complete \(job.id): \(error.code): \(error.message)"
        case .answerReadyWaiters(let failure): return failure.map { "not ready: \($0)" } ?? "ready"
        case .scheduleShutdownKill(let after): return "kill all in \(text(after))"
        case .finishShutdown: return "finished"
        case .log(let level, let message, let metadata):
            guard logs else { return nil }
            return "log \(level): \(message)" + (metadata["error"].map { ": \($0)" } ?? "")
        }
    }
}

private func configuration(depth: Int = 32, cacheBytes: Int = 64 << 20) -> Machine.Configuration {
    Machine.Configuration(name: "test", python: "python3", maxPipelineDepth: depth, bundleCacheBytes: cacheBytes, shutdownGrace: .seconds(5))
}

/// A machine whose `n` workers (indices 1...n, pids 101...) are spawned, attached and
/// ready.
private func readyPool(_ n: Int, _ configuration: Machine.Configuration = configuration()) -> Machine {
    var m = Machine(configuration: configuration)
    var actions = m.start(target: n)
    while case .spawnWorker(let index)? = actions.first {
        actions = m.workerSpawned(index: index, pid: 100 + Int32(index)).filter { if case .log = $0 { false } else { true } }
        _ = m.workerAttached(index: index)
    }
    for index in 1...n { _ = m.received(hello, from: index, now: t0) }
    return m
}

/// Runs `count` jobs of 10 µs one after another, so that the moving average of job
/// time falls and pipes fill deeply.
private func warmUp(_ m: inout Machine, jobs count: Int = 30, firstID: UInt64 = 10_000) {
    for id in firstID..<(firstID + UInt64(count)) {
        for case .write(let index, _) in m.submit([job(id)], now: t0) {
            _ = m.received(result(id, ns: 10_000), from: index, now: t0)
        }
    }
}

@Suite("Worker pool state machine")
struct WorkerPoolStateMachineTests {
    // MARK: Starting and sizing

    @Test func startSpawnsWorkersOneAfterAnotherUntilTheTarget() {
        var m = Machine(configuration: configuration())
        #expect(describe(m.start(target: 3)) == ["spawn 1"])
        #expect(m.whenReady().isEmpty)  // waits
        #expect(describe(m.workerSpawned(index: 1, pid: 101)) == ["spawn 2"])
        #expect(describe(m.workerSpawned(index: 2, pid: 102)) == ["spawn 3"])
        #expect(describe(m.workerSpawned(index: 3, pid: 103), logs: true) == ["log debug: worker starting"])
        for index in 1...3 { #expect(m.workerAttached(index: index).isEmpty) }
        #expect(m.statistics.workers.map(\.pid) == [101, 102, 103])
        #expect(m.whenReady().isEmpty)
        #expect(describe(m.received(hello, from: 2, now: t0)) == ["ready"])
        #expect(describe(m.whenReady()) == ["ready"])
        #expect(m.pythonVersion == "3.12.1")
        #expect(m.statistics.workers.map(\.pid) == [101, 102, 103])
        #expect(m.statistics.workers.allSatisfy { $0.exit == nil })

        var empty = Machine(configuration: configuration())
        #expect(empty.start(target: 0).isEmpty)
        #expect(describe(empty.whenReady()) == ["ready"])
    }

    @Test func resizeDownRetiresTheLeastBusyAndUpSpawns() {
        var m = readyPool(3)
        // One job per pipe (jobs are assumed long at first): workers 1 and 2 are busy.
        #expect(describe(m.submit([job(1), job(2)], now: t0)) == ["write 1: B(square) J1", "write 2: B(square) J2"])
        #expect(describe(m.resize(to: 1, now: t0)) == ["close stdin 3", "close stdin 1"])
        #expect(m.target == 1)
        // Retired workers take no more jobs.
        #expect(describe(m.received(result(1), from: 1, now: at(5)) + m.readComplete(now: at(5))) == ["complete 1: ok"])
        #expect(m.statistics.queued == 0)
        #expect(describe(m.submit([job(3)], now: at(6))).isEmpty)
        #expect(m.statistics.queued == 1)
        // Up again: new workers start; a starting worker is retired before a busy one.
        #expect(describe(m.resize(to: 3, now: at(7))) == ["spawn 4"])
        #expect(describe(m.workerSpawned(index: 4, pid: 104)) == ["spawn 5"])
        #expect(describe(m.workerSpawned(index: 5, pid: 105)).isEmpty)
        #expect(describe(m.resize(to: 2, now: at(8))) == [])  // 4 and 5 are not attached yet: nothing to close
        #expect(describe(m.workerAttached(index: 4)) == ["close stdin 4"])
        #expect(describe(m.workerAttached(index: 5)).isEmpty)
        #expect(describe(m.received(hello, from: 5, now: at(9)) + m.readComplete(now: at(9))) == ["ready", "write 5: B(square) J3"])
    }

    // MARK: Jobs and pipelining

    @Test func pipelineDepthFollowsJobTimes() {
        var m = readyPool(1)
        // Jobs are assumed to take 10 ms until some end: one in the pipe.
        #expect(describe(m.submit((1...40).map { job($0) }, now: t0)) == ["write 1: B(square) J1"])
        var id: UInt64 = 1
        var largestWrite = 1
        for _ in 0..<30 {  // 10 µs jobs: the pipe fills up
            _ = m.received(result(id, ns: 10_000), from: 1, now: t0)
            for case .write(_, let buffer) in m.readComplete(now: t0) {
                largestWrite = max(largestWrite, frames(buffer).split(separator: " ").count)
            }
            id += 1
        }
        #expect(largestWrite > 1)
        #expect(m.statistics.running == 10)  // every job left is in the pipe now
        #expect(m.statistics.queued == 0)

        // Never more than maxPipelineDepth in one pipe.
        var limited = readyPool(1, configuration(depth: 4))
        warmUp(&limited)
        #expect(describe(limited.submit((1...10).map { job($0) }, now: t0)) == ["write 1: M(1 2 3 4)"])
        #expect(limited.statistics.running == 4)
        // Slow jobs (50 ms) bring the depth back to one: nothing is written until the
        // pipe holds fewer than one job.
        for id in UInt64(1)...3 {
            #expect(describe(limited.received(result(id, ns: 50_000_000), from: 1, now: t0) + limited.readComplete(now: t0)) == ["complete \(id): ok"])
        }
        #expect(describe(limited.received(result(4, ns: 50_000_000), from: 1, now: t0) + limited.readComplete(now: t0)) == ["complete 4: ok", "write 1: J5"])
    }

    @Test func jobsGoToTheLeastLoadedWorkers() {
        var m = readyPool(2)
        warmUp(&m)  // on worker 1 alone: each warm-up job ends before the next comes
        // Each gets its share of the queue, in a batch.
        #expect(describe(m.submit([job(1), job(2), job(3)], now: t0)) == ["write 1: M(1 2)", "write 2: B(square) J3"])
        #expect(describe(m.submit([job(4), job(5), job(6)], now: t0)) == ["write 2: M(4 5)", "write 1: J6"])
    }

    @Test func bundlesLoadOncePerWorkerAndTheLeastRecentlyUsedIsDropped() {
        // Room for square (the warm-up's), a and b; c does not fit with them.
        let capacity = square.spec.count + bundleA.spec.count + bundleB.spec.count
        var m = readyPool(1, configuration(cacheBytes: capacity))
        warmUp(&m)
        #expect(describe(m.submit([job(1, bundleA)], now: t0)) == ["write 1: B(a) J1"])
        _ = m.received(result(1, ns: 10_000), from: 1, now: t0)
        #expect(describe(m.submit([job(2, bundleA)], now: t0)) == ["write 1: J2"])
        _ = m.received(result(2, ns: 10_000), from: 1, now: t0)
        // c needs room: square (least recently used) goes; a and b stay because jobs in
        // the pipe need them, though the cache is then over its limit.
        #expect(describe(m.submit([job(3, bundleB), job(4, bundleA), job(5, bundleC)], now: t0)) == ["write 1: B(b) J3 J4 D(square) B(c) J5"])
        for id in UInt64(3)...5 { _ = m.received(result(id, ns: 10_000), from: 1, now: t0) }
        // With the pipe empty, the least recently used bundle makes room for square.
        #expect(describe(m.submit([job(6)], now: t0)) == ["write 1: D(b) B(square) J6"])

        // Each worker loads a bundle itself.
        var two = readyPool(2)
        #expect(describe(two.submit([job(1, cube), job(2, cube)], now: t0)) == ["write 1: B(cube) J1", "write 2: B(cube) J2"])
    }

    @Test func blobsLoadOncePerWorkerAndTheLeastRecentlyUsedIsDropped() throws {
        // Room for one blob of 100 bytes per worker.
        var m = readyPool(2, Machine.Configuration(name: "test", python: "python3", blobCacheBytes: 150))
        func withBlob(_ id: UInt64, _ fill: Character) throws -> Job {
            var digester = BlobDigester()
            let arguments = try JobArguments([String(repeating: fill, count: 98), Int(id)]).movingLarge(above: 50, digester: &digester)
            return Job(id: id, bundle: square, arguments: arguments) { _ in }
        }
        let (x1, x2, x3, y4) = (try withBlob(1, "x"), try withBlob(2, "x"), try withBlob(3, "x"), try withBlob(4, "y"))
        let (x, y) = (x1.arguments.blobs[0].digest.bytes[0], y4.arguments.blobs[0].digest.bytes[0])
        // Each worker loads the blob once, before its first job that needs it ('P').
        #expect(describe(m.submit([x1, x2], now: t0)) == ["write 1: B(square) L(\(x)) P1", "write 2: B(square) L(\(x)) P2"])
        _ = m.received(result(1), from: 1, now: t0)
        #expect(describe(m.submit([x3], now: t0)) == ["write 1: P3"])
        _ = m.received(result(3), from: 1, now: t0)
        // Another blob does not fit beside it: the unneeded one is dropped first.
        #expect(describe(m.submit([y4], now: t0)) == ["write 1: K(\(x)) L(\(y)) P4"])
    }

    @Test func checksAnswerWhetherTheBundleLoaded() {
        var m = readyPool(1)
        #expect(describe(m.submit([job(1, kind: .check)], now: t0)) == ["write 1: B(square) C1"])
        #expect(describe(m.received(.checkReply(id: 1, error: nil), from: 1, now: t0)) == ["complete 1: ok"])
        _ = m.submit([job(2, kind: .check)], now: t0)
        let error = ByteBuffer(string: #"{"type":"SyntaxError","message":"invalid syntax","traceback":""}"#)
        #expect(describe(m.received(.checkReply(id: 2, error: error), from: 1, now: t0)) == ["complete 2: function unavailable: invalid syntax"])
    }

    // MARK: Timeouts, deaths, stops

    @Test func aJobPastItsTimeoutGetsItsWorkerKilled() {
        var m = readyPool(1)
        #expect(describe(m.submit([job(1), job(2, timeout: .milliseconds(300))], now: t0)) == ["write 1: B(square) J1"])
        // Job 2's time starts when it reaches the worker, not when it was queued.
        #expect(describe(m.received(result(1), from: 1, now: at(1_000)) + m.readComplete(now: at(1_000))) == ["complete 1: ok", "write 1: J2"])
        #expect(describe(m.tick(now: at(1_300))) == ["check 1"])
        #expect(describe(m.tick(now: at(1_301))) == ["kill 1", "check 1 in 2ms", "check 1"])
        #expect(describe(m.tick(now: at(1_350))) == ["check 1"])  // killed once
        #expect(describe(m.stdoutClosed(worker: 1)) == ["kill 1", "check 1", "check 1 in 2ms"])
        #expect(describe(m.processEnded(worker: 1, now: at(1_352))) == ["reap 1"])
        #expect(describe(m.processEnded(worker: 1, now: at(1_353))).isEmpty)  // reaped once
        #expect(
            describe(m.workerReaped(worker: 1, status: .signaled(9), now: at(1_353)), logs: true) == [
                "log debug: worker ended during a job",
                "complete 2: timeout: the job ran longer than its timeout of 0.3 s; its worker (pid 101) was killed and replaced",
                "spawn 2",
            ]
        )
        #expect(m.statistics.workers.map(\.exit) == [.signaled(9)])  // the replacement is not a process yet
    }

    @Test func aWorkerThatDiesMidJobFailsItsHeadJobAndRequeuesTheRest() {
        var m = readyPool(1)
        #expect(describe(m.submit([job(3), job(4)], now: t0)) == ["write 1: B(square) J3"])  // 10 ms jobs: one in the pipe
        _ = m.stdoutClosed(worker: 1)
        #expect(describe(m.processEnded(worker: 1, now: at(10))) == ["reap 1"])
        #expect(
            describe(m.workerReaped(worker: 1, status: .exited(3), now: at(10))) == [
                "complete 3: worker died: the worker process (pid 101) exited with status 3 while running this job; it was replaced",
                "spawn 2",
            ]
        )
        #expect(m.statistics.queued == 1)  // 4 runs on the replacement
    }

    @Test func aWorkerThatDiesInsideABatchRunsTheBatchAgainJobByJob() {
        var m = readyPool(1)
        warmUp(&m)
        #expect(describe(m.submit([job(1), job(2), job(3)], now: t0)) == ["write 1: M(1 2 3)"])
        _ = m.submit([job(4)], now: t0)
        #expect(describe(m.received(result(1, ns: 10_000), from: 1, now: t0)) == ["complete 1: ok"])
        // It dies with 2 and 3 unanswered: either may have run and killed it. Nothing
        // ends; they run again, each alone, and 4 (not in that batch) after them.
        _ = m.stdoutClosed(worker: 1)
        _ = m.processEnded(worker: 1, now: at(10))
        #expect(describe(m.workerReaped(worker: 1, status: .signaled(9), now: at(10))) == ["spawn 2"])
        #expect(m.statistics.queued == 3)
        _ = m.workerSpawned(index: 2, pid: 102)
        _ = m.workerAttached(index: 2)
        #expect(describe(m.received(hello, from: 2, now: at(20)) + m.readComplete(now: at(20))) == ["ready", "write 2: B(square) J2 J3 J4"])
        #expect(describe(m.received(result(2, ns: 10_000), from: 2, now: at(21))) == ["complete 2: ok"])
        // Job 3 kills this worker too: alone in its frame, it is the one that ran.
        _ = m.stdoutClosed(worker: 2)
        _ = m.processEnded(worker: 2, now: at(30))
        #expect(
            describe(m.workerReaped(worker: 2, status: .signaled(9), now: at(30))) == [
                "complete 3: worker died: the worker process (pid 102) was killed by signal 9 (SIGKILL) while running this job; it was replaced", "spawn 3",
            ]
        )
        #expect(m.statistics.queued == 1)  // 4 runs on the next worker
    }

    @Test func batchesHoldConsecutiveJobsOfOneBundleOneOwnerAndNoTimeout() {
        var m = readyPool(1)
        warmUp(&m)
        func owned(_ id: UInt64, _ bundle: FunctionBundle = square, owner: String = "", timeout: Duration? = nil) -> Job {
            var j = job(id, bundle, timeout: timeout)
            j.owner = owner
            return j
        }
        // A bundle change ends a batch; a job with a timeout travels alone (its time
        // counts from the result before it); a check is never in a batch.
        let jobs = [owned(1), owned(2), owned(3, cube), owned(4, cube), owned(5), owned(6, timeout: .seconds(1)), owned(7), owned(8)]
        #expect(describe(m.submit(jobs + [job(9, kind: .check)], now: t0)) == ["write 1: M(1 2) B(cube) M(3 4) J5 J6 M(7 8) C9"])
        for id in UInt64(1)...8 { _ = m.received(result(id, ns: 10_000), from: 1, now: t0) }
        _ = m.received(.checkReply(id: 9, error: nil), from: 1, now: t0)
        // An owner change ends a batch.
        let mixed = [owned(20, owner: "a"), owned(21, owner: "a"), owned(22, owner: "b"), owned(23, owner: "b")]
        #expect(describe(m.submit(mixed, now: t0)) == ["write 1: M(20 21) M(22 23)"])
    }

    @Test func batchSizesFollowJobTimes() {
        var m = readyPool(1, configuration(depth: 1024))
        // Unmeasured jobs are taken as long: one at a time.
        #expect(describe(m.submit((1...2000).map { job($0) }, now: t0)) == ["write 1: B(square) J1"])
        // 10 µs jobs: 2 ms of them in the pipe, in batches.
        for id in UInt64(1)...30 {
            _ = m.received(result(id, ns: 10_000), from: 1, now: t0)
            _ = m.readComplete(now: t0)
        }
        let pipe10µs = m.statistics.running
        #expect(pipe10µs > 1 && pipe10µs < 1024)
        // 1 µs jobs: the pipe deepens up to maxPipelineDepth (1024), refilled in one
        // batch each time it is half empty, not after every result.
        var writes = 0, deepest = 0
        for id in UInt64(31)...630 {
            _ = m.received(result(id, ns: 1_000), from: 1, now: t0)
            for case .write(_, let buffer) in m.readComplete(now: t0) {
                writes += 1
                let written = frames(buffer)
                #expect(written.hasPrefix("M(") && !written.contains(" M("), "\(written.prefix(40))")
            }
            deepest = max(deepest, m.statistics.running)
        }
        #expect(deepest == 1024)
        #expect(writes >= 1 && writes <= 10, "\(writes) writes for 600 results")
        // Long jobs (1 s): once the pipe has drained, one job per frame again.
        var last: [String] = []
        for id in UInt64(631)...(630 + 1024) {
            last = describe(m.received(result(id, ns: 1_000_000_000), from: 1, now: t0) + m.readComplete(now: t0))
        }
        #expect(last == ["complete 1654: ok", "write 1: J1655"])
    }

    @Test func aTimeoutOrAStopEndsOnlyItsJobAndTheRestRunElsewhere() {
        var m = readyPool(1)
        warmUp(&m)
        #expect(describe(m.submit([job(1, timeout: .milliseconds(100)), job(2), job(3), job(4)], now: t0)) == ["write 1: J1 M(2 3 4)"])
        _ = m.tick(now: at(101))
        _ = m.stdoutClosed(worker: 1)
        _ = m.processEnded(worker: 1, now: at(102))
        #expect(describe(m.workerReaped(worker: 1, status: .signaled(9), now: at(102))).first?.hasPrefix("complete 1: timeout") == true)
        #expect(m.statistics.queued == 3)
        _ = m.workerSpawned(index: 2, pid: 102)
        _ = m.workerAttached(index: 2)
        #expect(describe(m.received(hello, from: 2, now: at(110)) + m.readComplete(now: at(110))) == ["ready", "write 2: B(square) M(2 3 4)"])
        // Stopped inside the running batch (the worker may have reached it, its results
        // come at the batch's end): it ends now and the worker is killed; the running
        // one stopped too ends once; the rest of the batch runs elsewhere.
        #expect(
            describe(m.stop(jobID: 3)) == [
                "complete 3: cancelled: the job was cancelled in its worker's batch; the worker (pid 102) was killed and replaced", "kill 2", "check 2 in 2ms",
            ]
        )
        #expect(describe(m.stop(jobID: 2)).first?.hasPrefix("complete 2: cancelled: the job was cancelled while it ran") == true)
        _ = m.stdoutClosed(worker: 2)
        _ = m.processEnded(worker: 2, now: at(120))
        #expect(describe(m.workerReaped(worker: 2, status: .signaled(9), now: at(120))) == ["spawn 3"])
        #expect(m.statistics.queued == 1)
        // A job in a later frame than the running one has not started: it ends without
        // a kill, and its result, if one comes, is dropped.
        _ = m.workerSpawned(index: 3, pid: 103)
        _ = m.workerAttached(index: 3)
        #expect(describe(m.received(hello, from: 3, now: at(130)) + m.readComplete(now: at(130))) == ["ready", "write 3: B(square) J4"])
        #expect(describe(m.submit([job(5, timeout: .seconds(5)), job(6)], now: at(130))) == ["write 3: J5 J6"])
        #expect(describe(m.stop(jobID: 6)) == ["complete 6: cancelled: the job was cancelled before it ran"])
    }

    @Test func stopEndsQueuedInPipeAndRunningJobsOnce() {
        var m = readyPool(1)
        warmUp(&m)
        // Jobs with a timeout travel one per frame (not in a batch).
        let long = Duration.seconds(9)
        #expect(describe(m.submit([job(1, timeout: long), job(2, timeout: long), job(3, timeout: long)], now: t0)) == ["write 1: J1 J2 J3"])
        #expect(m.cancel(jobID: 2).isEmpty)  // cancel is for queued jobs only
        // In the pipe behind the running job: it ends now, its result is dropped.
        let inPipe = m.stop(jobID: 2)
        #expect(describe(inPipe) == ["complete 2: cancelled: the job was cancelled before it ran"])
        #expect(m.stop(jobID: 2).isEmpty)
        // Running: it ends now and its worker is killed.
        let running = m.stop(jobID: 1)
        #expect(
            describe(running) == [
                "complete 1: cancelled: the job was cancelled while it ran; its worker (pid 101) was killed and replaced", "kill 1", "check 1 in 2ms",
            ]
        )
        // Queued.
        _ = m.submit([job(4)], now: t0)
        _ = m.stdoutClosed(worker: 1)  // no queued job goes to a worker that is ending
        _ = m.submit([job(5)], now: t0)
        let queued = m.stop(jobID: 5)
        #expect(describe(queued) == ["complete 5: cancelled: the job was cancelled before it ran"])
        // Its result, written before the kill landed, is dropped (and counted).
        #expect(describe(m.received(result(1), from: 1, now: t0)).isEmpty)
        #expect(m.statistics.workers.first?.jobsDone == 31)
        // The death ends nothing twice (job 2 ended already); job 3 is requeued before job 4.
        _ = m.processEnded(worker: 1, now: at(5))
        #expect(describe(m.workerReaped(worker: 1, status: .signaled(9), now: at(5))) == ["spawn 2"])
        #expect(m.statistics.queued == 2)
        _ = m.workerSpawned(index: 2, pid: 102)
        _ = m.workerAttached(index: 2)
        #expect(describe(m.received(hello, from: 2, now: at(9)) + m.readComplete(now: at(9))) == ["ready", "write 2: B(square) J3 J4"])
        #expect(m.stop(jobID: 99).isEmpty)
    }

    @Test func aWorkerBreakingTheProtocolIsKilledAndItsJobSaysSo() {
        var m = readyPool(1)
        _ = m.submit([job(1)], now: t0)
        #expect(describe(m.received(result(7), from: 1, now: t0), logs: true) == ["log error: worker protocol error: result for job 7 it was not running", "kill 1", "check 1 in 2ms"])
        #expect(describe(m.protocolError("another", worker: 1)).isEmpty)  // killed once, for the first reason
        _ = m.stdoutClosed(worker: 1)
        _ = m.processEnded(worker: 1, now: t0)
        #expect(
            describe(m.workerReaped(worker: 1, status: .signaled(9), now: t0)) == [
                "complete 1: protocol error: worker (pid 101) broke the worker protocol: result for job 7 it was not running", "spawn 2",
            ]
        )
    }

    @Test func theResultsOfOneReadAreHandledTogetherAndStopAtABrokenOne() {
        var m = readyPool(1)
        warmUp(&m)
        #expect(describe(m.submit([job(1), job(2), job(3), job(4)], now: t0)) == ["write 1: M(1 2 3 4)"])
        // One list of actions for the read; the results after one for a job the worker
        // was not running are not taken (the worker is killed).
        let messages = [result(1, ns: 10_000), result(2, ns: 10_000), result(9, ns: 10_000), result(3, ns: 10_000)]
        #expect(
            describe(m.received(messages, from: 1, now: t0), logs: true) == [
                "complete 1: ok", "complete 2: ok", "log error: worker protocol error: result for job 9 it was not running", "kill 1",
                "check 1 in 2ms",
            ]
        )
        #expect(m.statistics.workers.first?.jobsDone == 32)
    }

    @Test func anEndedWorkersPipeGetsAGracePeriodToDrain() {
        var m = readyPool(1)
        _ = m.submit([job(1)], now: t0)
        // The process ended but its stdout is open (a process its job forked holds it):
        // results may still be in the pipe.
        #expect(describe(m.processEnded(worker: 1, now: at(10))) == ["check 1 in 300ms"])
        #expect(describe(m.processEnded(worker: 1, now: at(60))).isEmpty)
        #expect(describe(m.received(result(1), from: 1, now: at(70))) == ["complete 1: ok"])
        #expect(describe(m.processEnded(worker: 1, now: at(309))).isEmpty)
        #expect(describe(m.processEnded(worker: 1, now: at(310))) == ["reap 1"])
        #expect(describe(m.workerReaped(worker: 1, status: .exited(0), now: at(310))) == ["spawn 2"])

        // Results still waiting in the pipe when the grace is over (the loop was stalled
        // and ran its overdue check before reading them) are read first; a pipe that
        // never empties is given up after ten graces.
        var late = readyPool(1)
        _ = late.submit([job(1)], now: t0)
        #expect(describe(late.processEnded(worker: 1, now: at(10))) == ["check 1 in 300ms"])
        #expect(describe(late.processEnded(worker: 1, now: at(310), unreadOutput: true)) == ["check 1 in 2ms"])
        #expect(describe(late.received(result(1), from: 1, now: at(311))) == ["complete 1: ok"])
        #expect(describe(late.processEnded(worker: 1, now: at(312))) == ["reap 1"])
        var flooding = readyPool(1)
        _ = flooding.processEnded(worker: 1, now: at(10))
        #expect(describe(flooding.processEnded(worker: 1, now: at(3_009), unreadOutput: true)) == ["check 1 in 2ms"])
        #expect(describe(flooding.processEnded(worker: 1, now: at(3_010), unreadOutput: true)) == ["reap 1"])

        // With its stdout closed, an ended worker is reaped at once.
        var closed = readyPool(1)
        _ = closed.stdoutClosed(worker: 1)
        #expect(describe(closed.processEnded(worker: 1, now: t0)) == ["reap 1"])
    }

    @Test func aMemoryErrorRetiresTheWorkerAndRequeuesTheJobsBehind() {
        var m = readyPool(1)
        warmUp(&m)
        _ = m.submit([job(1), job(2), job(3)], now: t0)
        #expect(describe(m.received(result(1, code: .pythonException), from: 1, now: t0)).first?.hasPrefix("complete 1: python exception") == true)
        #expect(describe(m.received(.retiring(reason: 1), from: 1, now: t0)) == ["close stdin 1", "spawn 2"])
        #expect(m.statistics.queued == 2 && m.statistics.running == 0)
        #expect(describe(m.readComplete(now: t0)).isEmpty)  // not to the retiring worker
        _ = m.workerSpawned(index: 2, pid: 102)
        _ = m.workerAttached(index: 2)
        #expect(describe(m.received(hello, from: 2, now: t0) + m.readComplete(now: t0)) == ["ready", "write 2: B(square) M(2 3)"])
        // The retired worker exits; nothing ends with it and no third worker starts.
        _ = m.stdoutClosed(worker: 1)
        _ = m.processEnded(worker: 1, now: t0)
        #expect(describe(m.workerReaped(worker: 1, status: .exited(0), now: t0)).isEmpty)
    }

    // MARK: Start failures

    @Test func failedStartsBackOffThenFailTheQueueAndANewSubmitTriesAtOnce() {
        let reason = "cannot start '/nonexistent/python3': No such file or directory"
        var m = Machine(configuration: configuration())
        #expect(describe(m.start(target: 1)) == ["spawn 1"])
        #expect(describe(m.spawnFailed(index: 1, reason: reason), logs: true) == ["log error: cannot start worker: \(reason)", "retry in 100ms"])
        #expect(describe(m.submit([job(1)], now: t0)).isEmpty)  // waits for the retry
        #expect(describe(m.retryTimerFired(now: at(100))) == ["spawn 2"])
        #expect(describe(m.spawnFailed(index: 2, reason: reason), logs: true) == ["retry in 200ms"])  // the reason is logged once
        #expect(m.whenReady().isEmpty)
        #expect(describe(m.retryTimerFired(now: at(300))) == ["spawn 3"])
        #expect(
            describe(m.spawnFailed(index: 3, reason: reason)) == [
                "not ready: \(reason)", "complete 1: worker died: no Python worker could start: \(reason)", "retry in 400ms",
            ]
        )
        #expect(describe(m.whenReady()) == ["not ready: \(reason)"])
        // Attempts go on with the delay doubling up to 5 s.
        var delays: [String] = []
        for index in 4...9 {
            #expect(describe(m.retryTimerFired(now: t0)).last == "spawn \(index)")
            delays += describe(m.spawnFailed(index: index, reason: reason)).filter { $0.hasPrefix("retry") }
        }
        #expect(delays == ["retry in 800ms", "retry in 1600ms", "retry in 3200ms", "retry in 5s", "retry in 5s", "retry in 5s"])
        // New work tries again at once.
        #expect(describe(m.submit([job(2)], now: t0)) == ["cancel retry", "spawn 10"])
        #expect(m.whenReady().isEmpty)
        _ = m.workerSpawned(index: 10, pid: 110)
        _ = m.workerAttached(index: 10)
        #expect(describe(m.received(hello, from: 10, now: t0) + m.readComplete(now: t0), logs: true) == ["log notice: workers start again", "log debug: worker ready", "ready", "write 10: B(square) J2"])
        // The backoff starts over after a success.
        _ = m.resize(to: 2, now: t0)
        #expect(describe(m.spawnFailed(index: 11, reason: reason)).last == "retry in 100ms")
    }

    @Test func aWorkerThatExitsBeforeItsHelloIsAFailedStart() {
        var m = Machine(configuration: configuration())
        _ = m.start(target: 1)
        _ = m.workerSpawned(index: 1, pid: 101)
        _ = m.workerAttached(index: 1)
        _ = m.stdoutClosed(worker: 1)
        _ = m.processEnded(worker: 1, now: t0)
        #expect(
            describe(m.workerReaped(worker: 1, status: .exited(3), now: t0), logs: true) == [
                "log error: cannot start worker: 'python3' exited with status 3 before it was ready", "retry in 100ms",
            ]
        )
    }

    // MARK: Fair share

    @Test func aFreeWorkerTakesTheNextJobOfTheOwnerThatUsedLeast() {
        var m = readyPool(1)
        func owned(_ id: UInt64, _ owner: String) -> Job {
            var j = job(id)
            j.owner = owner
            return j
        }
        // Client a keeps long jobs queued; its first runs.
        #expect(describe(m.submit((1...5).map { owned($0, "a") }, now: t0)) == ["write 1: B(square) J1"])
        // Client b sends short jobs while a's first runs.
        #expect(m.submit([owned(10, "b"), owned(11, "b")], now: at(100)).isEmpty)
        // a's job took 500 ms: the worker takes b's jobs next, then a's again.
        #expect(describe(m.received(result(1, ns: 500_000_000), from: 1, now: at(500)) + m.readComplete(now: at(500)))
            == ["complete 1: ok", "write 1: J10"])
        #expect(describe(m.received(result(10, ns: 1_000_000), from: 1, now: at(501)) + m.readComplete(now: at(501)))
            == ["complete 10: ok", "write 1: J11"])
        #expect(describe(m.received(result(11, ns: 1_000_000), from: 1, now: at(502)) + m.readComplete(now: at(502)))
            == ["complete 11: ok", "write 1: J2"])
        #expect(m.statistics.queued == 3)
        #expect(m.shares(now: at(502)).map(\.owner) == ["b", "a"])
    }

    // MARK: Shutdown

    @Test func shutdownFailsQueuedJobsRetiresWorkersAndKillsThemAfterTheGrace() {
        var m = readyPool(2)
        #expect(describe(m.submit([job(1), job(2), job(3)], now: t0)) == ["write 1: B(square) J1", "write 2: B(square) J2"])
        #expect(
            describe(m.shutdown()) == [
                "not ready: the worker pool shut down",
                "complete 3: shut down: the worker pool shut down before the job ran",
                "close stdin 1", "close stdin 2", "kill all in 5s",
            ]
        )
        #expect(m.target == 0 && m.isShuttingDown)
        #expect(describe(m.whenReady()) == ["not ready: the worker pool shut down"])
        #expect(describe(m.submit([job(4)], now: t0)) == ["complete 4: shut down: the worker pool is shutting down"])
        #expect(m.resize(to: 4, now: t0).isEmpty)
        #expect(m.shutdown().isEmpty)  // in progress
        // Worker 1 finishes its job and exits: no replacement.
        #expect(describe(m.received(result(1), from: 1, now: at(10))) == ["complete 1: ok"])
        _ = m.stdoutClosed(worker: 1)
        _ = m.processEnded(worker: 1, now: at(11))
        #expect(describe(m.workerReaped(worker: 1, status: .exited(0), now: at(11))).isEmpty)
        // Worker 2's job outlasts the grace period.
        #expect(describe(m.shutdownGraceElapsed()) == ["kill 2", "check 2 in 2ms"])
        _ = m.processEnded(worker: 2, now: at(5_001))
        #expect(describe(m.processEnded(worker: 2, now: at(5_301))) == ["reap 2"])
        #expect(
            describe(m.workerReaped(worker: 2, status: .signaled(9), now: at(5_301))) == [
                "complete 2: shut down: the worker pool shut down and killed the worker (pid 102) after the grace period", "finished",
            ]
        )
        #expect(describe(m.shutdown()) == ["finished"])  // a later call is answered at once
        #expect(m.statistics.workers.count == 2 && m.statistics.workers.allSatisfy { $0.exit != nil })
    }

    @Test func shutdownWithoutWorkersFinishesAtOnce() {
        var m = Machine(configuration: configuration())
        _ = m.start(target: 0)
        #expect(describe(m.shutdown()) == ["not ready: the worker pool shut down", "finished"])
    }
}
