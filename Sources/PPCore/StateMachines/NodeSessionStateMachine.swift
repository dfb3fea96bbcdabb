public import NIOCore

/// The node's side of one native-protocol session, as a value: the handshake (HELLO,
/// version negotiation, WELCOME), credits, bundles that travel once, results batched
/// per event-loop turn, the window that follows job length, drain, heartbeats, and
/// the client's job ids mapped to the pool's; large arguments travel once like bundles.
///
/// It does no I/O and holds no channel, loop or class: the driver (`NodeSession` in
/// PPNode) turns channel events into calls of its `mutating` events and executes the
/// `Action` each returns (send frames, run or stop pool jobs, close with an ERROR).
/// What is node-wide stays with the driver: the bundle cache and the pool's job ids
/// (passed in as lookups when a frame needs them), counters (actions say what to
/// count), and the caps on unauthenticated connections.
///
/// docs/PROTOCOL.md is the specification; the texts of the errors here are what
/// clients and the node's log show.
public struct NodeSessionStateMachine: Sendable {
    // MARK: Configuration

    /// What a session needs to know about its node.
    public struct Configuration: Sendable {
        /// The node's worker processes: windows are sized from them.
        public var workers: Int
        /// The largest frame the node accepts once HELLO has been read (WELCOME says so).
        public var maxFrame: Int
        /// The time a connection has for TLS and HELLO (named in the error when it passes).
        public var handshakeTimeout: Duration
        /// The longest silence tolerated from a client after the handshake.
        public var heartbeatTimeout: Duration
        /// How often the node pings its client.
        public var heartbeatInterval: Duration
        /// The node's name: the executor of the results the session makes itself.
        public var nodeName: String

        /// Creates a configuration.
        public init(
            workers: Int,
            maxFrame: Int = NodeProtocol.defaultMaxFrame,
            handshakeTimeout: Duration = .seconds(5),
            heartbeatTimeout: Duration = .seconds(3),
            heartbeatInterval: Duration = .seconds(1),
            nodeName: String
        ) {
            self.workers = workers
            self.maxFrame = maxFrame
            self.handshakeTimeout = handshakeTimeout
            self.heartbeatTimeout = heartbeatTimeout
            self.heartbeatInterval = heartbeatInterval
            self.nodeName = nodeName
        }
    }

    // MARK: Actions

