public import NIOCore

/// One client connection to a node, as a value: TLS, then HELLO and WELCOME, then jobs
/// under the node's window, bundles on request, results, heartbeats, a node's drain.
///
/// Everything the node sends is checked here: a WINDOW is capped, a NEED (NEED_BLOB) is
/// answered once per bundle (large argument) and only for those of jobs the node holds, a result must
/// be for a job in flight and (for a JSON job) carry one JSON value, and a job with a
/// timeout that gets no result within twice its timeout plus `deadlineGrace` fails,
/// whatever the node does. The driver (`RemoteExecutor`) turns channel events into
/// calls and executes the actions; it encodes and writes the frames.
public struct NodeConnectionStateMachine: Sendable {
    /// What the driver does.
    public enum Action: Sendable {
        /// Write these frames.
        case send([NodeMessage])
        /// The handshake is done: the node takes jobs.
        case ready
        /// Results to deliver (their executor is set; jobs that failed here have one
        /// too), jobs the node handed back unrun (draining) for the scheduler to run
        /// elsewhere.
        case deliver(results: [(Job, JobResult)], handedBack: [Job], send: [NodeMessage])
        /// Close the connection; the reason is kept for `closed()`.
        case close
    }

    private enum Phase: Sendable, Equatable {
        case handshaking, awaitingWelcome, ready, draining, closed
    }

    /// The largest window a node may give (jobs in flight on one connection).
    public static let maxWindow = 16_384
    /// Added to twice a job's timeout before the client gives up on its result.
    public static let deadlineGrace: TimeAmount = .seconds(5)
    /// The TLS handshake and WELCOME must be done within this time.
    public static let handshakeTimeout: TimeAmount = .seconds(5)

    /// The node's name in messages and results (`host:port`).
    public let name: String
    private let clientName: String
    private var phase = Phase.handshaking
    private var window = 0
    /// The jobs the node holds, each with the time the client stops waiting for it
    /// (jobs with a timeout only). Their bundles are what a NEED may ask for.
    private var inflight: [UInt64: (job: Job, deadline: NIODeadline?)] = [:]
    /// The digests sent on this connection, by the frame type that asked (NEED, NEED_BLOB).
    private var sent: [NodeProtocol.Kind: Set<SHA256Digest>] = [:]
    private var heartbeat: Heartbeat
    /// Why the connection ends (the first reason wins).
    public private(set) var closeReason: String?
    /// How long the link should wait before it connects again, when not its backoff.
    public private(set) var retryAfter: TimeAmount?
    /// The handshake completed once on this connection.
    public private(set) var wasReady = false
    /// The frame limit the decoder should apply now: a few KiB until WELCOME.
    public private(set) var maxFrame = NodeProtocol.preambleMaxFrame
    /// The largest frame the node accepts (its WELCOME says): SUBMIT frames stay under it.
    private var nodeMaxFrame = NodeProtocol.defaultMaxFrame
    /// What the node said of itself in WELCOME (its beacon object: name, Python
    /// version...), when that parsed.
    public private(set) var node: NodeBeacon?

    /// Creates the machine for a new connection.
    public init(name: String, clientName: String, heartbeatTimeout: TimeAmount, now: NIODeadline) {
        self.name = name
        self.clientName = clientName
        self.heartbeat = Heartbeat(timeout: heartbeatTimeout, interval: .seconds(1), now: now)
    }

    // MARK: State

    /// Whether the node takes jobs (authenticated, not draining).
    public var isUsable: Bool { self.phase == .ready }

    /// Whether the node takes jobs at all: ready with a window (a node of no workers
    /// gives 0).
    public var takesJobs: Bool { self.phase == .ready && self.window > 0 }

    /// How many more jobs the node takes now.
    public var freeSlots: Int { self.phase == .ready ? max(0, self.window - self.inflight.count) : 0 }

    // MARK: Handshake

    /// TLS is up: say HELLO.
    public mutating func tlsEstablished() -> Action {
        guard self.phase == .handshaking else { return .send([]) }
        self.phase = .awaitingWelcome
        return .send([.hello(minVersion: NodeProtocol.minimumVersion, maxVersion: NodeProtocol.version, maxFrame: UInt32(NodeProtocol.defaultMaxFrame), name: self.clientName)])
    }

