import NIOCore
import PPCore
import Synchronization
import Testing

/// Records how jobs end, to check each ends once and how.
private final class Ends: Sendable {
    let results = Mutex<[UInt64: [JobResult]]>([:])

    func job(_ id: UInt64, _ bundle: FunctionBundle = testBundle, timeout: Duration? = nil, opaque: Bool = false) -> Job {
        Job(id: id, bundle: bundle, arguments: opaque ? JobArguments(opaque: [1, 2]) : JobArguments(jsonArray: Array("[1]".utf8)), timeout: timeout) { [self] r in
            self.results.withLock { $0[id, default: []].append(r) }
        }
    }

    func of(_ id: UInt64) -> [JobResult] { self.results.withLock { $0[id] ?? [] } }
}

private let testBundle = FunctionBundle(name: "f", source: "def f(x):\n    return x\n")
private let otherBundle = FunctionBundle(name: "g", source: "def g(x):\n    return -x\n")

@Suite("Scheduler state machine")
struct SchedulerStateMachineTests {
    private func complete(_ failures: [SchedulerStateMachine.Failure]) {
        for f in failures { f.job.fail(f.error, executor: f.executor) }
    }

    @Test func sharesJobsByFreeSlotsAndKeepsOrder() {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        #expect(s.enqueue((1...10).map { ends.job($0) }).isEmpty)
        let (a, b) = (0, 1)
        let batches = s.dispatch([(a, 3), (b, 5)]).batches
        // The one with most room first, then the other; nothing past the slots.
        #expect(batches.map(\.executor) == [b, a])
        #expect(batches[0].jobs.map(\.id) == [1, 2, 3, 4, 5])
        #expect(batches[1].jobs.map(\.id) == [6, 7, 8])
        #expect(s.queued == 2)
        #expect(s.dispatch([(a, 0), (b, 0)]).batches.isEmpty)
        // A batch never exceeds the cap.
        #expect(s.enqueue((11...2000).map { ends.job($0) }).isEmpty)
        let big = s.dispatch([(a, 10_000)]).batches
        #expect(big.allSatisfy { $0.jobs.count <= SchedulerStateMachine.maxBatch })
        #expect(big.flatMap(\.jobs).map(\.id) == Array(9...2000))
    }

    @Test func lostJobsComeBackFirstUntilTheirAttemptsAreUsed() {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        _ = s.enqueue([ends.job(1), ends.job(2), ends.job(3)])
        var sent = s.dispatch([(0, 2)]).batches.flatMap(\.jobs)
        #expect(sent.map(\.id) == [1, 2])
        // Lost with their node: back at the front, in order.
        for attempt in 1..<SchedulerStateMachine.maxAttempts {
            #expect(s.requeue(sent, lost: "connection reset", from: "n:1").isEmpty)
            sent = s.dispatch([(0, 2)]).batches.flatMap(\.jobs)
            #expect(sent.map(\.id) == [1, 2] && sent.allSatisfy { $0.attempts == attempt })
        }
        let failed = s.requeue(sent, lost: "connection reset", from: "n:1")
        #expect(failed.map(\.job.id) == [1, 2])
        #expect(failed.allSatisfy { $0.error.code == .nodeLost && $0.error.message.contains("lost 3 executors") && $0.error.message.contains("n:1: connection reset") })
        #expect(s.queued == 1)
    }

    @Test func handBacksAreBounded() {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        _ = s.enqueue([ends.job(1)])
        var failures: [SchedulerStateMachine.Failure] = []
        var rounds = 0
        while failures.isEmpty {
            let sent = s.dispatch([(0, 1)]).batches.flatMap(\.jobs)
            failures = s.requeue(sent, lost: nil, from: "n:1")
            rounds += 1
        }
        #expect(rounds == SchedulerStateMachine.maxHandBacks + 1)
        #expect(failures[0].error.message.contains("handed the job back 17 times"))
    }

    @Test func cancelOnlyFindsQueuedJobs() {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        _ = s.enqueue([ends.job(1), ends.job(2)])
        _ = s.dispatch([(0, 1)])
        #expect(s.cancelQueued(jobID: 1) == nil)  // on an executor
        let f = s.cancelQueued(jobID: 2)
        #expect(f?.error.code == .cancelled && s.queued == 0)
    }