    /// What the driver does after an event.
    public enum Action: Sendable {
        /// Nothing.
        case none
        /// Write these frames, in one write; then, when `scheduleFlush` (jobs that
        /// waited for a bundle ended with `shutdown` as the node drains), schedule a flush.
        case send([NodeMessage], scheduleFlush: Bool = false)
        /// HELLO was accepted: raise the decoder's frame limit to `maxFrame` (the largest
        /// frame the node accepts from now on), stop counting the connection as
        /// unauthenticated, stop the handshake timer, send WELCOME (the version chosen,
        /// the client's first window, `maxFrame` and the node's info JSON), start the
        /// heartbeat timer. `clientName` is cut and escaped for logs.
        case welcome(version: UInt16, window: UInt32, maxFrame: UInt32, clientName: String)
        /// A SUBMIT within the window: count the jobs it carried (the node's
        /// `jobs_received` counter), send the NEED and NEED_BLOB frames in `need` (for
        /// bundles and large arguments the node lacks, each once while its jobs wait),
        /// run the jobs that have everything, and schedule a flush if jobs ended at once
        /// (the node drains).
        case submit(received: Int, run: [JobToRun], need: [NodeMessage], scheduleFlush: Bool)
        /// A BUNDLE that hashes to its digest: store it in the node's cache, run the
        /// jobs that waited for it and have everything now, send `need` for what the
        /// others still lack.
        case storeBundle(FunctionBundle, run: [JobToRun], need: [NodeMessage])
        /// A BLOB that hashes to its digest and that jobs wait for: store it in the
        /// node's blob cache (counting `blobs_received`), run and ask as for a bundle.
        case storeBlob(digest: SHA256Digest, bytes: [UInt8], run: [JobToRun], need: [NodeMessage])
        /// Cancel these pool jobs if they have not started (CANCEL).
        case cancelPoolJobs([UInt64])
        /// Stop these pool jobs, queued or running (STOP).
        case stopPoolJobs([UInt64])
        /// Gather the node's counters, then call `statisticsReady(token:json:)`.
        case gatherStatistics(token: UInt64)
        /// Results are waiting: call `flush()` once the current event-loop turn is over,
        /// so the results of one turn travel in one write.
        case scheduleFlush
        /// Write these results, in the order they ended, split so no RESULTS frame
        /// exceeds `maxFrame` (the largest frame the client accepts), and the new
        /// `window` if it changed, in one write; log the results replaced by a
        /// `resultTooLarge` error (the client's job id, and the size of the RESULTS
        /// frame it would have needed).
        case sendResults([JobResult], maxFrame: Int, window: UInt32?, tooLarge: [(jobID: UInt64, bytes: Int)])
        /// Close the connection for `error` (its code and message are sent and logged),
        /// sending it in an ERROR frame first when `sendErrorFrame` (TLS is up, so
        /// there is someone to send it to); the node's `protocol_errors` counter counts
        /// it when `countsAsProtocolError`.
        case closeWithError(NodeProtocolError, sendErrorFrame: Bool, countsAsProtocolError: Bool)
        /// The client said goodbye: close.
        case closeAfterGoodbye
        /// The client was silent past the heartbeat timeout: close.
        case closeSilentClient
        /// The connection is gone: stop its pool jobs (a client that left does not
        /// want them); `awaitingBundle` jobs were dropped before they reached the pool.
        case clientLeft(stopPoolJobs: [UInt64], awaitingBundle: Int)
    }

    /// A job for the node's pool.
    public struct JobToRun: Sendable {
        /// The client's id of the job (its result goes back under it).
        public var clientID: UInt64
        /// The id the job has in the pool.
        public var poolID: UInt64
        /// The function.
        public var bundle: FunctionBundle
        /// Its arguments.
        public var arguments: JobArguments
        /// The longest it may run, or `nil`.
        public var timeout: Duration?
    }

    // MARK: State

    private enum State: Sendable {
        /// The TLS handshake and HELLO are not done.
        case awaitingHello
        /// HELLO accepted: jobs flow.
        case ready(Ready)
        /// Closing (after an error, a goodbye, a silence): nothing more is sent.
        case closing
        /// The connection is gone.
        case closed
    }

    private struct Ready: Sendable {
        /// The largest frame the client accepts (from its HELLO).
        var clientMaxFrame: Int
        var heartbeat: Heartbeat
    }

    /// The node's configuration.
    public let configuration: Configuration
    private var state = State.awaitingHello
    /// TLS is up: ERROR frames can be sent (before, there is nobody to send them to).
    private var tlsIsEstablished = false
    /// The node drains: no new job runs here.
    public private(set) var draining = false
    /// The window the client was last given.
    public private(set) var window: Int
    /// The largest window the client was ever given: more jobs in flight is over credit.
    public private(set) var maxWindow: Int
    /// Jobs received and not answered yet.
    public private(set) var inflight = 0
    /// Client job id → pool job id, for CANCEL, STOP and a client that leaves.
    private var poolJobIDs: [UInt64: UInt64] = [:]
    /// Jobs waiting for their bundle or a large argument, by the digest they wait for
    /// (NEED or NEED_BLOB was sent once for each), with the bundle once it is known.
    private var parked: [SHA256Digest: [(job: WireJob, bundle: FunctionBundle?)]] = [:]
    /// Results of this event-loop turn, not written yet.
    private var pendingResults: [JobResult] = []
    private var flushScheduled = false
    private var jobTime = JobTimeEstimator(trustsFirstSample: true)

