public import NIOCore
import PPCore
import Foundation
import Logging
import NIOPosix
import PPDNSSD
import PPRuntime
import PPTLS
import PPWorkers
public import ServiceLifecycle
import Synchronization

/// A `ppnode`: accepts authenticated clients over the native protocol and runs their
/// jobs on one shared `WorkerPool`.
///
/// Everything (listener, sessions, bundle cache, pool) lives on one event loop, so a
/// job's path through the node never crosses threads; the Python workers use the cores.
///
/// Creating a node opens nothing. It is a `Service`: `run()` starts it, serves until
/// graceful shutdown (SIGTERM or SIGINT in ppnode's `ServiceGroup`), then drains and
/// closes; `start()` and `shutdown()` do the same steps for callers that manage it
/// themselves.
public final class NodeServer: Service, Sendable {
    /// The configuration the node runs with.
    public let configuration: NodeConfiguration
    /// A random id of this node process, in its TXT record and CHALLENGE info.
    public let nodeID: String
    let loop: any EventLoop
    let pool: WorkerPool
    let state: NodeState  // touched only on `loop`
    private let serverChannel = Mutex<(any Channel)?>(nil)
    private let ppChannel = Mutex<(any Channel)?>(nil)
    /// The task that runs the advertisers, once a worker is ready.
    private let advertising = Mutex<Task<Void, Never>?>(nil)
    let pp: PPCompatService
    private let python = Mutex<(version: String?, implementation: String?)>((nil, nil))
    /// The node's stop once begun (by `shutdown()`, or by a start that failed): every
    /// `shutdown()` awaits this one.
    private let stopping = Mutex<Task<Void, Never>?>(nil)
    /// The TLS context every client connection uses (server role, the cluster key).
    let tls: TLSContext

    /// Creates a node; `start()` (or `run()`) opens its port.
    ///
    /// - Parameters:
    ///   - configuration: the node's settings.
    ///   - eventLoopGroup: where its one event loop comes from (listener, sessions,
    ///     cache and pool share it); `nil` takes NIO's shared group.
    /// - Throws: `TLSError` when OpenSSL cannot make a TLS 1.3 context.
    public init(configuration: NodeConfiguration, eventLoopGroup: (any EventLoopGroup)? = nil) throws {
        self.tls = try TLSContext(keys: configuration.secret.keys, role: .server)
        self.configuration = configuration
        self.nodeID = Hex.encode(randomBytes(8))
        self.loop = (eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton).next()
        var poolConfiguration = WorkerPool.Configuration(
            workers: configuration.workers,
            python: configuration.python,
            name: configuration.name,
            logger: configuration.logger
        )
        poolConfiguration.shutdownGrace = configuration.drainTimeout
        self.pool = WorkerPool(configuration: poolConfiguration, eventLoop: self.loop)
        self.state = NodeState(cacheBytes: configuration.cacheBytes)
        self.pp = PPCompatService()
    }

    /// The number of workers the node runs.
    public var workers: Int { self.pool.configuration.workers ?? 0 }

    /// Binds the port, waits until a worker is ready, then accepts clients and
    /// advertises the node (beacons, DNS-SD, the pp-compatible listener when configured).
    ///
    /// Nothing is accepted or advertised before the pool has a ready worker, so a node
    /// whose interpreter cannot start never draws clients. A node of 0 workers does
    /// not wait.
    ///
    /// - Returns: the bound address (useful with port 0).
    /// - Throws: `NodeStartError` when the address cannot be bound or no worker can
    ///   start. The node has then stopped its workers and closed everything:
    ///   `shutdown()` returns at once.
    @discardableResult
    public func start() async throws(NodeStartError) -> SocketAddress {
        let host = self.configuration.host, port = self.configuration.port
        guard NodeConfiguration.maxFrameRange.contains(self.configuration.maxFrame) else {
            await self.stopPool()
            throw NodeStartError(message: "max frame \(self.configuration.maxFrame) is out of range; \(NodeConfiguration.maxFrameAdvice)")
        }
        // autoRead off: it accepts once a worker is ready.
        let bootstrap = self.bootstrap(autoRead: false) { [self] channel in
            // TLS first: the decoder and the session see only the plaintext of a peer
            // that proved it holds the cluster key, and until its HELLO only frames of
            // a few KiB.
            let limit = FrameLimit(NodeProtocol.preambleMaxFrame)
            let session = NodeSession(node: self, channel: channel, frameLimit: limit)
            try channel.pipeline.syncOperations.addHandlers(TLSHandler(context: self.tls), session)
        }
        let channel: any Channel
        do {
            channel = try await bootstrap.childChannelOption(.maxMessagesPerRead, value: 16).bind(host: host, port: port).get()
        } catch {
            await self.stopPool()
            throw NodeStartError(message: "cannot listen on \(host):\(port): \(Self.listenProblem(error, host: host, portFlag: "--port"))")
        }
        self.serverChannel.withLock { $0 = channel }
        do {
            try await self.serve(channel)
        } catch {
            await self.shutdown()
            throw error
        }
        return channel.localAddress!
    }