    @Test func nothingToRunTheQueueFailsItAfterTheTimeoutAndSaysWhy() {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        _ = s.enqueue([ends.job(1)])
        s.nodeProblems["10.0.0.2:7340"] = "connection refused"
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        #expect(s.tick(now: t0, anyExecutorCanRun: false).isEmpty)
        #expect(s.tick(now: t0 + .seconds(29), anyExecutorCanRun: false).isEmpty)
        // An executor that can run resets the clock.
        #expect(s.tick(now: t0 + .seconds(29), anyExecutorCanRun: true).isEmpty)
        #expect(s.tick(now: t0 + .seconds(40), anyExecutorCanRun: false).isEmpty)
        let failed = s.tick(now: t0 + .seconds(70), anyExecutorCanRun: false)
        #expect(failed.count == 1)
        #expect(failed[0].error.code == .noExecutor)
        #expect(failed[0].error.message.contains("no node reachable (10.0.0.2:7340: connection refused)"), "\(failed[0].error.message)")
        s.nodeProblems["10.0.0.2:7340"] = nil
        #expect(s.nodeProblems.isEmpty)
    }

    @Test func whenEveryNodeRefusedOurKeyTheQueueFailsSooner() {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        _ = s.enqueue([ends.job(1)])
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        s.nodeProblems = ["a:7340": "the node does not accept our key", "b:7340": "connection refused"]
        s.keyRefusals = ["a:7340"]
        // One node may still come back: the full timeout.
        #expect(s.tick(now: t0, anyExecutorCanRun: false).isEmpty)
        #expect(s.tick(now: t0 + .seconds(6), anyExecutorCanRun: false).isEmpty)
        // Every node known refused our key: five seconds, said in the message.
        s.nodeProblems["b:7340"] = nil
        let failed = s.tick(now: t0 + .seconds(6), anyExecutorCanRun: false)
        #expect(failed.count == 1 && failed[0].error.code == .noExecutor)
        #expect(failed[0].error.message.hasPrefix("nothing could run the job for 5.0 seconds: no local workers and no node reachable (a:7340: the node does not accept our key)"), "\(failed[0].error.message)")
        // A shorter configured timeout stays the shorter.
        var short = SchedulerStateMachine(noExecutorTimeout: .seconds(2))
        _ = short.enqueue([ends.job(2)])
        short.nodeProblems = ["a:7340": "refused"]
        short.keyRefusals = ["a:7340"]
        #expect(short.tick(now: t0, anyExecutorCanRun: false).isEmpty)
        #expect(short.tick(now: t0 + .seconds(2), anyExecutorCanRun: false).count == 1)
    }

    @Test func stopFailsQueuedAndLaterJobs() {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        _ = s.enqueue([ends.job(1)])
        self.complete(s.stop())
        self.complete(s.enqueue([ends.job(2)]))
        self.complete(s.requeue([ends.job(3)], lost: "x", from: "n"))
        for id: UInt64 in 1...3 {
            #expect(ends.of(id).count == 1 && ends.of(id)[0].code == .shutdown)
        }
    }
}

@Suite("Node connection state machine (client side)")
struct NodeConnectionStateMachineTests {
    let t0 = NIODeadline.uptimeNanoseconds(5_000_000_000)

    private func ready(window: UInt32 = 4) -> NodeConnectionStateMachine {
        var m = NodeConnectionStateMachine(name: "n:1", clientName: "me", heartbeatTimeout: .seconds(3), now: self.t0)
        guard case .send(let hello) = m.tlsEstablished(), case .hello(let minV, let maxV, _, let name) = hello.first else {
            Issue.record("no HELLO after TLS")
            return m
        }
        #expect(minV == NodeProtocol.minimumVersion && maxV == NodeProtocol.version && name == "me")
        guard case .ready = m.received(.welcome(version: NodeProtocol.version, window: window, maxFrame: 1 << 20, info: Array("{}".utf8)), now: self.t0) else {
            Issue.record("WELCOME did not make it ready")
            return m
        }
        return m
    }