    /// Creates the machine of a new connection, awaiting TLS and HELLO.
    public init(configuration: Configuration) {
        self.configuration = configuration
        self.window = Self.longJobWindow(workers: configuration.workers)
        self.maxWindow = self.window
    }

    /// Whether HELLO was accepted and the session is not closing.
    public var isReady: Bool { if case .ready = self.state { true } else { false } }

    /// Jobs waiting for a bundle or a large argument.
    public var jobsAwaitingBundle: Int { self.parked.values.reduce(0) { $0 + $1.count } }

    // MARK: Connection events

    /// A connection was accepted (and passed the node's caps).
    ///
    /// - Parameter nodeDraining: the node is shutting down: the connection is closed.
    public mutating func connected(nodeDraining: Bool) -> Action {
        nodeDraining ? self.close(.shuttingDown, "node shutting down") : .none
    }

    /// The TLS handshake finished: from now on an error is sent in an ERROR frame.
    public mutating func tlsEstablished() {
        self.tlsIsEstablished = true
    }

    /// The handshake timer fired: a connection still without HELLO is closed.
    public mutating func handshakeTimedOut() -> Action {
        guard case .awaitingHello = self.state else { return .none }
        return self.close(.handshakeTimeout, "no TLS handshake and HELLO within \(self.configuration.handshakeTimeout); closing")
    }

    /// The connection failed to decode a frame (or broke the protocol below this
    /// machine): close with `error`.
    ///
    /// - Parameters:
    ///   - error: what to send in the ERROR frame.
    ///   - countsAsProtocolError: whether the node's `protocol_errors` counts it.
    public mutating func failed(_ error: NodeProtocolError, countsAsProtocolError: Bool = true) -> Action {
        self.close(error.code, error.message, counted: countsAsProtocolError)
    }

    /// The connection is gone (closed by either side).
    public mutating func closed() -> Action {
        self.state = .closed
        let awaitingBundle = self.jobsAwaitingBundle
        self.parked.removeAll()
        self.pendingResults.removeAll()
        return .clientLeft(stopPoolJobs: Array(self.poolJobIDs.values), awaitingBundle: awaitingBundle)
    }

    // MARK: Frames

    /// A frame arrived from the client.
    ///
    /// - Parameters:
    ///   - message: the decoded frame.
    ///   - now: when it arrived (a sign of life).
    ///   - bundle: looks a digest up in the node's bundle cache.
    ///   - blob: looks a digest up in the node's cache of large arguments.
    ///   - poolJobID: hands out the next id of the node's pool.
    public mutating func received(
        _ message: NodeMessage,
        now: NIODeadline,
        bundle: (SHA256Digest) -> FunctionBundle?,
        blob: (SHA256Digest) -> [UInt8]? = { _ in nil },
        poolJobID: () -> UInt64
    ) -> Action {
        switch self.state {
        case .awaitingHello:
            return self.hello(message, now: now)
        case .ready(var ready):
            ready.heartbeat.heard(at: now)
            self.state = .ready(ready)
            return self.serve(message, bundle, blob, poolJobID)
        case .closing, .closed:
            return .none
        }
    }

    private mutating func hello(_ message: NodeMessage, now: NIODeadline) -> Action {
        guard case .hello(let minVersion, let maxVersion, let clientMaxFrame, let name) = message else {
            return self.close(.protocolViolation, "expected HELLO first; is this a ppnode client?", counted: true)
        }
        let version = min(maxVersion, NodeProtocol.version)
        guard version >= max(minVersion, NodeProtocol.minimumVersion) else {
            return self.close(
                .versionMismatch,
                "protocol versions do not overlap: client speaks \(minVersion)-\(maxVersion), node speaks \(NodeProtocol.minimumVersion)-\(NodeProtocol.version); upgrade the older side"
            )
        }
        guard Int(clientMaxFrame) >= NodeProtocol.preambleMaxFrame else {
            return self.close(.protocolViolation, "the client accepts frames of only \(clientMaxFrame) bytes", counted: true)
        }
        let heartbeat = Heartbeat(
            timeout: TimeAmount(self.configuration.heartbeatTimeout),
            interval: TimeAmount(self.configuration.heartbeatInterval),
            now: now
        )
        self.state = .ready(Ready(clientMaxFrame: Int(clientMaxFrame), heartbeat: heartbeat))
        return .welcome(
            version: version,
            window: UInt32(self.window),
            maxFrame: UInt32(self.configuration.maxFrame),
            clientName: PeerText.cut(name, limit: 64)
        )
    }

