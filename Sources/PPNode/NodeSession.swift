import Logging
import NIOCore
import PPCore
import PPTLS
import PPWorkers

/// One client connection of a node: TLS handshake (the `TLSHandler` below this one),
/// HELLO and WELCOME, then jobs, bundles, results, heartbeats.
///
/// Nothing reaches this handler before TLS has proved that the peer holds the cluster
/// key. Until HELLO has been read, frames are limited to
/// `NodeProtocol.preambleMaxFrame` bytes, and the connection counts against the
/// node's caps on unauthenticated connections (per source address and in total).
///
/// `@unchecked Sendable` is safe because the session lives on the node's single event
/// loop; pool completions (which capture it) run on that same loop.
final class NodeSession: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = NodeMessage

    private enum Phase {
        case awaitingHello
        case ready
        case closed
    }

    private let node: NodeServer
    private var channel: (any Channel)?
    private let peer: String
    private let peerHost: String
    private let frameLimit: FrameLimit
    private var phase = Phase.awaitingHello
    private var clientName = "?"
    private var logger: Logger
    /// TLS is up: ERROR frames can be sent (before, there is nobody to send them to).
    private var tlsEstablished = false
    /// Counted in the node's unauthenticated connections until HELLO.
    private var countedUnauthenticated = false
    /// The largest frame the client accepts (from its HELLO).
    private var clientMaxFrame = NodeProtocol.preambleMaxFrame

    // Jobs
    private var window: Int
    private var maxWindow: Int
    private var inflight = 0
    private var nodeJobIDs: [UInt64: UInt64] = [:]  // client job id -> pool job id
    private var parked: [SHA256Digest: [WireJob]] = [:]
    private var pendingResults: [JobResult] = []
    private var flushScheduled = false
    private var jobTime = JobTimeEstimator()
    private var draining = false

    // Liveness
    private var lastHeard = NIODeadline.now()
    private var heartbeat: RepeatedTask?
    private var handshakeTimer: Scheduled<Void>?

    init(node: NodeServer, channel: any Channel, frameLimit: FrameLimit) {
        self.node = node
        self.channel = channel
        self.frameLimit = frameLimit
        self.peerHost = channel.remoteAddress?.ipAddress ?? "?"
        self.peer = channel.remoteAddress.map { PeerText.address($0) } ?? "?"
        var logger = node.configuration.logger
        logger[metadataKey: "peer"] = "\(self.peer)"
        self.logger = logger
        let workers = max(1, node.workers)
        self.window = max(2, workers * 2)
        self.maxWindow = self.window
    }

    private var state: NodeState { self.node.state }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        // Strangers get almost nothing: past the caps, the connection is closed before
        // TLS allocates anything for it.
        if let refusal = self.state.admitUnauthenticated(host: self.peerHost, caps: self.node.configuration.unauthenticatedCaps) {
            self.state.refusedConnections += 1
            self.logger.debug("connection refused", metadata: ["reason": "\(refusal)"])
            self.phase = .closed
            self.channel = nil
            context.close(promise: nil)
            return
        }
        self.countedUnauthenticated = true
        self.state.sessions[ObjectIdentifier(self)] = self
        self.state.sessionsAccepted += 1
        let limit = self.node.configuration.handshakeTimeout
        self.handshakeTimer = context.eventLoop.scheduleTask(in: .nanoseconds(limit.nanosecondsInt64)) { [self] in
            if case .ready = self.phase { return }
            self.fail(.handshakeTimeout, "no TLS handshake and HELLO within \(limit); closing", logLevel: .notice)
        }
        if self.state.draining { self.fail(.shuttingDown, "node shutting down", logLevel: .info) }
    }

    private func leaveUnauthenticated() {
        guard self.countedUnauthenticated else { return }
        self.countedUnauthenticated = false
        self.state.releaseUnauthenticated(host: self.peerHost)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.leaveUnauthenticated()
        self.phase = .closed
        self.channel = nil
        self.heartbeat?.cancel()
        self.handshakeTimer?.cancel()
        self.state.sessions.removeValue(forKey: ObjectIdentifier(self))
        // Jobs of a client that left are not worth running: stop them, queued or running
        // (a running job's worker is killed and replaced).
        let jobs = Array(self.nodeJobIDs.values)
        let parked = self.parked.values.reduce(0) { $0 + $1.count }
        if !jobs.isEmpty || parked > 0 {
            self.logger.info("client left; stopping its jobs", metadata: ["jobs": "\(jobs.count)", "awaiting.bundle": "\(parked)"])
        }
        if !jobs.isEmpty { self.node.pool.stop(jobIDs: jobs) }
        self.parked.removeAll()
        self.logger.debug("session closed")
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let e = error as? TLSError {
            if e.code == .handshakeFailed { self.state.authFailures += 1 } else { self.state.protocolErrors += 1 }
            self.logger.notice("closing connection", metadata: ["reason": "\(PeerText.cut(e.message))"])
            self.phase = .closed
            context.close(promise: nil)
        } else if let e = error as? NodeProtocolError {
            self.state.protocolErrors += 1
            self.fail(e.code, e.message, logLevel: .warning)
        } else if let e = error as? ByteToMessageDecoderError.PayloadTooLargeError {
            self.fail(.frameTooLarge, "\(e)", logLevel: .warning)
        } else {
            self.logger.info("connection error", metadata: ["error": "\(PeerText.cut("\(error)"))"])
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let cipher) = event as? TLSHandler.Event {
            self.tlsEstablished = true
            self.logger.debug("TLS established", metadata: ["tls.cipher": "\(cipher)"])
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.lastHeard = .now()
        let message = Self.unwrapInboundIn(data)
        switch self.phase {
        case .awaitingHello:
            self.hello(message, context: context)
        case .ready:
            self.serve(message, context: context)
        case .closed:
            break
        }
    }

    // MARK: Handshake

    private func hello(_ message: NodeMessage, context: ChannelHandlerContext) {
        guard case .hello(let minV, let maxV, let clientMaxFrame, let name) = message else {
            self.state.protocolErrors += 1
            return self.fail(.protocolViolation, "expected HELLO first; is this a ppnode client?", logLevel: .warning)
        }
        let version = min(maxV, NodeProtocol.version)
        guard version >= max(minV, NodeProtocol.minimumVersion) else {
            return self.fail(
                .versionMismatch,
                "protocol versions do not overlap: client speaks \(minV)-\(maxV), node speaks \(NodeProtocol.minimumVersion)-\(NodeProtocol.version); upgrade the older side",
                logLevel: .warning
            )
        }
        guard Int(clientMaxFrame) >= NodeProtocol.preambleMaxFrame else {
            self.state.protocolErrors += 1
            return self.fail(.protocolViolation, "the client accepts frames of only \(clientMaxFrame) bytes", logLevel: .warning)
        }
        self.leaveUnauthenticated()
        self.handshakeTimer?.cancel()
        self.phase = .ready
        self.clientMaxFrame = Int(clientMaxFrame)
        self.frameLimit.value = self.node.configuration.maxFrame
        self.clientName = PeerText.cut(name, limit: 64)
        self.logger[metadataKey: "client"] = "\(self.clientName)"
        self.logger.info("client authenticated")
        self.send(
            .welcome(version: version, window: UInt32(self.window), maxFrame: UInt32(self.node.configuration.maxFrame), info: self.node.infoJSON()),
            context: context
        )
        let timeout = self.node.configuration.heartbeatTimeout
        self.heartbeat = context.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in
            guard let channel = self.channel else { return }
            if NIODeadline.now() - self.lastHeard > .nanoseconds(timeout.nanosecondsInt64) {
                self.logger.notice("client silent past the heartbeat timeout; closing")
                channel.close(promise: nil)
                return
            }
            var buffer = channel.allocator.buffer(capacity: 16)
            NodeMessage.ping(0).write(to: &buffer)
            channel.writeAndFlush(buffer, promise: nil)
        }
    }

    // MARK: Jobs

    private func serve(_ message: NodeMessage, context: ChannelHandlerContext) {
        switch message {
        case .submit(let jobs):
            self.submit(jobs, context: context)
        case .bundle(let digest, let spec):
            let bundle = FunctionBundle(spec: spec)
            guard bundle.digest == digest else {
                self.state.protocolErrors += 1
                return self.fail(.protocolViolation, "bundle bytes do not hash to the digest they were sent for", logLevel: .warning)
            }
            self.state.cache.insert(bundle)
            self.logger.debug("bundle received", metadata: ["bundle": "\(digest)", "bytes": "\(spec.count)"])
            if let jobs = self.parked.removeValue(forKey: digest) {
                self.node.pool.submit(contentsOf: jobs.map { self.poolJob($0, bundle) })
            }
        case .cancel(let id):
            if let poolID = self.nodeJobIDs[id] { self.node.pool.cancel(jobIDs: [poolID]) }
        case .stop(let id):
            if let poolID = self.nodeJobIDs[id] { self.node.pool.stop(jobIDs: [poolID]) }
        case .ping(let token):
            self.send(.pong(token), context: context)
        case .pong:
            break
        case .statsRequest(let token):
            let node = self.node
            Task {
                let json = await node.statisticsJSON()
                node.loop.execute { self.send(.stats(token: token, json: json), context: nil) }
            }
        case .goodbye:
            self.logger.info("client said goodbye")
            context.close(promise: nil)
        default:
            self.state.protocolErrors += 1
            self.fail(.protocolViolation, "unexpected \(message) from a client", logLevel: .warning)
        }
    }

    private func submit(_ jobs: [WireJob], context: ChannelHandlerContext) {
        guard self.inflight + jobs.count <= self.maxWindow else {
            self.state.protocolErrors += 1
            return self.fail(
                .overCredit,
                "client sent \(jobs.count) jobs with \(self.inflight) in flight, past its window of \(self.maxWindow)",
                logLevel: .warning
            )
        }
        self.state.jobsReceived += jobs.count
        self.inflight += jobs.count
        if self.draining {
            for job in jobs { self.finished(job.id, JobResult(id: job.id, error: JobError(code: .shutdown, message: "node shutting down"), executor: self.node.configuration.name)) }
            return
        }
        var ready: [Job] = []
        ready.reserveCapacity(jobs.count)
        for job in jobs {
            if let bundle = self.state.cache.get(job.digest) {
                ready.append(self.poolJob(job, bundle))
            } else if self.parked[job.digest] != nil {
                self.parked[job.digest]!.append(job)
            } else {
                self.parked[job.digest] = [job]
                self.send(.need(job.digest), context: context)
            }
        }
        if !ready.isEmpty { self.node.pool.submit(contentsOf: ready) }
    }

    private func poolJob(_ job: WireJob, _ bundle: FunctionBundle) -> Job {
        let poolID = self.node.pool.jobIDs.next()
        self.nodeJobIDs[job.id] = poolID
        let clientID = job.id
        return Job(
            id: poolID,
            bundle: bundle,
            arguments: job.arguments,
            timeout: job.timeoutMilliseconds > 0 ? .milliseconds(Int64(job.timeoutMilliseconds)) : nil
        ) { [self] result in
            self.finished(clientID, result)
        }
    }

    private func finished(_ clientID: UInt64, _ result: JobResult) {
        self.inflight -= 1
        self.nodeJobIDs.removeValue(forKey: clientID)
        guard self.channel != nil else { return }
        var result = result
        result.id = clientID
        self.pendingResults.append(self.fitted(result))
        self.jobTime.add(nanoseconds: result.nanoseconds)
        if !self.flushScheduled {
            self.flushScheduled = true
            self.node.loop.execute { self.flush() }
        }
    }

    /// `result`, or, when it cannot fit in one frame the client accepts, an error that
    /// says so: only this job fails, and the others still travel.
    private func fitted(_ result: JobResult) -> JobResult {
        let size = NodeMessage.resultFrameOverhead + result.encodedSize
        guard size > self.clientMaxFrame else { return result }
        let error = JobError(
            code: .resultTooLarge,
            message: "result too large (\(size) bytes, limit \(self.clientMaxFrame)): return less, or write large data to a file and return its path"
        )
        self.logger.warning("result too large for the client", metadata: ["job.id": "\(result.id)", "bytes": "\(size)", "limit": "\(self.clientMaxFrame)"])
        var failed = JobResult(id: result.id, error: error, executor: result.executor)
        failed.nanoseconds = result.nanoseconds
        return failed
    }

    private func flush() {
        self.flushScheduled = false
        guard let channel = self.channel, !self.pendingResults.isEmpty else { return }
        var buffer = channel.allocator.buffer(capacity: 64 * self.pendingResults.count)
        NodeMessage.writeResults(self.pendingResults, maxFrame: self.clientMaxFrame, to: &buffer)
        self.pendingResults.removeAll(keepingCapacity: true)
        // Short jobs get a deep window (pipelining); long ones a shallow one, so a
        // client does not park work here that its other executors could run.
        if !self.draining {
            let workers = max(1, self.node.workers)
            let wanted = self.jobTime.jobsAreShort ? workers * 64 : max(2, workers * 2)
            if wanted != self.window {
                self.window = wanted
                self.maxWindow = max(self.maxWindow, wanted)
                NodeMessage.window(UInt32(wanted)).write(to: &buffer)
            }
        }
        channel.writeAndFlush(buffer, promise: nil)
    }

    // MARK: Drain and close

    func drain() {
        self.draining = true
        guard case .ready = self.phase else { return }
        self.window = 0
        self.send(.window(0), context: nil)
        self.send(.goodbye(reason: "node shutting down"), context: nil)
        // Jobs still waiting for their bundle will not run here.
        let parked = self.parked.values.flatMap { $0 }
        self.parked.removeAll()
        for job in parked {
            self.finished(job.id, JobResult(id: job.id, error: JobError(code: .shutdown, message: "node shutting down"), executor: self.node.configuration.name))
        }
    }

    func closeAfterFlush() -> EventLoopFuture<Void> {
        self.flush()
        guard let channel = self.channel else { return self.node.loop.makeSucceededVoidFuture() }
        return channel.close()
    }

    private func send(_ message: NodeMessage, context: ChannelHandlerContext?) {
        guard let channel = self.channel else { return }
        var buffer = channel.allocator.buffer(capacity: 64)
        message.write(to: &buffer)
        channel.writeAndFlush(buffer, promise: nil)
    }

    private func fail(_ code: NodeErrorCode, _ message: String, logLevel: Logger.Level) {
        guard let channel = self.channel else { return }
        self.logger.log(level: logLevel, "closing session", metadata: ["reason": "\(message)"])
        guard self.tlsEstablished else {
            self.phase = .closed
            channel.close(promise: nil)
            return
        }
        var buffer = channel.allocator.buffer(capacity: 64 + message.utf8.count)
        NodeMessage.error(code: code.rawValue, message: message).write(to: &buffer)
        self.phase = .closed
        channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
    }
}