    @Test func handshakeRaisesTheFrameLimitAndOpensTheWindow() {
        var m = NodeConnectionStateMachine(name: "n:1", clientName: "me", heartbeatTimeout: .seconds(3), now: self.t0)
        #expect(m.maxFrame == NodeProtocol.preambleMaxFrame && m.freeSlots == 0 && !m.isUsable)
        m = self.ready(window: 4)
        #expect(m.maxFrame == NodeProtocol.defaultMaxFrame && m.freeSlots == 4 && m.isUsable && m.wasReady)
    }

    @Test func handshakeFailures() {
        // A WELCOME for a version we do not speak: closed, retried later.
        var m = NodeConnectionStateMachine(name: "n:1", clientName: "me", heartbeatTimeout: .seconds(3), now: self.t0)
        _ = m.tlsEstablished()
        guard case .close = m.received(.welcome(version: 99, window: 4, maxFrame: 1 << 20, info: []), now: self.t0) else { Issue.record("not closed"); return }
        #expect(m.closed().reason.contains("protocol version 99"))
        #expect(m.retryAfter == .seconds(10))
        // A version-mismatch ERROR from the node: its text, retried later.
        var e = NodeConnectionStateMachine(name: "n:1", clientName: "me", heartbeatTimeout: .seconds(3), now: self.t0)
        _ = e.tlsEstablished()
        guard case .close = e.received(.error(code: NodeErrorCode.versionMismatch.rawValue, message: "versions do not overlap"), now: self.t0) else { Issue.record("not closed"); return }
        #expect(e.closed().reason == "the node refused us: versions do not overlap" && e.retryAfter == .seconds(10))
        // No WELCOME in time.
        var slow = NodeConnectionStateMachine(name: "n:1", clientName: "me", heartbeatTimeout: .seconds(3), now: self.t0)
        guard case .close = slow.handshakeTimerFired() else { Issue.record("not closed"); return }
        #expect(slow.closed().reason.contains("no TLS handshake and WELCOME"))
        // The timer after a finished handshake does nothing.
        var fine = self.ready()
        guard case .send(let none) = fine.handshakeTimerFired(), none.isEmpty else { Issue.record("closed a ready connection"); return }
        // A wrong key: retried after 10 s, not 200 ms.
        var tls = NodeConnectionStateMachine(name: "n:1", clientName: "me", heartbeatTimeout: .seconds(3), now: self.t0)
        _ = tls.errorCaught("handshake failed", keyRejected: true)
        #expect(tls.retryAfter == .seconds(10) && tls.closed().reason == "handshake failed")
        // Results before WELCOME break the protocol.
        var early = NodeConnectionStateMachine(name: "n:1", clientName: "me", heartbeatTimeout: .seconds(3), now: self.t0)
        _ = early.tlsEstablished()
        guard case .close = early.received(.window(5), now: self.t0) else { Issue.record("not closed"); return }
        #expect(early.closed().reason.contains("unexpected"))
    }

    @Test func windowIsCappedAndFollowsTheNode() {
        var m = self.ready(window: UInt32.max)
        #expect(m.freeSlots == NodeConnectionStateMachine.maxWindow)
        _ = m.received(.window(2), now: self.t0)
        #expect(m.freeSlots == 2)
        let ends = Ends()
        _ = m.submit([ends.job(1)], now: self.t0)
        #expect(m.freeSlots == 1)
    }

    @Test func submitFramesStayUnderTheNodesFrameLimit() {
        var m = self.ready()  // the node accepts frames of 1 MiB
        let big = JobArguments(jsonArray: Array("[\"\(String(repeating: "q", count: 400_000))\"]".utf8))
        let jobs = (1...3).map { Job(id: UInt64($0), bundle: testBundle, arguments: big) { _ in } }
        let frames = m.submit(jobs, now: self.t0) ?? []
        #expect(frames.map { if case .submit(let w) = $0 { w.map(\.id) } else { [] } } == [[UInt64(1), 2], [3]])
    }