    private mutating func serve(
        _ message: NodeMessage, _ bundle: (SHA256Digest) -> FunctionBundle?, _ blob: (SHA256Digest) -> [UInt8]?, _ poolJobID: () -> UInt64
    ) -> Action {
        switch message {
        case .submit(let jobs):
            return self.submit(jobs, bundle, blob, poolJobID)
        case .bundle(let digest, let spec):
            let received = FunctionBundle(spec: spec)
            guard received.digest == digest else {
                return self.close(.protocolViolation, "bundle bytes do not hash to the digest they were sent for", counted: true)
            }
            var run: [JobToRun] = [], need: [NodeMessage] = []
            for p in self.parked.removeValue(forKey: digest) ?? [] { self.advance(p.job, received, bundle, blob, poolJobID, &run, &need) }
            return .storeBundle(received, run: run, need: need)
        case .blob(let digest, let bytes):
            guard SHA256Digest(hashing: bytes) == digest else {
                return self.close(.protocolViolation, "blob bytes do not hash to the digest they were sent for", counted: true)
            }
            // A blob nobody waits for (the jobs ended as the node drains) is dropped.
            guard let waiting = self.parked.removeValue(forKey: digest) else { return .none }
            var run: [JobToRun] = [], need: [NodeMessage] = []
            for var p in waiting {
                for i in p.job.arguments.blobs.indices where p.job.arguments.blobs[i].digest == digest { p.job.arguments.blobs[i].bytes = bytes }
                self.advance(p.job, p.bundle, bundle, blob, poolJobID, &run, &need)
            }
            return .storeBlob(digest: digest, bytes: bytes, run: run, need: need)
        case .cancel(let id):
            return self.poolJobIDs[id].map { .cancelPoolJobs([$0]) } ?? .none
        case .stop(let id):
            return self.poolJobIDs[id].map { .stopPoolJobs([$0]) } ?? .none
        case .ping(let token):
            return .send([.pong(token)])
        case .pong:
            return .none
        case .statsRequest(let token):
            return .gatherStatistics(token: token)
        case .goodbye:
            self.state = .closing
            return .closeAfterGoodbye
        case .hello, .welcome, .error, .results, .need, .needBlob, .window, .stats:
            return self.close(.protocolViolation, "unexpected \(message.kind.name) from a client", counted: true)
        }
    }

    private mutating func submit(
        _ jobs: [WireJob], _ bundle: (SHA256Digest) -> FunctionBundle?, _ blob: (SHA256Digest) -> [UInt8]?, _ poolJobID: () -> UInt64
    ) -> Action {
        // The window bounds the node's queue: a client past the largest window it was
        // ever given is closed, so no client can flood the node.
        guard self.inflight + jobs.count <= self.maxWindow else {
            return self.close(
                .overCredit,
                "client sent \(jobs.count) jobs with \(self.inflight) in flight, past its window of \(self.maxWindow)",
                counted: true
            )
        }
        self.inflight += jobs.count
        if self.draining {
            return .submit(received: jobs.count, run: [], need: [], scheduleFlush: self.endWithShutdown(jobs))
        }
        var run: [JobToRun] = [], need: [NodeMessage] = []
        run.reserveCapacity(jobs.count)
        for job in jobs { self.advance(job, nil, bundle, blob, poolJobID, &run, &need) }
        return .submit(received: jobs.count, run: run, need: need, scheduleFlush: false)
    }