    /// Once a worker is ready: opens the pp listener when configured (first, so the
    /// beacon and the TXT record carry its port), accepts clients, and advertises.
    private func serve(_ channel: any Channel) async throws(NodeStartError) {
        if self.workers > 0 {
            do {
                try await self.pool.waitUntilReady()
            } catch {
                throw NodeStartError(message: "no Python worker could start: \(Self.trimmedFix(error.reason)); install python3 or point --python / PP_PYTHON at an interpreter")
            }
            // The worker that is ready said which Python it runs.
            let statistics = await self.pool.statistics()
            self.python.withLock { $0 = (statistics.pythonVersion, statistics.pythonImplementation) }
        }
        if let ppPort = self.configuration.ppPort {
            try await self.startPPCompat(port: ppPort)
        }
        do {
            try await channel.setOption(.autoRead, value: true).get()
        } catch {
            throw NodeStartError(message: "cannot accept on \(self.configuration.host):\(self.configuration.port): \(error)")
        }
        await self.advertise(port: channel.localAddress?.port ?? self.configuration.port)
    }

    /// A listener on the node's loop whose connections `child` sets up.
    private func bootstrap(autoRead: Bool, child: @escaping @Sendable (any Channel) throws -> Void) -> ServerBootstrap {
        ServerBootstrap(group: self.loop)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.autoRead, value: autoRead)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in channel.eventLoop.makeCompletedFuture { try child(channel) } }
    }

    /// Runs the advertisers, `Service`s all: beacons, ppft's autodiscovery when the pp
    /// listener is open, and DNS-SD, in one task that `shutdown()` cancels first.
    /// Returns once the beacons' ports are bound, so a probe is answered from then on.
    private func advertise(port: Int) async {
        let configuration = self.configuration, logger = configuration.logger
        let beacon = self.beacon(port: port)
        var advertisers = [BeaconService(beacon: beacon, port: configuration.discoveryPort, style: .native, configuration: configuration, loop: self.loop)]
        // ppft's autodiscovery listens on its server port and connects to whoever sends
        // a datagram starting with "S", as this service does.
        if let ppPort = self.ppAddress?.port {
            advertisers.append(BeaconService(beacon: beacon, port: ppPort, style: .parallelPython, configuration: configuration, loop: self.loop))
        }
        let registration = configuration.dnssd ? self.registration(port: port, txt: beacon.txt) : nil
        if !configuration.dnssd {
            logger.notice("DNS-SD off (--no-dnssd); clients find this node by broadcast beacons or its address")
        }
        let (opened, open) = AsyncStream.makeStream(of: Void.self)
        let task = Task { [advertisers] in
            await withDiscardingTaskGroup { group in
                for advertiser in advertisers {
                    group.addTask { await advertiser.run { open.yield() } }
                }
                if let registration {
                    group.addTask {
                        do {
                            try await registration.run()
                        } catch {
                            logger.warning("DNS-SD off: \(error); clients find this node by broadcast beacons or its address")
                        }
                    }
                }
            }
        }
        self.advertising.withLock { $0 = task }
        for await _ in opened.prefix(advertisers.count) {}
    }

    /// The pp-compatible listener's address, once it runs.
    public var ppAddress: SocketAddress? { self.ppChannel.withLock { $0?.localAddress } }

    /// Opens the pp-compatible listener (its ppft-style autodiscovery starts with the
    /// other advertisers), with a warning of what ppft's protocol exposes. It was asked for, so a port that cannot be bound
    /// stops the node (`NodeStartError`). A node whose secret is ppft's published
    /// default secret keeps the listener closed (unless allowed) and says why; the
    /// native protocol keeps working.
    private func startPPCompat(port: Int) async throws(NodeStartError) {
        let logger = self.configuration.logger
        if self.configuration.secret.bytes == Array(PPWire.defaultSecret.utf8) {
            guard self.configuration.ppAllowDefaultSecret else {
                logger.error("pp-compatible listener off: this node's secret is Parallel Python's published default secret; set a secret of your own (or pass --pp-allow-default-secret to accept it anyway)")
                return
            }
            logger.warning("pp-compatible listener accepts Parallel Python's published default secret (--pp-allow-default-secret): anyone who has read ppft's source can run code on this node")
        }
        let bootstrap = self.bootstrap(autoRead: true) { [self] channel in
            let peer = channel.remoteAddress.map(PeerText.address) ?? "?"
            try channel.pipeline.syncOperations.addHandlers(
                QuickAckHandler(),
                ByteToMessageHandler(PPFrameDecoder(maxFrame: self.configuration.maxFrame)),
                PPSession(node: self, peer: peer, host: channel.remoteAddress?.ipAddress ?? "?")
            )
        }
        do {
            let channel = try await bootstrap.bind(host: self.configuration.host, port: port).get()
            self.ppChannel.withLock { $0 = channel }
            logger.warning(
                "Parallel Python compatible port open (--pp-port): ppft's protocol is unencrypted and unauthenticated after its SHA-1 challenge, so anyone on the network path can read every job and result and can inject into or take over an authenticated connection; and anyone who knows the secret can run code as this user. Open it only on a network you trust."
            )
            logger.info("pp-compatible listener ready", metadata: [LogKey.ppAddress: "\(PeerText.address(channel.localAddress!))", LogKey.ppVersion: "\(self.configuration.ppVersion)"])
        } catch {
            throw NodeStartError(
                message: "cannot listen on \(self.configuration.host):\(port) for Parallel Python clients: \(Self.listenProblem(error, host: self.configuration.host, portFlag: "--pp-port"))"
            )
        }
    }

    /// The DNS-SD registration of `_ppnode._tcp` with the beacon's fields as TXT.
    /// Without avahi-daemon its `run()` fails, and the node says so once and goes on
    /// with beacons.
    private func registration(port: Int, txt: [String: String]) -> DNSSDRegistration {
        let logger = self.configuration.logger
        return DNSSDRegistration(name: self.configuration.name, type: NodeBeacon.serviceType, port: port, txt: txt) { event in
            switch event {
            case .registered(let name): logger.info("DNS-SD on: registered", metadata: [LogKey.service: "\(name).\(NodeBeacon.serviceType)", LogKey.port: "\(port)"])
            case .failed(let error): logger.warning("DNS-SD registration failed; clients find this node by broadcast beacons or its address", metadata: [LogKey.error: "\(error)"])
            }
        }
    }

    /// What this node announces in its beacons.
    func beacon(port: Int) -> NodeBeacon {
        let python = self.python.withLock { $0 }
        return NodeBeacon(
            id: self.nodeID,
            name: self.configuration.name,
            port: port,
            keyid: self.configuration.secret.keyID,
            protocol: Int(NodeProtocol.version),
            cores: System.coreCount,
            workers: self.workers,
            version: ParallelPythonVersion.string,
            arch: HostInfo.architecture,
            os: HostInfo.operatingSystem,
            python: python.version,
            impl: python.implementation,
            pp: self.ppAddress?.port
        )
    }

    /// The info JSON sent in CHALLENGE: the same object as the node's beacon.
    func infoJSON() -> [UInt8] {
        let port = self.serverChannel.withLock { $0?.localAddress?.port } ?? self.configuration.port
        return self.beacon(port: port).json
    }

    /// What a failed bind means and how to fix it, for `cannot listen on HOST:PORT: ...`.
    static func listenProblem(_ error: any Error, host: String, portFlag: String) -> String {
        if let io = error as? IOError {
            switch io.errnoCode {
            case EADDRINUSE:
                return "address already in use; stop the other ppnode (or whatever holds the port) or pick another \(portFlag)"
            case EADDRNOTAVAIL:
                return "\(host) is not an address of this machine; give one of its addresses to --host, or 0.0.0.0 for every interface"
            case EACCES:
                return "permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, pick a \(portFlag) of 1024 or more"
            default:
                return "\(String(cString: strerror(io.errnoCode))); check --host and \(portFlag)"
            }
        }
        if let unknown = error as? SocketAddressError.UnknownHost {
            return "'\(host)' is neither an IP address nor a name this machine can resolve (\(unknown.errorDescription)); give one of this machine's addresses to --host, or 0.0.0.0 for every interface"
        }
        return "\(error); check --host and \(portFlag)"
    }

    /// A worker start error without the pool's own advice (the node gives its own).
    static func trimmedFix(_ reason: String) -> String {
        let suffix = "; install Python 3 or point PP_PYTHON (or --python) at it"
        return reason.hasSuffix(suffix) ? String(reason.dropLast(suffix.count)) : reason
    }

    /// After a bind failure (nothing was opened but the pool): stops the workers, and
    /// the node is closed.
    private func stopPool() async { await self.stop { await self.pool.shutdown() } }

    /// Runs `body` as the node's stop unless one has begun; returns when that stop is over.
    private func stop(_ body: @escaping @Sendable () async -> Void) async {
        let task = self.stopping.withLock { task in
            if task == nil { task = Task { await body() } }
            return task!
        }
        await task.value
    }

    /// Runs the node as a `Service`: starts it (`ready` is told the bound address),
    /// serves until graceful shutdown or cancellation, then drains and closes.
    ///
    /// - Throws: `NodeStartError` when it cannot start (see `start()`).
    public func run(ready: @Sendable (SocketAddress) -> Void) async throws {
        let address = try await self.start()
        ready(address)
        try? await gracefulShutdown()
        await self.shutdown()
    }

    /// `run(ready:)` with nobody to tell.
    public func run() async throws {
        try await self.run { _ in }
    }

    /// Stops gracefully: stops accepting, tells every client the node is draining,
    /// ends queued jobs with `shutdown` (clients reschedule them), lets running jobs
    /// finish within the drain timeout, then closes.
    public func shutdown() async {
        await self.stop { await self.drainAndClose() }
    }

    private func drainAndClose() async {
        let logger = self.configuration.logger
        logger.info("shutting down", metadata: [LogKey.drainTimeout: "\(self.configuration.drainTimeout)"])
        defer { logger.info("stopped") }
        // Stop advertising first: DNS-SD browsers see the service removed, beacons stop.
        if let advertising = self.advertising.withLock({ $0 }) {
            advertising.cancel()
            await advertising.value
        }
        if let pp = self.ppChannel.withLock({ $0 }) { try? await pp.close() }
        try? await self.serverChannel.withLock({ $0 })?.close()
        try? await self.loop.submit { self.state.beginDrain() }.get()
        await self.pool.shutdown()
        try? await self.loop.submit { EventLoopFuture.andAllComplete(self.state.sessions.values.map { $0.closeAfterFlush() }, on: self.loop) }.get().get()
    }

    /// Counters of the node, as the STATS reply carries them.
    public func statisticsJSON() async -> [UInt8] {
        let pool = await self.pool.statistics()
        return (try? await self.loop.submit { self.state.statisticsJSON(node: self, pool: pool) }.get()) ?? []
    }
}