    @Test func needBlobIsAnsweredOnceAndOnlyForBlobsOfJobsInFlight() throws {
        var m = self.ready()
        var digester = BlobDigester()
        let big = try JobArguments([String(repeating: "b", count: 64), 1]).movingLarge(above: 32, digester: &digester)
        let blob = try #require(big.blobs.first)
        #expect(big.json == Array("[1]".utf8) && blob.position == 0 && blob.bytes.count == 66)
        let job = Job(id: 1, bundle: testBundle, arguments: big) { _ in }
        guard case .submit(let wire)? = m.submit([job], now: self.t0)?.first else { Issue.record("no SUBMIT"); return }
        #expect(wire[0].arguments.blobs == [blob])
        guard case .send(let frames) = m.received(.needBlob(blob.digest), now: self.t0), case .blob(let d, let bytes) = frames.first else {
            Issue.record("NEED_BLOB not answered")
            return
        }
        #expect(d == blob.digest && bytes == blob.bytes)
        guard case .close = m.received(.needBlob(blob.digest), now: self.t0) else { Issue.record("second NEED_BLOB answered"); return }
        #expect(m.closed().reason.contains("asked again for large argument"))
        // A digest of no job in flight (a bundle's is not a blob's).
        var n = self.ready()
        _ = n.submit([job], now: self.t0)
        guard case .close = n.received(.needBlob(testBundle.digest), now: self.t0) else { Issue.record("unknown NEED_BLOB answered"); return }
        #expect(n.closed().reason.contains("of no job it holds"))
    }

    @Test func needIsAnsweredOnceAndOnlyForBundlesOfJobsInFlight() {
        var m = self.ready()
        let ends = Ends()
        guard case .submit(let wire)? = m.submit([ends.job(1), ends.job(2)], now: self.t0)?.first else { Issue.record("no SUBMIT"); return }
        #expect(wire.map(\.id) == [1, 2] && wire.allSatisfy { $0.digest == testBundle.digest })
        guard case .send(let frames) = m.received(.need(testBundle.digest), now: self.t0), case .bundle(let d, let spec) = frames.first else {
            Issue.record("NEED not answered")
            return
        }
        #expect(d == testBundle.digest && spec == testBundle.spec)
        // Asked again on the same connection: the node misbehaves.
        guard case .close = m.received(.need(testBundle.digest), now: self.t0) else { Issue.record("second NEED answered"); return }
        #expect(m.closed().reason.contains("asked again"))
        // A digest never sent.
        var n = self.ready()
        _ = n.submit([ends.job(3)], now: self.t0)
        guard case .close = n.received(.need(otherBundle.digest), now: self.t0) else { Issue.record("unknown NEED answered"); return }
        #expect(n.closed().reason.contains("never sent"))
    }

    @Test func resultsAreCheckedAndDrainingHandsJobsBack() {
        var m = self.ready(window: 8)
        let ends = Ends()
        _ = m.submit([ends.job(1), ends.job(2), ends.job(3), ends.job(4, opaque: true)], now: self.t0)
        let results = [
            JobResult(id: 1, code: nil, payload: Array("42".utf8), executor: ""),
            JobResult(id: 2, code: nil, payload: Array("1 2".utf8), executor: ""),  // two values
            JobResult(id: 3, code: .shutdown, payload: [], executor: ""),  // draining node
            JobResult(id: 4, code: nil, payload: [0xff, 0], executor: ""),  // opaque: any bytes
            JobResult(id: 99, code: nil, payload: Array("1".utf8), executor: ""),  // not in flight
        ]
        guard case .deliver(let delivered, let handedBack, _) = m.received(.results(results), now: self.t0) else {
            Issue.record("results not delivered")
            return
        }
        // Job 2's two values fail it here.
        #expect(delivered.map(\.0.id) == [1, 2, 4] && delivered.allSatisfy { $0.1.executor == "n:1" })
        #expect(delivered.map(\.1.code) == [nil, .protocolError, nil])
        #expect(handedBack.map(\.id) == [3])
        // A draining node takes nothing more.
        #expect(!m.isUsable && m.freeSlots == 0)
        #expect(m.closed().jobs.isEmpty)
    }

    @Test func heartbeatPingsAndDropsASilentNode() {
        var m = self.ready()
        guard case .send(let first) = m.tick(now: self.t0 + .milliseconds(250)), first.isEmpty else { Issue.record("pinged too soon"); return }
        guard case .send(let ping) = m.tick(now: self.t0 + .seconds(1)), case .ping = ping.first else { Issue.record("no ping"); return }
        _ = m.received(.pong(0), now: self.t0 + .seconds(2))
        guard case .send = m.tick(now: self.t0 + .seconds(4)) else { Issue.record("dropped a node heard 2 s ago"); return }
        guard case .close = m.tick(now: self.t0 + .milliseconds(5_100)) else { Issue.record("a silent node kept"); return }
        #expect(m.closed().reason.contains("no heartbeat"))
    }