    /// Runs `job` when its bundle and large arguments are all here (filling in the
    /// blobs' bytes from the cache); else parks it under the first digest it lacks,
    /// asking the client for that digest unless other jobs wait for it already.
    private mutating func advance(
        _ job: WireJob, _ known: FunctionBundle?, _ lookBundle: (SHA256Digest) -> FunctionBundle?, _ lookBlob: (SHA256Digest) -> [UInt8]?,
        _ poolJobID: () -> UInt64, _ run: inout [JobToRun], _ need: inout [NodeMessage]
    ) {
        guard let bundle = known ?? lookBundle(job.digest) else {
            return self.park(job, nil, under: job.digest, ask: .need(job.digest), &need)
        }
        var job = job
        for i in job.arguments.blobs.indices where job.arguments.blobs[i].bytes.isEmpty {
            let digest = job.arguments.blobs[i].digest
            guard let bytes = lookBlob(digest) else { return self.park(job, bundle, under: digest, ask: .needBlob(digest), &need) }
            job.arguments.blobs[i].bytes = bytes
        }
        run.append(self.jobToRun(job, bundle, poolJobID: poolJobID))
    }

    private mutating func park(_ job: WireJob, _ bundle: FunctionBundle?, under digest: SHA256Digest, ask: NodeMessage, _ need: inout [NodeMessage]) {
        if self.parked[digest] == nil { need.append(ask) }
        self.parked[digest, default: []].append((job, bundle))
    }

    private mutating func jobToRun(_ job: WireJob, _ bundle: FunctionBundle, poolJobID: () -> UInt64) -> JobToRun {
        let poolID = poolJobID()
        self.poolJobIDs[job.id] = poolID
        return JobToRun(
            clientID: job.id,
            poolID: poolID,
            bundle: bundle,
            arguments: job.arguments,
            timeout: job.timeoutMilliseconds > 0 ? .milliseconds(Int64(job.timeoutMilliseconds)) : nil
        )
    }

    /// The node's counters, asked for by STATS_REQUEST `token`, are ready.
    public mutating func statisticsReady(token: UInt64, json: [UInt8]) -> Action {
        guard case .ready = self.state else { return .none }
        return .send([.stats(token: token, json: json)])
    }

    // MARK: Results

    /// A job of this session ended in the pool.
    ///
    /// - Parameters:
    ///   - clientID: the client's id of the job.
    ///   - result: how it ended (its id is replaced by `clientID`).
    public mutating func jobFinished(clientID: UInt64, result: JobResult) -> Action {
        self.finish(clientID, result) ? .scheduleFlush : .none
    }

    /// Ends a job: one credit back, the result queued for the next flush.
    ///
    /// - Returns: whether a flush must be scheduled (none was).
    private mutating func finish(_ clientID: UInt64, _ result: JobResult) -> Bool {
        self.inflight -= 1
        self.poolJobIDs.removeValue(forKey: clientID)
        guard case .ready = self.state else { return false }
        var result = result
        result.id = clientID
        self.pendingResults.append(result)
        self.jobTime.add(nanoseconds: result.nanoseconds)
        guard !self.flushScheduled else { return false }
        self.flushScheduled = true
        return true
    }

