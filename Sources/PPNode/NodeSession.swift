import Logging
import NIOCore
import PPCore
import PPTLS
import PPWorkers

/// One client connection of a node: the driver of a `NodeSessionStateMachine`, which
/// holds the protocol (handshake, credits, bundles, results, drain, heartbeats). This
/// handler turns channel events into the machine's events and executes the actions it
/// returns: writes, pool jobs, timers, the node's counters and logs.
///
/// Nothing reaches this handler before TLS (the `TLSHandler` below it) has proved that
/// the peer holds the cluster key. Until HELLO has been read, frames are limited to
/// `NodeProtocol.preambleMaxFrame` bytes, and the connection counts against the
/// node's caps on unauthenticated connections (per source address and in total).
///
/// `@unchecked Sendable` is safe because the session lives on its channel's event loop,
/// the node's single loop; pool completions (which capture it) run on that same loop.
final class NodeSession: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    private let node: NodeServer
    private var machine: NodeSessionStateMachine
    /// Set while the channel is open; the loop and the allocator come from it.
    private var channel: (any Channel)?
    private let peerHost: String
    private let frameLimit: FrameLimit
    /// Frames decoded in place (a `ByteToMessageHandler` in front ran unspecialized and
    /// boxed every message in `NIOAny`); its limit is `frameLimit`.
    private var frames: NIOSingleStepByteToMessageProcessor<NodeMessageDecoder>
    private var logger: Logger
    /// Counted in the node's unauthenticated connections until HELLO.
    private var countedUnauthenticated = false
    private var heartbeat: RepeatedTask?
    /// Whom this session's jobs run for in the pool's fair share: the client's name and
    /// the session's number on this node (`"pprun@host #3"`), set at HELLO.
    private var owner = ""
    private var handshakeTimer: Scheduled<Void>?

    init(node: NodeServer, channel: any Channel, frameLimit: FrameLimit) {
        self.node = node
        self.channel = channel
        self.frameLimit = frameLimit
        self.frames = NIOSingleStepByteToMessageProcessor(NodeMessageDecoder(limit: frameLimit))
        self.peerHost = channel.remoteAddress?.ipAddress ?? "?"
        var logger = node.configuration.logger
        logger[metadataKey: LogKey.peer] = "\(channel.remoteAddress.map { PeerText.address($0) } ?? "?")"
        self.logger = logger
        self.machine = NodeSessionStateMachine(
            configuration: .init(
                workers: node.workers,
                maxFrame: node.configuration.maxFrame,
                handshakeTimeout: node.configuration.handshakeTimeout,
                heartbeatTimeout: node.configuration.heartbeatTimeout,
                nodeName: node.configuration.name
            )
        )
    }

    private var state: NodeState { self.node.state }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        // Strangers get almost nothing: past the caps, the connection is closed before
        // TLS allocates anything for it.
        if let refusal = self.state.admitUnauthenticated(host: self.peerHost, caps: self.node.configuration.unauthenticatedCaps) {
            self.state.refusedConnections += 1
            self.logger.debug("connection refused", metadata: [LogKey.reason: "\(refusal)"])
            _ = self.machine.closed()
            self.channel = nil
            context.close(promise: nil)
            return
        }
        self.countedUnauthenticated = true
        self.state.sessions[ObjectIdentifier(self)] = self
        self.state.sessionsAccepted += 1
        self.handshakeTimer = context.eventLoop.scheduleTask(in: TimeAmount(self.node.configuration.handshakeTimeout)) { [self] in
            self.execute(self.machine.handshakeTimedOut())
        }
        self.execute(self.machine.connected(nodeDraining: self.state.draining))
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.leaveUnauthenticated()
        self.heartbeat?.cancel()
        self.handshakeTimer?.cancel()
        self.state.sessions.removeValue(forKey: ObjectIdentifier(self))
        self.execute(self.machine.closed())
        self.channel = nil
        self.logger.debug("session closed")
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let e = error as? TLSError {
            if e.code == .handshakeFailed { self.state.authFailures += 1 } else { self.state.protocolErrors += 1 }
            self.logger.notice("closing connection", metadata: [LogKey.reason: "\(PeerText.cut(e.message))"])
            context.close(promise: nil)
        } else if let e = error as? NodeProtocolError {
            self.execute(self.machine.failed(e))
        } else {
            self.logger.info("connection error", metadata: [LogKey.error: "\(PeerText.cut("\(error)"))"])
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let cipher) = event as? TLSHandler.Event {
            self.machine.tlsEstablished()
            self.logger.debug("TLS established", metadata: [LogKey.tlsCipher: "\(cipher)"])
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try self.frames.process(buffer: Self.unwrapInboundIn(data)) { message in
                // A frame after one that closed the session is not read.
                guard self.channel != nil else { return }
                let action = self.machine.received(
                    message,
                    now: context.eventLoop.now,
                    bundle: { self.state.cache.get($0) },
                    blob: { self.state.blobs.get($0) },
                    poolJobID: { self.node.pool.jobIDs.next() }
                )
                self.execute(action)
            }
        } catch {
            self.errorCaught(context: context, error: error)
        }
    }

    // MARK: Node events

    /// The node shuts down: tell the client (WINDOW 0, GOODBYE).
    func drain() {
        self.execute(self.machine.drain())
    }

    /// Writes what is pending, then closes.
    func closeAfterFlush() -> EventLoopFuture<Void> {
        self.execute(self.machine.flush())
        guard let channel = self.channel else { return self.node.loop.makeSucceededVoidFuture() }
        return channel.close()
    }

    // MARK: Actions

    private func execute(_ action: NodeSessionStateMachine.Action) {
        switch action {
        case .none:
            break
        case .send(let messages, let scheduleFlush):
            self.send(messages)
            if scheduleFlush { self.scheduleFlush() }
        case .welcome(let version, let window, let maxFrame, let clientName):
            self.leaveUnauthenticated()
            self.handshakeTimer?.cancel()
            self.frameLimit.value = Int(maxFrame)
            self.logger[metadataKey: LogKey.client] = "\(clientName)"
            self.state.sessionsAuthenticated += 1
            self.owner = "\(PeerText.cut(clientName, limit: 64)) #\(self.state.sessionsAuthenticated)"
            self.logger.info("client authenticated", metadata: [LogKey.owner: "\(self.owner)"])
            self.send([.welcome(version: version, window: window, maxFrame: maxFrame, info: self.node.infoJSON())])
            self.startHeartbeat()
        case .submit(let received, let run, let need, let scheduleFlush):
            self.state.jobsReceived += received
            self.send(need)
            self.run(run)
            if scheduleFlush { self.scheduleFlush() }
        case .storeBundle(let bundle, let jobs, let need):
            self.state.cache.insert(bundle.digest, bundle, cost: bundle.spec.count)
            self.state.bundlesReceived += 1
            self.state.bundleBytesReceived += bundle.spec.count
            self.logger.debug("bundle received", metadata: [LogKey.bundle: "\(bundle.digest)", LogKey.bytes: "\(bundle.spec.count)"])
            self.send(need)
            self.run(jobs)
        case .storeBlob(let digest, let bytes, let jobs, let need):
            self.state.blobs.insert(digest, bytes, cost: bytes.count)
            self.state.blobsReceived += 1
            self.state.blobBytesReceived += bytes.count
            self.logger.debug("blob received", metadata: [LogKey.bundle: "\(digest)", LogKey.bytes: "\(bytes.count)"])
            self.send(need)
            self.run(jobs)
        case .cancelPoolJobs(let ids):
            self.node.pool.cancel(jobIDs: ids)
        case .stopPoolJobs(let ids):
            self.node.pool.stop(jobIDs: ids)
        case .gatherStatistics(let token):
            let node = self.node
            let loop = self.channel?.eventLoop ?? node.loop
            Task {
                let json = await node.statisticsJSON()
                loop.execute { self.execute(self.machine.statisticsReady(token: token, json: json)) }
            }
        case .scheduleFlush:
            self.scheduleFlush()
        case .sendResults(let results, let maxFrame, let window, let tooLarge):
            for r in tooLarge {
                self.logger.warning("result too large for the client", metadata: [LogKey.jobID: "\(r.jobID)", LogKey.bytes: "\(r.bytes)", LogKey.limit: "\(maxFrame)"])
            }
            guard let channel = self.channel else { return }
            var buffer = channel.allocator.buffer(capacity: 64 * results.count)
            NodeMessage.writeResults(results, maxFrame: maxFrame, to: &buffer)
            if let window { NodeMessage.window(window).write(to: &buffer) }
            channel.writeAndFlush(buffer, promise: nil)
        case .closeWithError(let error, let sendErrorFrame, let counted):
            if counted { self.state.protocolErrors += 1 }
            self.close(with: error, sendErrorFrame: sendErrorFrame)
        case .closeAfterGoodbye:
            self.logger.info("client said goodbye")
            self.channel?.close(promise: nil)
        case .closeSilentClient:
            self.logger.notice("client silent past the heartbeat timeout; closing")
            self.channel?.close(promise: nil)
        case .clientLeft(let jobs, let awaitingBundle):
            // Jobs of a client that left are not worth running: stop them, queued or
            // running (a running job's worker is killed and replaced).
            if !jobs.isEmpty || awaitingBundle > 0 {
                self.logger.info("client left; stopping its jobs", metadata: [LogKey.jobs: "\(jobs.count)", LogKey.awaitingBundle: "\(awaitingBundle)"])
            }
            if !jobs.isEmpty { self.node.pool.stop(jobIDs: jobs) }
        }
    }

    private func run(_ jobs: [NodeSessionStateMachine.JobToRun]) {
        guard !jobs.isEmpty else { return }
        self.node.pool.submit(
            contentsOf: jobs.map { job in
                let clientID = job.clientID
                var poolJob = Job(id: job.poolID, bundle: job.bundle, arguments: job.arguments, timeout: job.timeout) { [self] result in
                    self.execute(self.machine.jobFinished(clientID: clientID, result: result))
                }
                poolJob.owner = self.owner
                poolJob.ownerWeight = self.node.configuration.clientWeights[self.peerHost] ?? 1
                return poolJob
            }
        )
    }

    /// Flushes once the loop has run what is ready now: the results of one turn travel
    /// in one write.
    private func scheduleFlush() {
        guard let channel = self.channel else { return }
        channel.eventLoop.execute { self.execute(self.machine.flush()) }
    }

    private func startHeartbeat() {
        guard let channel = self.channel else { return }
        let interval = TimeAmount(self.machine.configuration.heartbeatInterval)
        let loop = channel.eventLoop
        // The loop's clock, not the wall's: the same in production, and a test's
        // EmbeddedEventLoop can move it.
        self.heartbeat = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [self] _ in
            self.execute(self.machine.tick(now: loop.now))
        }
    }

    private func leaveUnauthenticated() {
        guard self.countedUnauthenticated else { return }
        self.countedUnauthenticated = false
        self.state.releaseUnauthenticated(host: self.peerHost)
    }

    /// Writes `messages` with one write and one flush; the future says when it is written.
    @discardableResult
    private func send(_ messages: [NodeMessage]) -> EventLoopFuture<Void>? {
        guard let channel = self.channel, !messages.isEmpty else { return nil }
        var buffer = channel.allocator.buffer(capacity: 64 * messages.count)
        for message in messages { message.write(to: &buffer) }
        return channel.writeAndFlush(buffer)
    }

    /// Logs why, sends ERROR when TLS is up (before, there is nobody to send it to), and
    /// closes once it is written.
    private func close(with error: NodeProtocolError, sendErrorFrame: Bool) {
        guard let channel = self.channel else { return }
        let level: Logger.Level =
            switch error.code {
            case .handshakeTimeout: .notice
            case .shuttingDown: .info
            default: .warning
            }
        self.logger.log(level: level, "closing session", metadata: [LogKey.reason: "\(error.message)"])
        guard sendErrorFrame else {
            channel.close(promise: nil)
            return
        }
        self.send([.error(code: error.code.rawValue, message: error.message)])?.whenComplete { _ in channel.close(promise: nil) }
    }
}