    @Test func overdueJobsFailHereAndAreCancelledThere() {
        var m = self.ready()
        let ends = Ends()
        _ = m.submit([ends.job(1, timeout: .seconds(1)), ends.job(2)], now: self.t0)
        _ = m.received(.pong(0), now: self.t0 + .seconds(6))
        guard case .send = m.tick(now: self.t0 + .seconds(6)) else { Issue.record("failed too early"); return }
        _ = m.received(.pong(0), now: self.t0 + .milliseconds(7_100))
        guard case .deliver(let failed, _, let frames) = m.tick(now: self.t0 + .milliseconds(7_100)) else { Issue.record("overdue job kept"); return }
        guard case .failure(let error) = failed.first?.1.outcome.result else { Issue.record("overdue job not failed"); return }
        #expect(failed.map(\.0.id) == [1] && error.code == .timeout && error.message.contains("twice the job's timeout") && error.executor == "n:1")
        #expect(frames.contains { if case .cancel(1) = $0 { true } else { false } })
        // The job without a timeout is still held; the late result of job 1 is ignored.
        guard case .deliver(let late, _, _) = m.received(.results([JobResult(id: 1, code: nil, payload: Array("1".utf8), executor: "")]), now: self.t0 + .seconds(8)) else { return }
        #expect(late.isEmpty)
        #expect(m.closed().jobs.map(\.id) == [2])
    }

    @Test func goodbyeFromTheClientOnlyAfterTheHandshake() {
        var early = NodeConnectionStateMachine(name: "n:1", clientName: "me", heartbeatTimeout: .seconds(3), now: self.t0)
        guard case .send(let none) = early.close(goodbye: true), none.isEmpty else { Issue.record("goodbye before HELLO"); return }
        var m = self.ready()
        guard case .send(let bye) = m.close(goodbye: true), case .goodbye = bye.first else { Issue.record("no goodbye"); return }
        #expect(m.closed().reason == "closed by the client")
    }
}

@Suite("Node link state machine")
struct NodeLinkStateMachineTests {
    @Test func backoffDoublesToFiveSecondsAndResetsOnSuccess() {
        var m = NodeLinkStateMachine(discovered: false)
        #expect(m.start() == .connect)
        var delays: [TimeAmount] = []
        for _ in 0..<7 {
            let (action, _) = m.failed("connection refused")
            guard case .retry(let d) = action else { Issue.record("a static node was given up"); return }
            delays.append(d)
            #expect(m.retryTimerFired() == .connect)
        }
        #expect(delays == [.milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1600), .milliseconds(3200), .seconds(5), .seconds(5)])
        let wasUnavailable = m.connected()
        #expect(wasUnavailable)  // "reachable again"
        #expect(m.failed("reset").0 == .retry(after: .milliseconds(200)))
    }

    @Test func eachProblemIsReportedOnce() {
        var m = NodeLinkStateMachine(discovered: false)
        _ = m.start()
        #expect(m.failed("connection refused").report == "connection refused")
        _ = m.retryTimerFired()
        #expect(m.failed("connection refused").report == nil)
        _ = m.retryTimerFired()
        #expect(m.failed("timed out").report == "timed out")
    }

    @Test func aWrongKeyWaitsLongerAndDiscoveredNodesAreGivenUp() {
        var m = NodeLinkStateMachine(discovered: true)
        _ = m.start()
        #expect(m.failed("handshake failed", retryAfter: .seconds(10)).0 == .retry(after: .seconds(10)))
        _ = m.retryTimerFired()
        #expect(m.failed("handshake failed", retryAfter: .seconds(10)).0 == .retry(after: .seconds(10)))
        _ = m.retryTimerFired()
        #expect(m.failed("handshake failed").0 == .giveUp)
        #expect(m.isStopped && m.retryTimerFired() == .none && m.nudge() == .none)
        // A static node is never given up; after a long wait the doubled delay is capped.
        var s = NodeLinkStateMachine(discovered: false)
        _ = s.start()
        _ = s.failed("handshake failed", retryAfter: .seconds(10))
        _ = s.retryTimerFired()
        #expect(s.failed("connection refused").0 == .retry(after: .seconds(5)))
    }