    /// The event-loop turn is over (or the session closes): write what ended.
    public mutating func flush() -> Action {
        self.flushScheduled = false
        guard case .ready(let ready) = self.state, !self.pendingResults.isEmpty else { return .none }
        var results: [JobResult] = [], tooLarge: [(jobID: UInt64, bytes: Int)] = [], window: UInt32?
        results.reserveCapacity(self.pendingResults.count)
        for result in self.pendingResults {
            // A result that cannot fit in one frame the client accepts fails alone; the
            // others still travel.
            let size = NodeMessage.resultFrameOverhead + result.encodedSize
            guard size > ready.clientMaxFrame else {
                results.append(result)
                continue
            }
            tooLarge.append((result.id, size))
            let error = JobError(
                code: .resultTooLarge,
                message: "result too large (\(size) bytes, limit \(ready.clientMaxFrame)): return less, or write large data to a file and return its path"
            )
            var failed = JobResult(id: result.id, error: error, executor: result.executor)
            failed.nanoseconds = result.nanoseconds
            results.append(failed)
        }
        self.pendingResults.removeAll(keepingCapacity: true)
        // Short jobs get a deep window (pipelining); long ones a shallow one, so a
        // client does not park work here that its other executors could run.
        if !self.draining {
            let wanted = self.jobTime.jobsAreShort ? Self.shortJobWindow(workers: self.configuration.workers, jobTime: self.jobTime) : Self.longJobWindow(workers: self.configuration.workers)
            if wanted != self.window {
                self.window = wanted
                self.maxWindow = max(self.maxWindow, wanted)
                window = UInt32(wanted)
            }
        }
        return .sendResults(results, maxFrame: ready.clientMaxFrame, window: window, tooLarge: tooLarge)
    }

    /// The window while jobs are short (mean under 2 ms): deep pipelining, about 4 ms of
    /// work per worker (so that workers get jobs in batches of hundreds when they are
    /// tiny), from 64 to 1,024 jobs per worker in powers of two (a WINDOW is sent only
    /// when the estimate crosses one).
    public static func shortJobWindow(workers: Int, jobTime: JobTimeEstimator) -> Int {
        let perWorker = jobTime.jobs(fittingIn: JobTimeEstimator.windowOfWork, limit: 1024)
        return max(1, workers) * max(64, 1 << (Int.bitWidth - 1 - perWorker.leadingZeroBitCount))
    }

    /// The window while jobs are long: a little more than the workers can run; 0 on a
    /// node of no workers (a standby node holds no jobs).
    public static func longJobWindow(workers: Int) -> Int { workers == 0 ? 0 : max(2, workers * 2) }

    // MARK: Drain and heartbeat

    /// The node shuts down: window 0 and GOODBYE; jobs still waiting for a bundle or a blob will
    /// not run here and end with `shutdown` (the client runs them elsewhere), as will
    /// jobs submitted from now on. Running and queued pool jobs are the pool's to end.
    public mutating func drain() -> Action {
        self.draining = true
        guard case .ready = self.state else { return .none }
        self.window = 0
        let waiting = self.parked.values.flatMap { $0.map(\.job) }
        self.parked.removeAll()
        return .send([.window(0), .goodbye(reason: "node shutting down")], scheduleFlush: self.endWithShutdown(waiting))
    }

    /// The heartbeat timer fired: ping the client, or close if it has been silent past
    /// the timeout.
    public mutating func tick(now: NIODeadline) -> Action {
        guard case .ready(var ready) = self.state else { return .none }
        let action = ready.heartbeat.tick(at: now)
        self.state = .ready(ready)
        switch action {
        case .none:
            return .none
        case .ping:
            return .send([.ping(0)])
        case .timedOut:
            self.state = .closing
            return .closeSilentClient
        }
    }

    // MARK: Helpers

    /// Ends `jobs` with `shutdown` (the client runs them elsewhere).
    ///
    /// - Returns: whether a flush must be scheduled.
    private mutating func endWithShutdown(_ jobs: [WireJob]) -> Bool {
        var scheduleFlush = false
        for job in jobs {
            let result = JobResult(id: job.id, error: JobError(code: .shutdown, message: "node shutting down"), executor: self.configuration.nodeName)
            scheduleFlush = self.finish(job.id, result) || scheduleFlush
        }
        return scheduleFlush
    }

    /// Moves to closing and says how; nothing once closing.
    private mutating func close(_ code: NodeErrorCode, _ message: String, counted: Bool = false) -> Action {
        switch self.state {
        case .closing, .closed:
            return .none
        case .awaitingHello, .ready:
            self.state = .closing
            return .closeWithError(NodeProtocolError(code, message), sendErrorFrame: self.tlsIsEstablished, countsAsProtocolError: counted)
        }
    }
}
