import Foundation
import Logging
import NIOCore
import NIOPosix
import PPCore
import PPTLS

/// A node's address: host and native-protocol port.
public struct NodeAddress: Sendable, Hashable, CustomStringConvertible {
    /// Host name or IP address.
    public var host: String
    /// TCP port.
    public var port: Int

    /// Creates an address.
    public init(host: String, port: Int = NodeProtocol.defaultPort) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST[:PORT]` (`[v6]:PORT` for IPv6).
    ///
    /// - Throws: `NodeAddressError` when the text is not an address.
    public init(parsing text: String) throws {
        var host = text
        var port = NodeProtocol.defaultPort
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") {
                guard let p = Int(rest.dropFirst()), (1...65535).contains(p) else { throw NodeAddressError(text: text) }
                port = p
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = String(text[..<colon])
            guard let p = Int(text[text.index(after: colon)...]), (1...65535).contains(p) else { throw NodeAddressError(text: text) }
            port = p
        }
        guard !host.isEmpty else { throw NodeAddressError(text: text) }
        self.host = host
        self.port = port
    }

    public var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
}

/// A node address that does not parse.
public struct NodeAddressError: Error, Sendable, CustomStringConvertible {
    /// The text given.
    public var text: String

    public var description: String { "'\(self.text)' is not a node address; write HOST:PORT, e.g. 192.168.1.20:7340" }
}

/// Keeps one node connected: connects, runs TLS and HELLO, turns the connection into a
/// `RemoteExecutor` for the scheduler, and reconnects with backoff when it is lost.
///
/// Confined to the job server's loop (`@unchecked Sendable` for that reason).
final class NodeLink: @unchecked Sendable {
    let address: NodeAddress
    /// The client's TLS context (the cluster key); `nil` when there is no secret.
    let tls: TLSContext?
    unowned let scheduler: Scheduler
    let clientName: String
    let heartbeatTimeout: Duration
    private var executor: RemoteExecutor?
    private var backoff: TimeAmount = .milliseconds(200)
    private var stopped = false
    private var lastProblem: String?
    /// Found by discovery (not given by address): given up after repeated failures,
    /// until the next beacon.
    let discovered: Bool
    private var failures = 0
    private var pendingRetry: Scheduled<Void>?
    /// Called when a discovered link gives up.
    var onGiveUp: (() -> Void)?

    init(address: NodeAddress, tls: TLSContext?, scheduler: Scheduler, clientName: String, heartbeatTimeout: Duration, discovered: Bool = false) {
        self.address = address
        self.tls = tls
        self.scheduler = scheduler
        self.clientName = clientName
        self.heartbeatTimeout = heartbeatTimeout
        self.discovered = discovered
    }

    var name: String { self.address.description }

    func start() {
        self.connect()
    }

    func stop() {
        self.stopped = true
        self.executor?.close(goodbye: true)
    }

    private func connect() {
        guard !self.stopped else { return }
        guard let tls = self.tls else {
            self.problem("no cluster secret: give --secret-file or set PP_SECRET")
            return
        }
        let executor = RemoteExecutor(link: self)
        self.executor = executor
        ClientBootstrap(group: self.scheduler.loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(3))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        TLSHandler(context: tls),
                        ByteToMessageHandler(NodeMessageDecoder(limit: executor.frameLimit)),
                        executor
                    )
                }
            }
            .connect(host: self.address.host, port: self.address.port)
            .whenFailure { [self] error in
                guard self.executor === executor else { return }
                self.executor = nil
                self.problem(Self.describe(error))
                self.retry()
            }
    }

    /// The executor finished its handshake: the scheduler may use it.
    func ready(_ executor: RemoteExecutor) {
        self.backoff = .milliseconds(200)
        self.failures = 0
        if self.lastProblem != nil {
            self.scheduler.logger.notice("node reachable again", metadata: ["node": "\(self.name)"])
        }
        self.lastProblem = nil
        self.scheduler.add(executor)
    }

    /// The connection ended; `reason` says why, `retryAfter` overrides the backoff.
    func lost(_ executor: RemoteExecutor, reason: String, retryAfter: TimeAmount? = nil) {
        guard self.executor === executor else { return }
        self.executor = nil
        self.scheduler.remove(executor)
        let jobs = executor.takeInflight()
        if self.stopped {
            self.scheduler.requeue(jobs, lost: nil, from: self.name)
            return
        }
        if !jobs.isEmpty || executor.wasReady {
            self.scheduler.logger.warning(
                "node lost",
                metadata: ["node": "\(self.name)", "reason": "\(reason)", "jobs.rescheduled": "\(jobs.count)"]
            )
        }
        self.scheduler.requeue(jobs, lost: reason, from: self.name)
        self.problem(reason)
        if let retryAfter { self.backoff = retryAfter }
        self.retry()
    }

    /// Whether the node is connected and authenticated.
    var connected: Bool { self.executor?.isUsable ?? false }

    /// The node was announced again: if we are waiting to retry, retry now.
    func nudge() {
        guard !self.stopped, self.executor == nil, let pending = self.pendingRetry else { return }
        pending.cancel()
        self.pendingRetry = nil
        self.connect()
    }

    private func retry() {
        guard !self.stopped else { return }
        self.failures += 1
        if self.discovered, self.failures >= 3 {
            self.stopped = true
            self.scheduler.logger.info("discovered node given up until its next beacon", metadata: ["node": "\(self.name)"])
            self.onGiveUp?()
            return
        }
        let delay = self.backoff
        self.backoff = min(self.backoff * 2, .seconds(5))
        self.pendingRetry = self.scheduler.loop.scheduleTask(in: delay) { [self] in
            self.pendingRetry = nil
            self.connect()
        }
    }

    private func problem(_ text: String) {
        self.scheduler.nodeProblems[self.name] = text
        if self.lastProblem != text {
            self.scheduler.logger.warning("node unavailable", metadata: ["node": "\(self.name)", "reason": "\(text)"])
        }
        self.lastProblem = text
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first { return Self.describe(first.error) }
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)).lowercased() }
        if error is ChannelError, case ChannelError.connectTimeout = error { return "connection timed out" }
        if let e = error as? TLSError { return e.message }
        return PeerText.cut("\(error)")
    }
}

/// One connection to a node (TLS, HELLO, WELCOME, then jobs), used by the scheduler as
/// an executor.
///
/// Everything the node sends is checked: a WINDOW is capped, a NEED is answered once
/// per bundle and only for bundles this client sent, a result must be for a job in
/// flight and carry one JSON value, a job handed back is requeued a bounded number of
/// times, and a job with a timeout that gets no result within twice its timeout plus
/// `deadlineGrace` fails here, whatever the node does.
///
/// Confined to the job server's loop: the channel handler methods run there, and so
/// does everything the scheduler calls (`@unchecked Sendable` for that reason).
final class RemoteExecutor: ChannelInboundHandler, Executor, @unchecked Sendable {
    typealias InboundIn = NodeMessage

    private enum Phase {
        case handshaking
        case awaitingWelcome
        case ready
        case draining
        case closed
    }

    /// The largest window a node may give (jobs in flight on one connection).
    static let maxWindow = 16_384
    /// Added to twice a job's timeout before the client gives up on its result.
    static let deadlineGrace: TimeAmount = .seconds(5)
    /// The TLS handshake and WELCOME must be done within this time.
    static let handshakeTimeout: TimeAmount = .seconds(5)

    unowned let link: NodeLink
    /// The decoder's frame limit: a few KiB until WELCOME.
    let frameLimit = FrameLimit(NodeProtocol.preambleMaxFrame)
    private var channel: (any Channel)?
    private var phase = Phase.handshaking
    private var window = 0
    private var inflight: [UInt64: Job] = [:]
    private var bundles: [SHA256Digest: FunctionBundle] = [:]
    private var bundlesSent: Set<SHA256Digest> = []
    /// Jobs with a timeout: when the client stops waiting for them.
    private var deadlines: [UInt64: NIODeadline] = [:]
    private var lastHeard = NIODeadline.now()
    private var heartbeat: RepeatedTask?
    private var ticks = 0
    private var handshakeTimer: Scheduled<Void>?
    private var closeReason: String?
    private var retryAfter: TimeAmount?
    private(set) var wasReady = false
    private var statsWaiters: [UInt64: EventLoopPromise<[UInt8]>] = [:]
    private var nextStatsToken: UInt64 = 1
    /// The node's WELCOME info JSON.
    private(set) var info: [UInt8] = []

    init(link: NodeLink) {
        self.link = link
    }

    var name: String { self.link.name }

    var freeSlots: Int {
        guard case .ready = self.phase else { return 0 }
        return max(0, self.window - self.inflight.count)
    }

    /// Whether the node can take jobs (authenticated and not draining).
    var isUsable: Bool {
        if case .ready = self.phase { return true }
        return false
    }

    // MARK: Executor

    func send(_ jobs: [Job]) {
        guard let channel = self.channel else {
            self.link.scheduler.requeue(jobs, lost: nil, from: self.name)
            return
        }
        var buffer = channel.allocator.buffer(capacity: 64 * jobs.count)
        let start = buffer.writerIndex
        buffer.writeInteger(UInt32(0))
        buffer.writeInteger(NodeProtocol.Kind.submit.rawValue)
        buffer.writeInteger(UInt32(jobs.count))
        let now = NIODeadline.now()
        for job in jobs {
            self.inflight[job.id] = job
            if self.bundles[job.bundle.digest] == nil { self.bundles[job.bundle.digest] = job.bundle }
            var timeout: UInt32 = 0
            if let limit = job.timeout {
                timeout = UInt32(clamping: max(1, limit.nanosecondsInt64 / 1_000_000))
                self.deadlines[job.id] = now + .nanoseconds(limit.nanosecondsInt64 &* 2) + Self.deadlineGrace
            }
            NodeMessage.writeJob(WireJob(id: job.id, digest: job.bundle.digest, timeoutMilliseconds: timeout, arguments: job.arguments), to: &buffer)
        }
        buffer.setInteger(UInt32(buffer.writerIndex - start - 4), at: start)
        channel.writeAndFlush(buffer, promise: nil)
    }

    func cancel(jobID: UInt64) {
        if self.inflight[jobID] != nil { self.write(.cancel(id: jobID)) }
    }

    func stop(jobID: UInt64) {
        if self.inflight[jobID] != nil { self.write(.stop(id: jobID)) }
    }

    /// Removes and returns the jobs the node still held.
    func takeInflight() -> [Job] {
        let jobs = self.inflight.values.sorted { $0.id < $1.id }
        self.inflight.removeAll()
        self.deadlines.removeAll()
        return jobs
    }

    func close(goodbye: Bool) {
        if goodbye, self.wasReady { self.write(.goodbye(reason: "client done")) }
        self.closeReason = self.closeReason ?? "closed by the client"
        self.channel?.close(promise: nil)
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        self.channel = context.channel
        self.phase = .handshaking
        self.handshakeTimer = context.eventLoop.scheduleTask(in: Self.handshakeTimeout) { [self] in
            switch self.phase {
            case .handshaking, .awaitingWelcome:
                self.abort("no TLS handshake and WELCOME from the node within \(Self.handshakeTimeout.nanoseconds / 1_000_000_000) s", retryAfter: nil)
            default:
                break
            }
        }
        let timeout = self.link.heartbeatTimeout
        // Ping every second; check for silence and for results past their deadline four
        // times a second, so a silent node is dropped at most 250 ms after its timeout.
        self.heartbeat = context.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(250), delay: .milliseconds(250)) { [self] _ in
            guard let channel = self.channel, self.wasReady else { return }
            let now = NIODeadline.now()
            if now - self.lastHeard > .nanoseconds(timeout.nanosecondsInt64) {
                self.closeReason = "no heartbeat for \(timeout)"
                channel.close(promise: nil)
                return
            }
            if !self.deadlines.isEmpty { self.expireOverdue(now: now) }
            self.ticks += 1
            if self.ticks % 4 == 0 { self.write(.ping(0)) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.heartbeat?.cancel()
        self.handshakeTimer?.cancel()
        for (_, p) in self.statsWaiters { p.succeed([]) }
        self.statsWaiters.removeAll()
        self.channel = nil
        self.phase = .closed
        self.link.lost(self, reason: self.closeReason ?? "the node closed the connection", retryAfter: self.retryAfter)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let e = error as? TLSError {
            self.closeReason = self.closeReason ?? e.message
            // Another key will not start working in 200 ms.
            if e.code == .handshakeFailed { self.retryAfter = .seconds(10) }
        } else {
            self.closeReason = self.closeReason ?? ((error as? NodeProtocolError).map { "protocol error from the node: \($0.message)" } ?? NodeLink.describe(error))
        }
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .handshakeCompleted = event as? TLSHandler.Event, case .handshaking = self.phase else {
            return context.fireUserInboundEventTriggered(event)
        }
        self.phase = .awaitingWelcome
        self.write(.hello(minVersion: NodeProtocol.minimumVersion, maxVersion: NodeProtocol.version, maxFrame: UInt32(NodeProtocol.defaultMaxFrame), name: self.link.clientName))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.lastHeard = .now()
        let message = Self.unwrapInboundIn(data)
        switch (self.phase, message) {
        case (_, .error(let code, let text)):
            self.closeReason = "the node refused us: \(PeerText.cut(text))"
            if code == NodeErrorCode.versionMismatch.rawValue { self.retryAfter = .seconds(10) }
            context.close(promise: nil)
        case (.awaitingWelcome, .welcome(let version, let window, _, let info)):
            guard version >= NodeProtocol.minimumVersion, version <= NodeProtocol.version else {
                return self.abort("the node chose protocol version \(version), which this client does not speak", retryAfter: .seconds(10))
            }
            self.handshakeTimer?.cancel()
            self.info = info
            self.window = min(Int(window), Self.maxWindow)
            self.frameLimit.value = NodeProtocol.defaultMaxFrame
            self.phase = .ready
            self.wasReady = true
            self.link.ready(self)
        case (.ready, .results(let results)), (.draining, .results(let results)):
            self.received(results)
        case (.ready, .need(let digest)), (.draining, .need(let digest)):
            guard let bundle = self.bundles[digest] else {
                return self.abort("the node asked for a function bundle \(digest) this client never sent", retryAfter: nil)
            }
            guard self.bundlesSent.insert(digest).inserted else {
                return self.abort("the node asked again for function bundle \(digest), which it was sent on this connection", retryAfter: nil)
            }
            self.write(.bundle(digest: digest, spec: bundle.spec))
        case (.ready, .window(let w)), (.draining, .window(let w)):
            self.window = min(Int(w), Self.maxWindow)
            self.link.scheduler.dispatchSoon()
        case (.ready, .ping(let token)), (.draining, .ping(let token)):
            self.write(.pong(token))
        case (_, .pong):
            break
        case (.ready, .goodbye(let reason)), (.draining, .goodbye(let reason)):
            self.phase = .draining
            self.closeReason = "the node said goodbye: \(PeerText.cut(reason))"
        case (_, .stats(let token, let json)):
            self.statsWaiters.removeValue(forKey: token)?.succeed(json)
        default:
            self.abort("unexpected \(PeerText.cut("\(message)", limit: 80)) from the node", retryAfter: nil)
        }
    }

    /// Asks the node for its counters (the STATS JSON).
    func requestStatistics(on loop: any EventLoop) -> EventLoopFuture<[UInt8]> {
        let promise = loop.makePromise(of: [UInt8].self)
        guard self.channel != nil, self.isUsable else {
            promise.succeed([])
            return promise.futureResult
        }
        let token = self.nextStatsToken
        self.nextStatsToken += 1
        self.statsWaiters[token] = promise
        self.write(.statsRequest(token))
        loop.scheduleTask(in: .seconds(2)) { [self] in
            self.statsWaiters.removeValue(forKey: token)?.succeed([])
        }
        return promise.futureResult
    }

    private func received(_ results: [JobResult]) {
        var handedBack: [Job] = []
        for var r in results {
            guard let job = self.inflight.removeValue(forKey: r.id) else { continue }
            self.deadlines.removeValue(forKey: r.id)
            r.executor = self.name
            // A JSON job's value must be one JSON value; an opaque job's is bytes.
            if r.succeeded, !job.arguments.isOpaque, !JSONCheck.isSingleValue(r.payload) {
                let error = JobError(
                    code: .protocolError,
                    message: "the node sent a result that is not one JSON value (\(r.payload.count) bytes); the job's value was dropped"
                )
                job.fail(error, executor: self.name)
                continue
            }
            if r.code == .shutdown {
                // The node is draining: run the job elsewhere, and send it nothing more.
                self.phase = .draining
                handedBack.append(job)
                continue
            }
            job.completion(r)
        }
        if !handedBack.isEmpty { self.link.scheduler.requeue(handedBack, lost: nil, from: self.name) }
        self.link.scheduler.dispatchSoon()
    }

    /// Fails the jobs whose result is overdue (twice their timeout plus the grace) and
    /// asks the node to stop them.
    private func expireOverdue(now: NIODeadline) {
        let overdue = self.deadlines.filter { $0.value <= now }.map(\.key)
        for id in overdue {
            self.deadlines.removeValue(forKey: id)
            guard let job = self.inflight.removeValue(forKey: id) else { continue }
            self.write(.cancel(id: id))
            let limit = job.timeout.map { "\(Double($0.nanosecondsInt64) / 1e9)" } ?? "?"
            job.fail(
                JobError(
                    code: .timeout,
                    message: "no result from node \(self.name) within twice the job's timeout of \(limit) s plus \(Self.deadlineGrace.nanoseconds / 1_000_000_000) s; the client stopped waiting"
                ),
                executor: self.name
            )
        }
        if !overdue.isEmpty { self.link.scheduler.dispatchSoon() }
    }

    private func abort(_ reason: String, retryAfter: TimeAmount?) {
        self.closeReason = reason
        self.retryAfter = retryAfter
        self.channel?.close(promise: nil)
    }

    private func write(_ message: NodeMessage) {
        guard let channel = self.channel else { return }
        var buffer = channel.allocator.buffer(capacity: 64)
        message.write(to: &buffer)
        channel.writeAndFlush(buffer, promise: nil)
    }
}
