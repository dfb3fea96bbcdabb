import NIOCore
import PPCore
import Testing

/// The node's side of a session, driven as a value: no socket, no loop, no pool.
@Suite("Node session state machine")
struct NodeSessionStateMachineTests {
    typealias Machine = NodeSessionStateMachine

    /// The node-wide parts the machine asks for: the bundle cache and the pool's ids.
    struct Node {
        var cache: [SHA256Digest: FunctionBundle] = [:]
        var nextPoolID: UInt64 = 100
    }

    static let configuration = Machine.Configuration(
        workers: 4, maxFrame: 1 << 20, handshakeTimeout: .seconds(5), heartbeatTimeout: .seconds(3), nodeName: "n1"
    )
    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    static let bundle = FunctionBundle(name: "f", source: "def f(x):\n    return x\n")

    static func at(_ seconds: Double) -> NIODeadline { Self.t0 + .nanoseconds(Int64(seconds * 1e9)) }

    static func job(_ id: UInt64, _ digest: SHA256Digest = Self.bundle.digest) -> WireJob {
        WireJob(id: id, digest: digest, timeoutMilliseconds: 0, arguments: JobArguments(jsonArray: Array("[\(id)]".utf8)))
    }

    static func result(nanoseconds: UInt64 = 1_000_000, payload: [UInt8] = Array("1".utf8)) -> JobResult {
        JobResult(id: 9_999, code: nil, nanoseconds: nanoseconds, payload: payload, executor: "n1")
    }

    /// Feeds `message` at `now` with `node`'s cache and ids.
    static func receive(_ machine: inout Machine, _ message: NodeMessage, at now: NIODeadline = Self.t0, node: inout Node) -> Machine.Action {
        machine.received(message, now: now, bundle: { node.cache[$0] }, poolJobID: {
            defer { node.nextPoolID += 1 }
            return node.nextPoolID
        })
    }

    /// A machine past TLS and HELLO (the client accepts `clientMaxFrame`).
    static func ready(clientMaxFrame: UInt32 = 1 << 20, node: inout Node) throws -> Machine {
        var machine = Machine(configuration: Self.configuration)
        machine.tlsEstablished()
        let action = Self.receive(&machine, .hello(minVersion: 3, maxVersion: 3, maxFrame: clientMaxFrame, name: "test"), node: &node)
        guard case .welcome = action else { throw Unexpected(action) }
        return machine
    }

    struct Unexpected: Error, CustomStringConvertible {
        let description: String
        init(_ action: Machine.Action) { self.description = "unexpected action \(action)" }
    }

    static func closing(_ action: Machine.Action) throws -> (error: NodeProtocolError, sendErrorFrame: Bool, countsAsProtocolError: Bool) {
        guard case .closeWithError(let error, let sendErrorFrame, let counted) = action else { throw Unexpected(action) }
        return (error, sendErrorFrame, counted)
    }

    static func submission(_ action: Machine.Action) throws -> (received: Int, run: [Machine.JobToRun], need: [NodeMessage], scheduleFlush: Bool) {
        guard case .submit(let received, let run, let need, let scheduleFlush) = action else { throw Unexpected(action) }
        return (received, run, need, scheduleFlush)
    }

    static func batch(_ action: Machine.Action) throws -> (results: [JobResult], maxFrame: Int, window: UInt32?, tooLarge: [(jobID: UInt64, bytes: Int)]) {
        guard case .sendResults(let results, let maxFrame, let window, let tooLarge) = action else { throw Unexpected(action) }
        return (results, maxFrame, window, tooLarge)
    }

    // MARK: Handshake

    @Test func helloIsWelcomed() throws {
        var node = Node()
        var machine = Machine(configuration: Self.configuration)
        machine.tlsEstablished()
        #expect(!machine.isReady)
        let action = Self.receive(&machine, .hello(minVersion: 1, maxVersion: 7, maxFrame: 65_536, name: "client\none"), node: &node)
        guard case .welcome(let version, let window, let maxFrame, let clientName) = action else { throw Unexpected(action) }
        // The highest common version; the long-job window (4 workers × 2); the node's
        // own frame limit; the name made safe for a log line.
        #expect(version == 3 && window == 8 && maxFrame == 1 << 20 && clientName == "client\\none")
        #expect(machine.isReady)
        #expect(machine.handshakeTimedOut().isNone)
    }

