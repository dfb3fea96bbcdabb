import Logging
import NIOCore
import NIOPosix
import PPCore
import PPRuntime

#if canImport(Glibc)
import Glibc
#endif

/// The broadcast half of a node's discovery: a beacon every `interval` to the
/// broadcast target, and an immediate answer to every probe. (DNS-SD is the other
/// half.) Lives on the node's loop.
///
/// `@unchecked Sendable` is safe because every method runs on that loop: channel
/// callbacks and the repeated task are scheduled there, and `NodeServer` hops there.
final class BeaconService: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private var beacon: [UInt8]
    private let target: BroadcastTarget
    private let port: Int
    private let interval: Duration
    private let logger: Logger
    private var channel: (any Channel)?
    private var timer: RepeatedTask?
    private var lastSendError: String?
    /// Probes answered since start.
    private(set) var probesAnswered = 0

    /// What the service speaks on its port.
    enum Style {
        /// Our own beacons (`PPNB`...) and probes (`PPNQ`), on the discovery port.
        case native
        /// Parallel Python's autodiscovery, on the pp-compatible port: the datagram
        /// "S" (a ppft client connects to the pp port of whoever sends it), sent
        /// periodically and in answer to a client's "C". Our own probes are answered
        /// with the native beacon as well.
        case parallelPython
    }

    private let style: Style

    /// ppft's server announcement: one byte, as ppserver sends. A ppft client decodes
    /// the datagram as ASCII before it checks the first byte, so the native beacon
    /// would be missed when the node's name is not ASCII.
    static let ppAnnouncement: [UInt8] = Array("S".utf8)

    /// The node's --host: the discovery socket listens on the interface that holds it.
    private let host: String

    init(beacon: NodeBeacon, host: String, target: BroadcastTarget, port: Int, interval: Duration, logger: Logger, style: Style = .native) {
        self.style = style
        self.host = host
        self.beacon = beacon.datagram
        self.target = target
        self.port = port
        self.interval = interval
        self.logger = logger
    }

    /// Binds the discovery port (shared with other nodes and clients on this host) and
    /// starts the beacons. A failure turns broadcast discovery off with a log line; the
    /// node keeps serving.
    func start(group: any EventLoopGroup) async {
        do {
            let bootstrap = DatagramBootstrap(group: group)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .channelOption(.socketOption(.so_broadcast), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(self) }
                }
            let channel: any Channel
            if ["0.0.0.0", "", "::", "*"].contains(self.host) {
                channel = try await bootstrap.bind(host: "0.0.0.0", port: self.port).get()
            } else if let interface = NetworkInterfaces.name(owning: self.host) {
                // Broadcasts reach only wildcard-bound sockets: bind the wildcard, but on
                // the interface of --host alone, so other networks cannot probe us.
                channel = try await bootstrap.withBoundSocket(try Self.socket(port: self.port, interface: interface)).get()
            } else {
                channel = try await bootstrap.bind(host: self.host, port: self.port).get()
            }
            try await channel.eventLoop.submit {
                self.channel = channel
                self.startBeacons(on: channel)
            }.get()
        } catch {
            self.logger.warning(
                "broadcast discovery off: cannot bind the UDP discovery port; clients can still use DNS-SD or the node's address",
                metadata: ["discovery.port": "\(self.port)", "error": "\(error)"]
            )
        }
    }

    /// A UDP socket bound to the wildcard address and `port` on `interface` only.
    static func socket(port: Int, interface: String) throws -> CInt {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        var one: CInt = 1
        var name = Array(interface.utf8CString)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = INADDR_ANY
        let ok = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size)) == 0
            && setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, socklen_t(MemoryLayout<CInt>.size)) == 0
            && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, &name, socklen_t(name.count)) == 0
            && withUnsafePointer(to: &address, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }) == 0
        guard ok else {
            let e = errno
            close(fd)
            throw IOError(errnoCode: e, reason: "discovery socket on \(interface)")
        }
        return fd
    }

    private func startBeacons(on channel: any Channel) {
        guard case .address(let host) = self.target else {
            self.logger.notice("broadcast beacons off (PP_BROADCAST=off); answering probes only", metadata: ["discovery.port": "\(self.port)"])
            return
        }
        guard let destination = try? SocketAddress(ipAddress: host, port: self.port) else { return }
        self.logger.info("broadcast beacons on", metadata: ["broadcast": "\(host):\(self.port)", "interval": "\(self.interval)"])
        self.send(to: destination)
        let ms = Int64(self.interval.components.seconds * 1000 + self.interval.components.attoseconds / 1_000_000_000_000_000)
        self.timer = channel.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(ms), delay: .milliseconds(ms)) { [self] _ in
            self.send(to: destination)
        }
    }

    private func send(to destination: SocketAddress) {
        guard let channel = self.channel else { return }
        self.send(self.style == .parallelPython ? Self.ppAnnouncement : self.beacon, to: destination, on: channel)
    }

    private func send(_ bytes: [UInt8], to destination: SocketAddress, on channel: any Channel) {
        let envelope = AddressedEnvelope(remoteAddress: destination, data: channel.allocator.buffer(bytes: bytes))
        channel.writeAndFlush(envelope).whenComplete { [self] result in
            switch result {
            case .success:
                if self.lastSendError != nil { self.logger.notice("broadcast beacons sent again", metadata: ["broadcast": "\(destination)"]) }
                self.lastSendError = nil
            case .failure(let error):
                let text = "\(error)"
                if self.lastSendError != text {
                    self.logger.warning("cannot send a broadcast beacon; broadcast discovery is off until it works", metadata: ["broadcast": "\(destination)", "error": "\(text)"])
                }
                self.lastSendError = text
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = Self.unwrapInboundIn(data)
        let bytes = Array(envelope.data.readableBytesView)
        let destination = envelope.remoteAddress
        if self.style == .parallelPython, bytes.first == UInt8(ascii: "C") {
            // A ppft client listens on the pp port of the wildcard address, not on the
            // port it sent from: answer there, by broadcast as ppft's server does (a
            // unicast would reach only one of several sockets sharing the port).
            let host: String
            if case .address(let broadcast) = self.target { host = broadcast } else { host = envelope.remoteAddress.ipAddress ?? "127.0.0.1" }
            guard let to = try? SocketAddress(ipAddress: host, port: self.port) else { return }
            self.probesAnswered += 1
            self.send(Self.ppAnnouncement, to: to, on: context.channel)
            return
        } else if !NodeBeacon.isProbe(bytes) || bytes.count < self.beacon.count {
            // Not a probe, or one smaller than the answer (an old client, or a forged
            // source address hoping for amplification).
            return
        }
        self.probesAnswered += 1
        let reply = AddressedEnvelope(remoteAddress: destination, data: context.channel.allocator.buffer(bytes: self.beacon))
        context.writeAndFlush(Self.wrapOutboundOut(reply), promise: nil)
    }

    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A bad datagram or an ICMP error must not stop discovery.
        self.logger.debug("discovery socket error", metadata: ["error": "\(error)"])
    }

    /// Sends `beacon` from now on (its fields changed).
    func update(beacon: NodeBeacon) {
        self.beacon = beacon.datagram
    }

    /// Stops advertising (first step of a graceful shutdown).
    func stop() {
        self.timer?.cancel()
        self.channel?.close(promise: nil)
        self.channel = nil
    }
}