    /// The handshake timer fired.
    public mutating func handshakeTimerFired() -> Action {
        guard self.phase == .handshaking || self.phase == .awaitingWelcome else { return .send([]) }
        return self.abort("no TLS handshake and WELCOME from the node within \(Self.handshakeTimeout.nanoseconds / 1_000_000_000) s")
    }

    // MARK: Jobs

    /// Sends jobs (at most `freeSlots`). Returns the SUBMIT frames (as many as keep
    /// each under the node's frame limit), or, when the connection cannot take them,
    /// nil: the driver hands them back.
    public mutating func submit(_ jobs: [Job], now: NIODeadline) -> [NodeMessage]? {
        guard self.phase == .ready || self.phase == .draining, !jobs.isEmpty else { return nil }
        var frames: [NodeMessage] = [], batch: [WireJob] = [], bytes = 0
        for job in jobs {
            let deadline = job.timeout.map { now + .nanoseconds($0.nanosecondsInt64 &* 2) + Self.deadlineGrace }
            self.inflight[job.id] = (job, deadline)
            let timeout = job.timeout.map { UInt32(clamping: max(1, $0.nanosecondsInt64 / 1_000_000)) } ?? 0
            let size = WireJob.minimumSize + job.arguments.json.count + (job.arguments.blobs.isEmpty ? 0 : 2 + 34 * job.arguments.blobs.count)
            if !batch.isEmpty, bytes + size > self.nodeMaxFrame - 9 {
                frames.append(.submit(batch))
                (batch, bytes) = ([], 0)
            }
            batch.append(WireJob(id: job.id, digest: job.bundle.digest, timeoutMilliseconds: timeout, arguments: job.arguments))
            bytes += size
        }
        return frames + [.submit(batch)]
    }

    /// For a job the node holds: CANCEL (it ends there if it has not started), or with
    /// `stop`, STOP (queued or running, it ends `cancelled`).
    public func cancel(jobID: UInt64, stop: Bool) -> NodeMessage? {
        guard self.inflight[jobID] != nil else { return nil }
        return stop ? .stop(id: jobID) : .cancel(id: jobID)
    }

    // MARK: Frames from the node

    /// A frame from the node arrived.
    public mutating func received(_ message: NodeMessage, now: NIODeadline) -> Action {
        self.heartbeat.heard(at: now)
        switch (self.phase, message) {
        case (_, .error(let code, let text)):
            if code == NodeErrorCode.versionMismatch.rawValue { self.retryAfter = .seconds(10) }
            return self.abort("the node refused us: \(PeerText.cut(text))")
        case (.awaitingWelcome, .welcome(let version, let window, let nodeMaxFrame, let info)):
            guard version >= NodeProtocol.minimumVersion, version <= NodeProtocol.version else {
                self.retryAfter = .seconds(10)
                return self.abort("the node chose protocol version \(version), which this client does not speak")
            }
            self.window = min(Int(window), Self.maxWindow)
            self.maxFrame = NodeProtocol.defaultMaxFrame
            self.nodeMaxFrame = max(Int(nodeMaxFrame), NodeProtocol.preambleMaxFrame)
            self.node = NodeBeacon(json: info)
            self.phase = .ready
            self.wasReady = true
            return .ready
        case (.ready, .results(let results)), (.draining, .results(let results)):
            return self.results(results)
        case (.ready, .need(let digest)), (.draining, .need(let digest)), (.ready, .needBlob(let digest)), (.draining, .needBlob(let digest)):
            return self.answer(message.kind, digest)
        case (.ready, .window(let w)), (.draining, .window(let w)):
            self.window = min(Int(w), Self.maxWindow)
            return .send([])
        case (.ready, .ping(let token)), (.draining, .ping(let token)):
            return .send([.pong(token)])
        case (_, .pong), (_, .stats):
            // Stats answers are matched to their requests by the driver.
            return .send([])
        case (.ready, .goodbye(let reason)), (.draining, .goodbye(let reason)):
            self.phase = .draining
            self.closeReason = self.closeReason ?? "the node said goodbye: \(PeerText.cut(reason))"
            return .send([])
        default:
            return self.abort("unexpected \(PeerText.cut("\(message)", limit: 80)) from the node")
        }
    }