    @Test func aNudgeConnectsAtOnceOnlyWhileWaiting() {
        var m = NodeLinkStateMachine(discovered: true)
        _ = m.start()
        #expect(m.nudge() == .none)  // connecting already
        _ = m.failed("refused")
        #expect(m.nudge() == .connect)
        #expect(m.retryTimerFired() == .none)  // the timer the nudge replaced
        m.stop()
        #expect(m.failed("refused").0 == .none)
    }
}

@Suite("Shared values: heartbeat, estimator, cache, ids")
struct SharedValueTests {
    @Test func heartbeat() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var h = Heartbeat(timeout: .seconds(3), interval: .seconds(1), now: t0)
        #expect(h.tick(at: t0 + .milliseconds(500)) == .none)
        #expect(h.tick(at: t0 + .seconds(1)) == .ping)
        #expect(h.tick(at: t0 + .milliseconds(1500)) == .none)
        h.heard(at: t0 + .seconds(2))
        #expect(h.tick(at: t0 + .seconds(5)) == .ping)
        #expect(h.tick(at: t0 + .milliseconds(5_001)) == .timedOut)
    }

    @Test func estimator() {
        var e = JobTimeEstimator()
        #expect(!e.jobsAreShort && e.jobs(fittingIn: .milliseconds(1), limit: 32) == 1)
        for _ in 0..<40 { e.add(nanoseconds: 50_000) }
        #expect(e.jobsAreShort)
        #expect(e.jobs(fittingIn: .milliseconds(1), limit: 32) == 19 || e.jobs(fittingIn: .milliseconds(1), limit: 32) == 20)
        #expect(e.jobs(fittingIn: .seconds(1), limit: 32) == 32)
        for _ in 0..<40 { e.add(nanoseconds: 100_000_000) }
        #expect(!e.jobsAreShort && e.jobs(fittingIn: .milliseconds(1), limit: 32) == 1)

        // One tiny job moves the cautious estimate by a fifth; a node's window estimate
        // takes it whole, then averages as usual.
        var cautious = JobTimeEstimator()
        var trusting = JobTimeEstimator(trustsFirstSample: true)
        cautious.add(nanoseconds: 50_000)
        trusting.add(nanoseconds: 50_000)
        #expect(!cautious.jobsAreShort && trusting.jobsAreShort)
        #expect(trusting.meanNanoseconds == 50_000)
        trusting.add(nanoseconds: 1_050_000)
        #expect(trusting.meanNanoseconds == 250_000)
    }

    @Test func cacheEvictsLeastRecentlyUsedByCost() {
        var c = BoundedCache<String, Int>(capacity: 10)
        #expect(c.insert("a", 1, cost: 4).isEmpty)
        #expect(c.insert("b", 2, cost: 4).isEmpty)
        #expect(c.get("a") == 1)  // a is now the most recent
        let evicted = c.insert("c", 3, cost: 4)
        #expect(evicted.map(\.key) == ["b"])
        #expect(c.contains("a") && c.contains("c") && !c.contains("b"))
        #expect(c.totalCost == 8 && c.count == 2 && c.evictions == 1)
        // Kept entries are skipped, the next oldest goes.
        let skipped = c.insert("d", 4, cost: 4) { $0 == "a" }
        #expect(skipped.map(\.key) == ["c"] && c.contains("a"))
        // Many uses do not grow it without bound, and order survives compaction.
        for _ in 0..<10_000 { _ = c.get("d"); _ = c.get("a") }
        #expect(c.insert("e", 5, cost: 4).map(\.key) == ["d"])
        c.remove("a")
        #expect(c.totalCost == 4 && c.count == 1)
    }

    @Test func idsAreUniqueAcrossThreads() async {
        let ids = IDAllocator(start: 7)
        let all = await withTaskGroup(of: [UInt64].self) { group in
            for _ in 0..<4 { group.addTask { (0..<1000).map { _ in ids.next() } } }
            return await group.reduce(into: []) { $0 += $1 }
        }
        #expect(Set(all).count == 4000 && all.min() == 7)
        #expect(ids.next(10) == 4007 && ids.next() == 4017)
    }
}