/// Why a node could not start, and how to fix it (`ppnode` prints it and exits 2).
public struct NodeStartError: Error, Sendable, CustomStringConvertible {
    /// The problem and its fix, such as "cannot listen on 0.0.0.0:7340: address
    /// already in use; stop the other ppnode ... or pick another --port".
    public var message: String

    public init(message: String) { self.message = message }

    public var description: String { self.message }
}

/// The node's shared state: cache, sessions, counters. Confined to the node's loop.
///
/// `@unchecked Sendable` is safe because every access happens on that loop (sessions'
/// handlers run there; `NodeServer` hops there with `loop.submit`).
final class NodeState: @unchecked Sendable {
    /// Function bundles by digest, bounded in bytes: a bundle travels once per node.
    var cache: BoundedCache<SHA256Digest, FunctionBundle>
    var bundlesReceived = 0
    var bundleBytesReceived = 0
    /// Large arguments by digest, bounded in bytes like `cache` (and by the same
    /// `--cache-bytes`): a shared argument travels once per node.
    var blobs: BoundedCache<SHA256Digest, [UInt8]>
    var blobsReceived = 0
    var blobBytesReceived = 0
    var sessions: [ObjectIdentifier: NodeSession] = [:]
    var draining = false
    var sessionsAccepted = 0
    /// Sessions past HELLO so far; numbers each one's fair-share owner.
    var sessionsAuthenticated = 0
    var authFailures = 0
    var refusedConnections = 0
    /// Connections that have not sent HELLO yet, per source address.
    var unauthenticated: [String: Int] = [:]
    var unauthenticatedTotal = 0
    var protocolErrors = 0
    var jobsReceived = 0

