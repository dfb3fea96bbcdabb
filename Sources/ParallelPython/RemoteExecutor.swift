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
        var host = Substring(text)
        var portText: Substring?
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") { portText = rest.dropFirst() }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        // A port given must be a number from 1 to 65535 (0 stands for "not a number").
        let port = portText.map { Int($0) ?? 0 } ?? NodeProtocol.defaultPort
        guard !host.isEmpty, (1...65535).contains(port) else { throw NodeAddressError(text: text) }
        self.host = String(host)
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

/// Keeps one node connected: the driver of `NodeLinkStateMachine`. It connects, runs
/// TLS and HELLO, turns the connection into a `RemoteExecutor` for the scheduler, and
/// reconnects with backoff when it is lost.
///
/// Confined to the job server's loop (`@unchecked Sendable` for that reason).
final class NodeLink: @unchecked Sendable {
    let address: NodeAddress
    /// Where the TLS context, the client's name and the heartbeat timeout come from.
    unowned let manager: ResourceManager
    let logger: Logger
    private var machine: NodeLinkStateMachine
    private var executor: RemoteExecutor?
    private var pendingRetry: Scheduled<Void>?

    init(address: NodeAddress, manager: ResourceManager, discovered: Bool) {
        self.address = address
        self.manager = manager
        var logger = manager.scheduler.logger
        logger[metadataKey: LogKey.node] = "\(address)"
        self.logger = logger
        self.machine = NodeLinkStateMachine(discovered: discovered)
    }

    var name: String { self.address.description }

    /// Where its executors report back.
    var scheduler: Scheduler { self.manager.scheduler }

    /// Found by discovery (not given by address).
    var discovered: Bool { self.machine.discovered }

    /// Whether the node is connected and authenticated.
    var connected: Bool { self.executor?.canRun ?? false }

    func start() {
        self.execute(self.machine.start())
    }

    func stop() {
        self.machine.stop()
        self.pendingRetry?.cancel()
        self.executor?.close(goodbye: true)
    }

    /// The node was announced again: if we are waiting to retry, retry now.
    func nudge() {
        guard self.executor == nil else { return }
        self.execute(self.machine.nudge())
    }

    private func execute(_ action: NodeLinkStateMachine.Action) {
        switch action {
        case .none:
            break
        case .connect:
            // A nudge cuts the wait short (a timer that fired already does nothing).
            self.pendingRetry?.cancel()
            self.connect()
        case .retry(let delay):
            self.pendingRetry = self.scheduler.loop.scheduleTask(in: delay) { [self] in
                self.execute(self.machine.retryTimerFired())
            }
        case .giveUp:
            self.logger.info("discovered node given up until its next beacon")
            self.manager.forget(self)
        }
    }

    private func report(_ problem: String?) {
        guard let problem else { return }
        self.logger.warning("node unavailable", metadata: [LogKey.reason: "\(problem)"])
    }

    private func connect() {
        guard let tls = self.manager.tls else {
            let problem = "no cluster secret: give --secret-file or set PP_SECRET"
            self.scheduler.nodeProblem(problem, node: self.name)
            self.report(self.machine.problem(problem))
            return
        }
        let executor = RemoteExecutor(link: self)
        self.executor = executor
        ClientBootstrap(group: self.scheduler.loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(3))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(TLSHandler(context: tls), executor)
                }
            }
            .connect(host: self.address.host, port: self.address.port)
            .whenFailure { [self] error in
                guard self.executor === executor else { return }
                self.executor = nil
                self.manager.contacted(self.name, .unreachable(Self.describe(error)))
                self.failed(Self.describe(error), retryAfter: nil)
            }
    }

    /// The executor finished its handshake: the scheduler may use it.
    func ready(_ executor: RemoteExecutor) {
        if self.machine.connected() {
            self.logger.notice("node reachable again")
        }
        self.manager.contacted(self.name, .connected)
        self.scheduler.add(executor)
    }

    /// The connection ended; `reason` says why, `retryAfter` overrides the backoff.
    func lost(_ executor: RemoteExecutor, jobs: [Job], reason: String, retryAfter: TimeAmount?, wasReady: Bool) {
        guard self.executor === executor else { return }
        self.executor = nil
        self.scheduler.remove(executor)
        // Stopped: the jobs go back unrun (the scheduler ends them if it stopped too).
        guard !self.machine.isStopped else { return self.scheduler.requeue(jobs, lost: nil, from: self.name) }
        self.manager.contacted(self.name, executor.keyRejected ? .keyRejected(reason) : .lost(reason))
        if !jobs.isEmpty || wasReady {
            self.logger.warning("node lost", metadata: [LogKey.reason: "\(reason)", LogKey.jobsRescheduled: "\(jobs.count)"])
        }
        self.scheduler.requeue(jobs, lost: reason, from: self.name)
        self.failed(reason, retryAfter: retryAfter, keyRefused: executor.keyRejected)
    }

    private func failed(_ reason: String, retryAfter: TimeAmount?, keyRefused: Bool = false) {
        self.scheduler.nodeProblem(reason, node: self.name, keyRefused: keyRefused)
        let (action, problem) = self.machine.failed(reason, retryAfter: retryAfter)
        self.report(problem)
        self.execute(action)
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first { return Self.describe(first.error) }
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)).lowercased() }
        if error is ChannelError, case ChannelError.connectTimeout = error { return "connection timed out" }
        if let e = error as? TLSError { return e.message }
        return PeerText.cut("\(error)")
    }
}