    /// Answers a NEED (NEED_BLOB) once per digest, and only for a bundle (large argument)
    /// of a job the node holds.
    private mutating func answer(_ kind: NodeProtocol.Kind, _ digest: SHA256Digest) -> Action {
        let what = kind == .need ? "function bundle" : "large argument"
        guard self.sent[kind, default: []].insert(digest).inserted else {
            return self.abort("the node asked again for \(what) \(digest), which it was sent on this connection")
        }
        let jobs = self.inflight.values.lazy.map(\.job)
        let reply: NodeMessage? =
            kind == .need
            ? jobs.first { $0.bundle.digest == digest }.map { .bundle(digest: digest, spec: $0.bundle.spec) }
            : jobs.compactMap { $0.arguments.blobs.first { $0.digest == digest } }.first.map { .blob(digest: digest, bytes: $0.bytes) }
        guard let reply else {
            return self.abort("the node asked for a \(what) \(digest) \(kind == .need ? "this client never sent" : "of no job it holds")")
        }
        return .send([reply])
    }

    private mutating func results(_ results: [JobResult]) -> Action {
        var delivered: [(Job, JobResult)] = []
        var handedBack: [Job] = []
        for var r in results {
            guard let job = self.inflight.removeValue(forKey: r.id)?.job else { continue }
            r.executor = self.name
            // A JSON job's value must be one JSON value; an opaque job's is bytes.
            if r.succeeded, !job.arguments.isOpaque, !JSONCheck.isSingleValue(r.payload) {
                let message = "the node sent a result that is not one JSON value (\(r.payload.count) bytes); the job's value was dropped"
                delivered.append((job, self.failure(job, .protocolError, message)))
            } else if r.code == .shutdown {
                // The node is draining: run the job elsewhere, and send it nothing more.
                self.phase = .draining
                handedBack.append(job)
            } else {
                delivered.append((job, r))
            }
        }
        return .deliver(results: delivered, handedBack: handedBack, send: [])
    }

    /// The result of a job that failed here.
    private func failure(_ job: Job, _ code: JobError.Code, _ message: String) -> JobResult {
        JobResult(id: job.id, error: JobError(code: code, message: message), executor: self.name)
    }

    // MARK: Time

    /// The periodic timer (four times a second): heartbeat, and jobs past their deadline
    /// fail here (the node is asked to cancel them).
    public mutating func tick(now: NIODeadline) -> Action {
        guard self.wasReady, self.phase != .closed else { return .send([]) }
        let beat = self.heartbeat.tick(at: now)
        if beat == .timedOut {
            return self.abort("no heartbeat for \(Duration.nanoseconds(self.heartbeat.timeout.nanoseconds))")
        }
        var frames: [NodeMessage] = beat == .ping ? [.ping(0)] : []
        var failed: [(Job, JobResult)] = []
        for (id, (job, deadline)) in self.inflight where deadline ?? .distantFuture <= now {
            self.inflight[id] = nil
            frames.append(.cancel(id: id))
            let limit = job.timeout.map { "\(Double($0.nanosecondsInt64) / 1e9)" } ?? "?"
            let message = "no result from node \(self.name) within twice the job's timeout of \(limit) s plus \(Self.deadlineGrace.nanoseconds / 1_000_000_000) s; the client stopped waiting"
            failed.append((job, self.failure(job, .timeout, message)))
        }
        return failed.isEmpty ? .send(frames) : .deliver(results: failed, handedBack: [], send: frames)
    }

    // MARK: Ending

    /// A transport error: TLS (a failed handshake means another key; it will not work in
    /// 200 ms) or a frame that broke the protocol.
    public mutating func errorCaught(_ reason: String, keyRejected: Bool = false) -> Action {
        if keyRejected { self.retryAfter = .seconds(10) }
        self.closeReason = self.closeReason ?? reason
        return .close
    }

    /// The client closes the connection; with `goodbye` it says so first.
    public mutating func close(goodbye: Bool) -> Action {
        self.closeReason = self.closeReason ?? "closed by the client"
        return goodbye && self.wasReady && self.phase != .closed ? .send([.goodbye(reason: "client done")]) : .send([])
    }

    /// The connection is gone: returns the jobs the node still held (oldest first), for
    /// the scheduler to run elsewhere, and why it ended.
    public mutating func closed() -> (jobs: [Job], reason: String) {
        self.phase = .closed
        let jobs = self.inflight.values.map(\.job).sorted { $0.id < $1.id }
        self.inflight.removeAll()
        return (jobs, self.closeReason ?? "the node closed the connection")
    }

    private mutating func abort(_ reason: String) -> Action {
        self.closeReason = reason
        return .close
    }
}