    init(cacheBytes: Int) {
        self.cache = BoundedCache(capacity: cacheBytes)
        self.blobs = BoundedCache(capacity: cacheBytes)
    }

    /// Counts a new connection against the caps, or says why it is refused.
    func admitUnauthenticated(host: String, caps: UnauthenticatedCaps) -> String? {
        if self.unauthenticatedTotal >= caps.total {
            return "\(self.unauthenticatedTotal) connections are already in their handshake (cap \(caps.total))"
        }
        let fromHost = self.unauthenticated[host, default: 0]
        if fromHost >= caps.perSource {
            return "\(fromHost) connections from \(host) are already in their handshake (cap \(caps.perSource))"
        }
        self.unauthenticated[host] = fromHost + 1
        self.unauthenticatedTotal += 1
        return nil
    }

    /// A connection counted by `admitUnauthenticated` authenticated or closed.
    func releaseUnauthenticated(host: String) {
        self.unauthenticatedTotal -= 1
        let left = self.unauthenticated[host, default: 1] - 1
        self.unauthenticated[host] = left > 0 ? left : nil
    }

    func beginDrain() {
        self.draining = true
        for s in self.sessions.values { s.drain() }
    }

    func statisticsJSON(node: NodeServer, pool: PoolStatistics) -> [UInt8] {
        var loads = [Double](repeating: 0, count: 3)
        _ = getloadavg(&loads, 3)
        let fields: [(String, JSONValue)] = [
            ("id", .string(node.nodeID)),
            ("name", .string(node.configuration.name)),
            ("workers", .int(pool.targetWorkers)),
            ("busy_workers", .int(min(pool.running, pool.targetWorkers))),
            ("queued", .int(pool.queued)),
            ("jobs_done", .int(pool.jobsDone)),
            ("jobs_received", .int(self.jobsReceived)),
            ("busy_seconds", .double(pool.busyTime / .seconds(1))),
            ("sessions", .int(self.sessions.count)),
            ("sessions_accepted", .int(self.sessionsAccepted)),
            ("auth_failures", .int(self.authFailures)),
            ("refused_connections", .int(self.refusedConnections)),
            ("protocol_errors", .int(self.protocolErrors)),
            ("bundles_received", .int(self.bundlesReceived)),
            ("bundle_bytes_received", .int(self.bundleBytesReceived)),
            ("cache_entries", .int(self.cache.count)),
            ("cache_bytes", .int(self.cache.totalCost)),
            ("blobs_received", .int(self.blobsReceived)),
            ("blob_bytes_received", .int(self.blobBytesReceived)),
            ("blob_cache_entries", .int(self.blobs.count)),
            ("blob_cache_bytes", .int(self.blobs.totalCost)),
            ("python", .string(pool.pythonVersion ?? "")),
            ("python_implementation", .string(pool.pythonImplementation ?? "")),
            ("pp_connections", .int(node.pp.connections)),
            ("pp_jobs_done", .int(node.pp.jobsDone)),
            ("pp_auth_failures", .int(node.pp.authFailures)),
            ("load_average", .double(loads[0])),
            // The fair share: each client's worker time lately (decayed), least first.
            ("clients", .array(pool.owners.map { o in
                .object(["owner": .string(o.owner), "used_seconds": .double(o.used), "weight": .double(o.weight), "queued": .int(o.queued), "running": .int(o.running)])
            })),
        ]
        // In this order (a JSONValue object would sort its keys).
        var w = JSONWriter()
        w.object(fields) { $1.write(to: &$0) }
        return w.bytes
    }
}
