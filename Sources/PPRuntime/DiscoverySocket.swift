public import NIOCore
import Glibc
import NIOPosix

/// One UDP socket of broadcast discovery (docs/PROTOCOL.md, "Discovery datagrams"):
/// the one implementation that ppnode's beacons, the client library's beacon listener
/// and `ppnodes` all use.
///
/// Every socket is opened the same way: `SO_REUSEADDR` (several nodes and clients on
/// one host share the discovery port) and `SO_BROADCAST` (beacons and probes go to a
/// broadcast address), bound as `Binding` says. Datagrams that arrive are handed to
/// `receive` with their source address, on the socket's event loop, together with the
/// socket itself so that the receiver can answer at once. A read error (an ICMP error,
/// a datagram the kernel refused) does not stop the socket; it goes to `onError`.
///
/// ```swift
/// let socket = try await DiscoverySocket.open(port: 0, on: loop) { _, datagram in
///     if let beacon = NodeBeacon(datagram: datagram.bytes) { print(beacon.name, datagram.source) }
/// }.get()
/// try await socket.send(NodeBeacon.probe, to: SocketAddress(ipAddress: "127.255.255.255", port: 7340)).get()
/// ```
///
/// A value: copies share the one socket.
public struct DiscoverySocket: Sendable {
    /// A datagram that arrived, and where from.
    public struct Datagram: Sendable {
        /// The datagram's bytes (at most 2,048 are read; discovery datagrams have at most 1,400).
        public var bytes: [UInt8]
        /// The address and port it was sent from.
        public var source: SocketAddress
    }

    /// The address a discovery socket is bound to.
    public enum Binding: Sendable, Equatable {
        /// The wildcard address 0.0.0.0, every interface: the only binding that hears
        /// broadcasts on Linux.
        case wildcard
        /// The wildcard address, on this interface alone (`SO_BINDTODEVICE`): hears
        /// broadcasts there, and nothing from other networks.
        case wildcardOnInterface(String)
        /// This address (one no interface of this machine holds).
        case address(String)

        /// The binding of a node listening on `host` (its `--host`): the wildcard for
        /// a wildcard host, the wildcard on the interface that holds `host` when one
        /// does, else `host` itself.
        ///
        /// - Parameter host: the node's listen address (`0.0.0.0`, `10.0.0.5`, ...).
        public init(listeningOn host: String) {
            if ["0.0.0.0", "", "::", "*"].contains(host) {
                self = .wildcard
            } else if let interface = NetworkInterfaces.name(owning: host) {
                // Broadcasts reach only wildcard-bound sockets: bind the wildcard, but on
                // the interface of --host alone, so other networks cannot probe us.
                self = .wildcardOnInterface(interface)
            } else {
                self = .address(host)
            }
        }
    }

    private let channel: any Channel

    private init(channel: any Channel) {
        self.channel = channel
    }

    /// The event loop the socket's callbacks run on.
    public var eventLoop: any EventLoop { self.channel.eventLoop }

    /// The address the socket is bound to (its port, when it was opened with port 0).
    public var localAddress: SocketAddress? { self.channel.localAddress }

    /// Opens a discovery socket.
    ///
    /// - Parameters:
    ///   - port: the UDP port; 0 picks a free one (a client's probes go from there).
    ///   - binding: the address to bind; the wildcard by default.
    ///   - eventLoop: where the socket runs and `receive` and `onError` are called.
    ///   - receive: called with the socket and each datagram that arrives.
    ///   - onError: called with each error the socket reports while it runs (the socket
    ///     stays open); `nil` ignores them.
    /// - Returns: a future of the open socket; it fails with the `IOError` of the socket
    ///   or bind call (port in use without `SO_REUSEADDR` on the other socket, no such
    ///   interface, not allowed).
    public static func open(
        port: Int,
        binding: Binding = .wildcard,
        on eventLoop: any EventLoop,
        receive: @escaping @Sendable (DiscoverySocket, Datagram) -> Void,
        onError: (@Sendable (any Error) -> Void)? = nil
    ) -> EventLoopFuture<DiscoverySocket> {
        let bootstrap = DatagramBootstrap(group: eventLoop)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.socketOption(.so_broadcast), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(receive: receive, onError: onError))
                }
            }
        let channel: EventLoopFuture<any Channel>
        do {
            channel = switch binding {
            case .wildcard: bootstrap.bind(host: "0.0.0.0", port: port)
            case .wildcardOnInterface(let interface): bootstrap.withBoundSocket(try Self.socket(port: port, interface: interface))
            case .address(let host): bootstrap.bind(host: host, port: port)
            }
        } catch {
            channel = eventLoop.makeFailedFuture(error)
        }
        return channel.map { DiscoverySocket(channel: $0) }
    }

    /// Sends one datagram.
    ///
    /// - Parameters:
    ///   - bytes: the datagram (a beacon, a probe, ppft's announcement).
    ///   - destination: a broadcast address, or the source of a probe.
    /// - Returns: a future that fails with the send's error (no route to a broadcast
    ///   address, a closed socket).
    @discardableResult
    public func send(_ bytes: [UInt8], to destination: SocketAddress) -> EventLoopFuture<Void> {
        let envelope = AddressedEnvelope(remoteAddress: destination, data: self.channel.allocator.buffer(bytes: bytes))
        return self.channel.writeAndFlush(envelope)
    }

    /// Closes the socket; datagrams no longer arrive.
    ///
    /// - Returns: a future that succeeds once the socket is closed (also when it already was).
    @discardableResult
    public func close() -> EventLoopFuture<Void> {
        self.channel.close().flatMapErrorThrowing { error in
            if let error = error as? ChannelError, error == .alreadyClosed { return }
            throw error
        }
    }

    /// A UDP socket bound to the wildcard address and `port` on `interface` only.
    private static func socket(port: Int, interface: String) throws -> CInt {
        let address = try SocketAddress(ipAddress: "0.0.0.0", port: port)
        let fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        var one: CInt = 1
        var name = Array(interface.utf8CString)
        let ok = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size)) == 0
            && setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, socklen_t(MemoryLayout<CInt>.size)) == 0
            && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, &name, socklen_t(name.count)) == 0
            && address.withSockAddr { bind(fd, $0, socklen_t($1)) } == 0
        guard ok else {
            let e = errno
            Glibc.close(fd)
            throw IOError(errnoCode: e, reason: "discovery socket on \(interface)")
        }
        return fd
    }

    /// Hands what the channel reads to the socket's owner (NIO calls it on the
    /// channel's event loop).
    private final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>

        private let receive: @Sendable (DiscoverySocket, Datagram) -> Void
        private let onError: (@Sendable (any Error) -> Void)?

        init(receive: @escaping @Sendable (DiscoverySocket, Datagram) -> Void, onError: (@Sendable (any Error) -> Void)?) {
            self.receive = receive
            self.onError = onError
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = Self.unwrapInboundIn(data)
            let datagram = Datagram(bytes: Array(envelope.data.readableBytesView), source: envelope.remoteAddress)
            self.receive(DiscoverySocket(channel: context.channel), datagram)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            // A bad datagram or an ICMP error must not stop discovery.
            self.onError?(error)
        }
    }
}