/// One connection to a node, used by the scheduler as an executor: the driver of
/// `NodeConnectionStateMachine`, which checks everything the node sends.
///
/// Confined to the job server's loop: the channel handler methods run there, and so
/// does everything the scheduler calls (`@unchecked Sendable` for that reason).
final class RemoteExecutor: ChannelInboundHandler, Executor, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    unowned let link: NodeLink
    /// The decoder's frame limit: a few KiB until WELCOME.
    let frameLimit = FrameLimit(NodeProtocol.preambleMaxFrame)
    /// Frames decoded in place (not behind an unspecialized `ByteToMessageHandler`).
    private lazy var frames = NIOSingleStepByteToMessageProcessor(NodeMessageDecoder(limit: self.frameLimit))
    private var machine: NodeConnectionStateMachine
    private var channel: (any Channel)?
    private var timer: RepeatedTask?
    private var handshakeTimer: Scheduled<Void>?
    private var statsWaiters: [UInt64: EventLoopPromise<[UInt8]>] = [:]
    private var nextStatsToken: UInt64 = 1
    /// The TLS handshake failed: the node does not accept our key.
    private(set) var keyRejected = false

    init(link: NodeLink) {
        self.link = link
        self.machine = NodeConnectionStateMachine(
            name: link.name, clientName: link.manager.clientName,
            heartbeatTimeout: .nanoseconds(link.manager.configuration.heartbeatTimeout.nanosecondsInt64), now: .now()
        )
    }

    var name: String { self.link.name }
    var label: String { self.machine.node.map { "\(PeerText.cut($0.name, limit: 64)) (\(self.name))" } ?? self.name }
    var python: String? { self.machine.node?.python }
    var implementation: String? { self.machine.node?.impl }
    var freeSlots: Int { self.machine.freeSlots }
    var canRun: Bool { self.machine.takesJobs }

    // MARK: Executor

    func send(_ jobs: [Job]) {
        // Nil once the connection is closed (or not ready yet): the jobs go back.
        guard let submit = self.machine.submit(jobs, now: .now()) else { return self.link.scheduler.requeue(jobs, lost: nil, from: self.name) }
        self.write(submit)
    }

    func cancel(jobID: UInt64, stop: Bool) {
        if let frame = self.machine.cancel(jobID: jobID, stop: stop) { self.write([frame]) }
    }

    func close(goodbye: Bool) {
        self.execute(self.machine.close(goodbye: goodbye))
        self.channel?.close(promise: nil)
    }

    /// Asks the node for its counters (the STATS JSON).
    func requestStatistics(on loop: any EventLoop) -> EventLoopFuture<[UInt8]> {
        guard self.machine.isUsable else { return loop.makeSucceededFuture([]) }
        let promise = loop.makePromise(of: [UInt8].self)
        let token = self.nextStatsToken
        self.nextStatsToken += 1
        self.statsWaiters[token] = promise
        self.write([.statsRequest(token)])
        loop.scheduleTask(in: .seconds(2)) { [self] in
            self.statsWaiters.removeValue(forKey: token)?.succeed([])
        }
        return promise.futureResult
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        self.channel = context.channel
        self.handshakeTimer = context.eventLoop.scheduleTask(in: NodeConnectionStateMachine.handshakeTimeout) { [self] in
            self.execute(self.machine.handshakeTimerFired())
        }
        // Heartbeat and overdue results four times a second, so a silent node is
        // dropped at most 250 ms after its timeout.
        self.timer = context.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(250), delay: .milliseconds(250)) { [self] _ in
            self.execute(self.machine.tick(now: .now()))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.handshakeTimer?.cancel()
        for (_, p) in self.statsWaiters { p.succeed([]) }
        self.statsWaiters.removeAll()
        self.channel = nil
        let (jobs, reason) = self.machine.closed()
        self.link.lost(self, jobs: jobs, reason: reason, retryAfter: self.machine.retryAfter, wasReady: self.machine.wasReady)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A failed TLS handshake means another key.
        let keyRejected = (error as? TLSError)?.code == .handshakeFailed
        self.keyRejected = self.keyRejected || keyRejected
        let reason = (error as? NodeProtocolError).map { "protocol error from the node: \($0.message)" } ?? NodeLink.describe(error)
        self.execute(self.machine.errorCaught(reason, keyRejected: keyRejected))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .handshakeCompleted = event as? TLSHandler.Event else {
            return context.fireUserInboundEventTriggered(event)
        }
        self.execute(self.machine.tlsEstablished())
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try self.frames.process(buffer: Self.unwrapInboundIn(data)) { message in
                // A frame after one that closed the connection is not read.
                guard self.channel != nil else { return }
                if case .stats(let token, let json) = message {
                    self.statsWaiters.removeValue(forKey: token)?.succeed(json)
                }
                self.execute(self.machine.received(message, now: .now()))
            }
        } catch {
            self.errorCaught(context: context, error: error)
        }
    }

    // MARK: Actions

    private func execute(_ action: NodeConnectionStateMachine.Action) {
        switch action {
        case .send(let frames):
            self.write(frames)
        case .ready:
            self.handshakeTimer?.cancel()
            self.frameLimit.value = self.machine.maxFrame
            self.link.ready(self)
        case .deliver(let results, let handedBack, let frames):
            self.write(frames)
            for (job, result) in results {
                if result.code == .functionUnavailable { self.link.scheduler.refused(job, result, by: self) } else { job.completion(result) }
            }
            if !handedBack.isEmpty { self.link.scheduler.requeue(handedBack, lost: nil, from: self.name) }
            self.link.scheduler.dispatchSoon()
        case .close:
            self.channel?.close(promise: nil)
        }
    }

    private func write(_ frames: [NodeMessage]) {
        guard let channel = self.channel, !frames.isEmpty else { return }
        var buffer = channel.allocator.buffer(capacity: 64)
        for frame in frames { frame.write(to: &buffer) }
        channel.writeAndFlush(buffer, promise: nil)
    }
}