    @Test func aNodeOfNoWorkersGivesNoWindow() {
        // A standby node (ppnode --workers 0) holds no jobs; one worker gets 2.
        #expect(NodeSessionStateMachine.longJobWindow(workers: 0) == 0)
        #expect(NodeSessionStateMachine.longJobWindow(workers: 1) == 2 && NodeSessionStateMachine.longJobWindow(workers: 4) == 8)
    }

    @Test func helloMustComeFirst() throws {
        var node = Node()
        var machine = Machine(configuration: Self.configuration)
        machine.tlsEstablished()
        let closing = try Self.closing(Self.receive(&machine, .ping(1), node: &node))
        #expect(closing.error.code == .protocolViolation)
        #expect(closing.error.message == "expected HELLO first; is this a ppnode client?")
        #expect(closing.sendErrorFrame && closing.countsAsProtocolError)
        // Closing: nothing more is read, and a second error is not sent.
        #expect(Self.receive(&machine, .hello(minVersion: 3, maxVersion: 3, maxFrame: 65_536, name: "x"), node: &node).isNone)
        #expect(machine.failed(NodeProtocolError(.protocolViolation, "again")).isNone)
        #expect(machine.handshakeTimedOut().isNone)
    }

    @Test func versionsThatDoNotOverlapAreRefusedBothWays() throws {
        var node = Node()
        for (minV, maxV) in [(UInt16(4), UInt16(5)), (2, 2)] {
            var machine = Machine(configuration: Self.configuration)
            machine.tlsEstablished()
            let closing = try Self.closing(Self.receive(&machine, .hello(minVersion: minV, maxVersion: maxV, maxFrame: 65_536, name: "old"), node: &node))
            #expect(closing.error.code == .versionMismatch)
            #expect(
                closing.error.message
                    == "protocol versions do not overlap: client speaks \(minV)-\(maxV), node speaks 3-3; upgrade the older side"
            )
            // Not a protocol error: an older or newer client is not misbehaving.
            #expect(closing.sendErrorFrame && !closing.countsAsProtocolError)
        }
    }

    @Test func aClientThatAcceptsTooSmallFramesIsRefused() throws {
        var node = Node()
        var machine = Machine(configuration: Self.configuration)
        machine.tlsEstablished()
        let closing = try Self.closing(Self.receive(&machine, .hello(minVersion: 3, maxVersion: 3, maxFrame: 4095, name: "tiny"), node: &node))
        #expect(closing.error.code == .protocolViolation)
        #expect(closing.error.message == "the client accepts frames of only 4095 bytes")
        #expect(closing.countsAsProtocolError)
    }

    @Test func handshakeTimeoutClosesWithErrorOnlyWhenTLSIsUp() throws {
        // Before TLS there is nobody to send ERROR to.
        var silent = Machine(configuration: Self.configuration)
        let before = try Self.closing(silent.handshakeTimedOut())
        #expect(before.error.code == .handshakeTimeout && !before.sendErrorFrame && !before.countsAsProtocolError)
        #expect(before.error.message == "no TLS handshake and HELLO within 5.0 seconds; closing")

        var afterTLS = Machine(configuration: Self.configuration)
        afterTLS.tlsEstablished()
        #expect(try Self.closing(afterTLS.handshakeTimedOut()).sendErrorFrame)
    }

    @Test func aDrainingNodeClosesNewConnections() throws {
        var machine = Machine(configuration: Self.configuration)
        let closing = try Self.closing(machine.connected(nodeDraining: true))
        #expect(closing.error.code == .shuttingDown && closing.error.message == "node shutting down" && !closing.sendErrorFrame)
        var open = Machine(configuration: Self.configuration)
        #expect(open.connected(nodeDraining: false).isNone)
    }

    // MARK: Credits and bundles

    @Test func jobsPastTheWindowAreOverCredit() throws {
        var node = Node(cache: [Self.bundle.digest: Self.bundle])
        var machine = try Self.ready(node: &node)
        #expect(machine.window == 8)
        let nine = try Self.closing(Self.receive(&machine, .submit((1...9).map { Self.job($0) }), node: &node))
        #expect(nine.error.code == .overCredit && nine.countsAsProtocolError)
        #expect(nine.error.message == "client sent 9 jobs with 0 in flight, past its window of 8")

        var full = try Self.ready(node: &node)
        let eight = try Self.submission(Self.receive(&full, .submit((1...8).map { Self.job($0) }), node: &node))
        #expect(eight.received == 8 && eight.run.count == 8 && full.inflight == 8)
        let one = try Self.closing(Self.receive(&full, .submit([Self.job(9)]), node: &node))
        #expect(one.error.message == "client sent 1 jobs with 8 in flight, past its window of 8")
    }

    @Test func anUnknownBundleIsNeededOnceAndItsJobsWaitForIt() throws {
        var node = Node()
        var machine = try Self.ready(node: &node)
        let digest = Self.bundle.digest
        let first = try Self.submission(Self.receive(&machine, .submit([Self.job(1), Self.job(2)]), node: &node))
        #expect(first.received == 2 && first.run.isEmpty && first.need == [.need(digest)])
        let second = try Self.submission(Self.receive(&machine, .submit([Self.job(3)]), node: &node))
        #expect(second.need.isEmpty && second.run.isEmpty)
        #expect(machine.jobsAwaitingBundle == 3)

        let action = Self.receive(&machine, .bundle(digest: digest, spec: Self.bundle.spec), node: &node)
        guard case .storeBundle(let stored, let run, let need) = action, need.isEmpty else { throw Unexpected(action) }
        #expect(stored.digest == digest)
        #expect(run.map(\.clientID) == [1, 2, 3] && run.map(\.poolID) == [100, 101, 102])
        #expect(run.allSatisfy { $0.bundle.spec == Self.bundle.spec && $0.timeout == nil })
        #expect(run[0].arguments.json == Array("[1]".utf8))
        #expect(machine.jobsAwaitingBundle == 0)

        // CANCEL and STOP name the client's ids; the pool knows its own.
        guard case .cancelPoolJobs([101]) = Self.receive(&machine, .cancel(id: 2), node: &node) else { throw Unexpected(.none) }
        guard case .stopPoolJobs([102]) = Self.receive(&machine, .stop(id: 3), node: &node) else { throw Unexpected(.none) }
        #expect(Self.receive(&machine, .cancel(id: 77), node: &node).isNone)

        // Once cached, jobs run at once, with their timeout.
        node.cache[digest] = stored
        var timed = Self.job(4)
        timed.timeoutMilliseconds = 1500
        let cached = try Self.submission(Self.receive(&machine, .submit([timed]), node: &node))
        #expect(cached.need.isEmpty && cached.run.map(\.poolID) == [103] && cached.run[0].timeout == .milliseconds(1500))
    }

    // MARK: Large arguments

    /// A job of `Self.bundle` whose first argument is `big` (by digest) and second `id`,
    /// as the node decodes it from SUBMIT: the blob's bytes are not there.
    static func blobJob(_ id: UInt64, _ big: String) throws -> WireJob {
        var digester = BlobDigester()
        let arguments = try JobArguments([big, Int(id)]).movingLarge(above: 16, digester: &digester)
        var buffer = ByteBuffer()
        NodeMessage.submit([WireJob(id: id, digest: Self.bundle.digest, timeoutMilliseconds: 0, arguments: arguments)]).write(to: &buffer)
        var decoder = NodeMessageDecoder()
        guard case .submit(let jobs) = try decoder.decode(buffer: &buffer) else { throw Unexpected(.none) }
        return jobs[0]
    }

    @Test func anUnknownBlobIsNeededOnceAndItsJobsRunWhenItArrives() throws {
        var node = Node()
        var machine = try Self.ready(node: &node)
        let big = String(repeating: "x", count: 100), blob = Array("\"\(String(repeating: "x", count: 100))\"".utf8)
        let digest = SHA256Digest(hashing: blob)
        // The bundle first (NEED), then the blob (NEED_BLOB), each asked for once.
        let first = try Self.submission(Self.receive(&machine, .submit([try Self.blobJob(1, big), try Self.blobJob(2, big)]), node: &node))
        #expect(first.need == [.need(Self.bundle.digest)] && first.run.isEmpty)
        var action = Self.receive(&machine, .bundle(digest: Self.bundle.digest, spec: Self.bundle.spec), node: &node)
        guard case .storeBundle(_, let none, let needBlob) = action else { throw Unexpected(action) }
        #expect(none.isEmpty && needBlob == [.needBlob(digest)])
        node.cache[Self.bundle.digest] = Self.bundle
        let third = try Self.submission(Self.receive(&machine, .submit([try Self.blobJob(3, big)]), node: &node))
        #expect(third.need.isEmpty && third.run.isEmpty && machine.jobsAwaitingBundle == 3)

        // The blob arrives: the three parked jobs run, each with the blob's bytes.
        action = Self.receive(&machine, .blob(digest: digest, bytes: blob), node: &node)
        guard case .storeBlob(let stored, let bytes, let run, let need) = action else { throw Unexpected(action) }
        #expect(stored == digest && bytes == blob && need.isEmpty && machine.jobsAwaitingBundle == 0)
        #expect(run.map(\.clientID) == [1, 2, 3])
        #expect(run.allSatisfy { $0.arguments.blobs.map(\.bytes) == [blob] && $0.arguments.blobs[0].position == 0 })
        #expect(run[2].arguments.json == Array("[3]".utf8))
        // A blob nobody waits for is dropped.
        #expect(Self.receive(&machine, .blob(digest: digest, bytes: blob), node: &node).isNone)
    }

    @Test func aBlobThatDoesNotHashToItsDigestClosesTheSession() throws {
        var node = Node()
        node.cache[Self.bundle.digest] = Self.bundle
        var machine = try Self.ready(node: &node)
        let job = try Self.blobJob(1, String(repeating: "y", count: 50))
        let submitted = try Self.submission(Self.receive(&machine, .submit([job]), node: &node))
        #expect(submitted.need == [.needBlob(job.arguments.blobs[0].digest)])
        let closing = try Self.closing(Self.receive(&machine, .blob(digest: job.arguments.blobs[0].digest, bytes: Array("\"z\"".utf8)), node: &node))
        #expect(closing.error.code == .protocolViolation && closing.countsAsProtocolError)
        #expect(closing.error.message == "blob bytes do not hash to the digest they were sent for")
    }

    @Test func aBundleThatDoesNotHashToItsDigestClosesTheSession() throws {
        var node = Node()
        var machine = try Self.ready(node: &node)
        _ = Self.receive(&machine, .submit([Self.job(1)]), node: &node)
        let closing = try Self.closing(Self.receive(&machine, .bundle(digest: Self.bundle.digest, spec: Array("{}".utf8)), node: &node))
        #expect(closing.error.code == .protocolViolation && closing.countsAsProtocolError)
        #expect(closing.error.message == "bundle bytes do not hash to the digest they were sent for")
    }

    @Test func framesANodeSendsAreUnexpectedFromAClient() throws {
        var node = Node()
        var machine = try Self.ready(node: &node)
        let closing = try Self.closing(Self.receive(&machine, .window(5), node: &node))
        #expect(closing.error.message == "unexpected WINDOW from a client" && closing.countsAsProtocolError)
    }

    // MARK: Results and the window

    @Test func shortJobsDeepenTheWindowOnce() throws {
        var node = Node(cache: [Self.bundle.digest: Self.bundle])
        var machine = try Self.ready(node: &node)
        // Two rounds of eight jobs of 0.1 ms: the estimate falls under 2 ms during the
        // first, so its flush carries WINDOW 256 (4 workers × 64); the second none.
        for round in 0..<2 {
            let ids = (1...8).map { UInt64(round * 8 + $0) }
            let submission = try Self.submission(Self.receive(&machine, .submit(ids.map { Self.job($0) }), node: &node))
            var flushes = 0
            for job in submission.run {
                if case .scheduleFlush = machine.jobFinished(clientID: job.clientID, result: Self.result(nanoseconds: 100_000)) {
                    flushes += 1
                }
            }
            #expect(flushes == 1, "one flush per loop turn")
            let batch = try Self.batch(machine.flush())
            #expect(batch.results.map(\.id) == ids, "results go back under the client's ids")
            #expect(batch.maxFrame == 1 << 20 && batch.tooLarge.isEmpty)
            #expect(batch.window == (round == 0 ? 256 : nil))
            #expect(machine.flush().isNone)
        }
        #expect(machine.window == 256 && machine.maxWindow == 256 && machine.inflight == 0)

        // Long jobs bring it back to 8; the largest window ever given still bounds credit.
        let long = try Self.submission(Self.receive(&machine, .submit((100..<120).map { Self.job($0) }), node: &node))
        for job in long.run { _ = machine.jobFinished(clientID: job.clientID, result: Self.result(nanoseconds: 1_000_000_000)) }
        #expect(try Self.batch(machine.flush()).window == 8)
        #expect(machine.maxWindow == 256)
        // Tiny jobs (5 µs): about 4 ms of them per worker, in a power of two (512 × 4).
        let tiny = try Self.submission(Self.receive(&machine, .submit((120..<128).map { Self.job($0) }), node: &node))
        for job in tiny.run { _ = machine.jobFinished(clientID: job.clientID, result: Self.result(nanoseconds: 5_000)) }
        for id in UInt64(1000)..<1100 {
            for job in try Self.submission(Self.receive(&machine, .submit([Self.job(id)]), node: &node)).run { _ = machine.jobFinished(clientID: job.clientID, result: Self.result(nanoseconds: 5_000)) }
        }
        _ = machine.flush()
        #expect(machine.window == 2048 && machine.maxWindow == 2048)
        guard case .submit = Self.receive(&machine, .submit((200..<400).map { Self.job($0) }), node: &node) else { throw Unexpected(.none) }
    }

    @Test func aResultTooLargeForTheClientFailsAlone() throws {
        var node = Node(cache: [Self.bundle.digest: Self.bundle])
        var machine = try Self.ready(clientMaxFrame: 4096, node: &node)
        _ = Self.receive(&machine, .submit([Self.job(1), Self.job(2)]), node: &node)
        _ = machine.jobFinished(clientID: 1, result: Self.result(payload: [UInt8](repeating: 0x31, count: 5000)))
        _ = machine.jobFinished(clientID: 2, result: Self.result())
        let batch = try Self.batch(machine.flush())
        #expect(batch.maxFrame == 4096)
        #expect(batch.tooLarge.map(\.jobID) == [1] && batch.tooLarge.map(\.bytes) == [9 + 29 + 5000])
        #expect(batch.results[0].code == .resultTooLarge && batch.results[0].nanoseconds == 1_000_000)
        let message = batch.results[0].outcome.result.failure?.message ?? ""
        #expect(message.hasPrefix("result too large (5038 bytes, limit 4096): return less"), "\(message)")
        #expect(batch.results[1].succeeded && batch.results[1].payload == Array("1".utf8))
    }

    // MARK: Drain

    @Test func drainSendsWindowZeroAndGoodbyeAndEndsWaitingJobs() throws {
        var node = Node()
        var machine = try Self.ready(node: &node)
        _ = Self.receive(&machine, .submit([Self.job(1), Self.job(2)]), node: &node)  // waiting for the bundle
        let action = machine.drain()
        guard case .send(let frames, scheduleFlush: true) = action else { throw Unexpected(action) }
        #expect(frames == [.window(0), .goodbye(reason: "node shutting down")])
        #expect(machine.window == 0 && machine.draining && machine.jobsAwaitingBundle == 0)
        let batch = try Self.batch(machine.flush())
        #expect(Set(batch.results.map(\.id)) == [1, 2] && batch.results.allSatisfy { $0.code == .shutdown })
        #expect(batch.window == nil, "no WINDOW while draining")

        // A job submitted now ends with `shutdown` too: the client runs it elsewhere.
        node.cache[Self.bundle.digest] = Self.bundle
        let late = try Self.submission(Self.receive(&machine, .submit([Self.job(3)]), node: &node))
        #expect(late.received == 1 && late.run.isEmpty && late.scheduleFlush)
        let lateBatch = try Self.batch(machine.flush())
        #expect(lateBatch.results.map(\.id) == [3] && lateBatch.results[0].code == .shutdown)
        #expect(lateBatch.results[0].outcome.result.failure?.message == "node shutting down")
        #expect(machine.inflight == 0)
    }

    @Test func drainBeforeHelloOnlyRemembers() {
        var machine = Machine(configuration: Self.configuration)
        #expect(machine.drain().isNone)
        #expect(machine.draining)
    }

    // MARK: Heartbeat

    @Test func heartbeatPingsAndClosesASilentClient() throws {
        var node = Node()
        var machine = try Self.ready(node: &node)
        #expect(machine.tick(now: Self.at(0.5)).isNone)
        guard case .send([.ping(0)], scheduleFlush: false) = machine.tick(now: Self.at(1)) else { throw Unexpected(.none) }
        // Any frame is a sign of life.
        #expect(Self.receive(&machine, .pong(0), at: Self.at(1.5), node: &node).isNone)
        guard case .send([.ping(0)], scheduleFlush: false) = machine.tick(now: Self.at(4)) else { throw Unexpected(.none) }
        let gone = machine.tick(now: Self.at(4.6))
        guard case .closeSilentClient = gone else { throw Unexpected(gone) }
        #expect(machine.tick(now: Self.at(5.6)).isNone)
    }

    @Test func pingIsAnsweredAndStatisticsAreGathered() throws {
        var node = Node()
        var machine = try Self.ready(node: &node)
        guard case .send([.pong(42)], scheduleFlush: false) = Self.receive(&machine, .ping(42), node: &node) else { throw Unexpected(.none) }
        guard case .gatherStatistics(token: 7) = Self.receive(&machine, .statsRequest(7), node: &node) else { throw Unexpected(.none) }
        guard case .send([.stats(token: 7, json: [0x7b, 0x7d])], scheduleFlush: false) = machine.statisticsReady(token: 7, json: Array("{}".utf8)) else {
            throw Unexpected(.none)
        }
    }

    // MARK: Closing

    @Test func aClientThatLeavesHasItsJobsStopped() throws {
        var node = Node(cache: [Self.bundle.digest: Self.bundle])
        var machine = try Self.ready(node: &node)
        _ = Self.receive(&machine, .submit([Self.job(1), Self.job(2)]), node: &node)
        _ = Self.receive(&machine, .submit([Self.job(3, SHA256Digest(hashing: [1]))]), node: &node)
        guard case .closeAfterGoodbye = Self.receive(&machine, .goodbye(reason: "done"), node: &node) else { throw Unexpected(.none) }
        let action = machine.closed()
        guard case .clientLeft(let stop, let awaitingBundle) = action else { throw Unexpected(action) }
        #expect(Set(stop) == [100, 101] && awaitingBundle == 1)
        // Results of stopped jobs find nobody to send to.
        #expect(machine.jobFinished(clientID: 1, result: Self.result()).isNone)
        #expect(machine.flush().isNone)
    }
}

extension NodeSessionStateMachine.Action {
    var isNone: Bool {
        if case .none = self { return true }
        return false
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}
