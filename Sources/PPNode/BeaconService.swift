import Logging
import NIOCore
import PPCore
import PPRuntime
import ServiceLifecycle

/// The broadcast half of a node's discovery: a beacon every `interval` to the
/// broadcast target, and an immediate answer to every probe. (DNS-SD is the other
/// half.) When it stops it sends three goodbye beacons, so clients and ppnodes see the
/// node leave at once rather than after its beacons fall silent. Lives on the node's loop.
///
/// Creating one opens nothing. It is a `Service`: `run()` binds the discovery port and
/// advertises until graceful shutdown or cancellation, then stops.
///
/// `@unchecked Sendable` is safe because its state is touched only on that loop: the
/// discovery socket's callbacks and the repeated task run there, and `run()` hops there.
final class BeaconService: Service, @unchecked Sendable {
    private let loop: any EventLoop
    private let beacon: [UInt8]
    /// The same beacon with `"leaving": true`, sent a few times when the service stops.
    private let goodbye: [UInt8]
    private let port: Int
    /// The node's: its --host (the discovery socket listens on the interface that holds
    /// it), the broadcast target, the beacon interval and the logger.
    private let configuration: NodeConfiguration
    private var logger: Logger { self.configuration.logger }
    private var socket: DiscoverySocket?
    private var timer: RepeatedTask?
    private var lastSendError: String?

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

    init(beacon: NodeBeacon, port: Int, style: Style, configuration: NodeConfiguration, loop: any EventLoop) {
        self.beacon = beacon.datagram
        var goodbye = beacon
        goodbye.leaving = true
        self.goodbye = goodbye.datagram
        self.port = port
        self.style = style
        self.configuration = configuration
        self.loop = loop
    }

    /// Advertises until graceful shutdown or cancellation, then stops.
    func run() async {
        await self.run(opened: {})
    }

    /// `run()`, calling `opened` once the discovery port is bound (or could not be), so
    /// a probe sent from then on is answered.
    func run(opened: () -> Void) async {
        await self.open()
        opened()
        try? await gracefulShutdown()
        let sent = try? await self.loop.submit { () -> EventLoopFuture<Void> in
            self.timer?.cancel()
            guard let socket = self.socket, self.style == .native, case .address(let host) = self.configuration.broadcast,
                let destination = try? SocketAddress(ipAddress: host, port: self.port)
            else { return self.loop.makeSucceededVoidFuture() }
            // Three copies: a datagram may be lost, and a repeat costs the receivers nothing.
            return .andAllComplete((0..<3).map { _ in socket.send(self.goodbye, to: destination) }, on: self.loop)
        }.get()
        try? await sent?.get()
        try? await self.loop.submit {
            self.socket?.close()
            self.socket = nil
        }.get()
    }

    /// Binds the discovery port (shared with other nodes and clients on this host) and
    /// starts the beacons. A failure turns broadcast discovery off with a log line; the
    /// node keeps serving.
    private func open() async {
        let logger = self.logger
        do {
            let socket = try await DiscoverySocket.open(
                port: self.port,
                binding: DiscoverySocket.Binding(listeningOn: self.configuration.host),
                on: self.loop,
                receive: { [self] socket, datagram in self.received(datagram, on: socket) },
                onError: { error in logger.debug("discovery socket error", metadata: [LogKey.error: "\(error)"]) }
            ).get()
            try await self.loop.submit {
                self.socket = socket
                self.startBeacons(on: socket)
            }.get()
        } catch {
            self.logger.warning(
                "broadcast discovery off: cannot bind the UDP discovery port; clients can still use DNS-SD or the node's address",
                metadata: [LogKey.discoveryPort: "\(self.port)", LogKey.error: "\(error)"]
            )
        }
    }

    private func startBeacons(on socket: DiscoverySocket) {
        guard case .address(let host) = self.configuration.broadcast else {
            self.logger.notice("broadcast beacons off (PP_BROADCAST=off); answering probes only", metadata: [LogKey.discoveryPort: "\(self.port)"])
            return
        }
        guard let destination = try? SocketAddress(ipAddress: host, port: self.port) else { return }
        self.logger.info("broadcast beacons on", metadata: [LogKey.broadcast: "\(host):\(self.port)", LogKey.interval: "\(self.configuration.beaconInterval)"])
        let announcement = self.style == .parallelPython ? Self.ppAnnouncement : self.beacon
        let interval = TimeAmount(self.configuration.beaconInterval)
        // The first at once, then one every interval (until `run()` cancels the timer).
        self.timer = socket.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { [self] _ in
            self.send(announcement, to: destination, on: socket)
        }
    }

    private func send(_ bytes: [UInt8], to destination: SocketAddress, on socket: DiscoverySocket) {
        socket.send(bytes, to: destination).whenComplete { [self] result in
            switch result {
            case .success:
                if self.lastSendError != nil { self.logger.notice("broadcast beacons sent again", metadata: [LogKey.broadcast: "\(PeerText.address(destination))"]) }
                self.lastSendError = nil
            case .failure(let error):
                let text = "\(error)"
                if self.lastSendError != text {
                    self.logger.warning("cannot send a broadcast beacon; broadcast discovery is off until it works", metadata: [LogKey.broadcast: "\(PeerText.address(destination))", LogKey.error: "\(text)"])
                }
                self.lastSendError = text
            }
        }
    }

    /// Answers a probe (ours, or ppft's "C" on the pp-compatible port); ignores
    /// everything else.
    private func received(_ datagram: DiscoverySocket.Datagram, on socket: DiscoverySocket) {
        let bytes = datagram.bytes
        if self.style == .parallelPython, bytes.first == UInt8(ascii: "C") {
            // A ppft client listens on the pp port of the wildcard address, not on the
            // port it sent from: answer there, by broadcast as ppft's server does (a
            // unicast would reach only one of several sockets sharing the port).
            let host = if case .address(let broadcast) = self.configuration.broadcast { broadcast } else { datagram.source.ipAddress ?? "127.0.0.1" }
            guard let to = try? SocketAddress(ipAddress: host, port: self.port) else { return }
            self.send(Self.ppAnnouncement, to: to, on: socket)
        } else if NodeBeacon.isProbe(bytes), bytes.count >= self.beacon.count {
            // Not answered: anything else, and probes smaller than the answer (an old
            // client, or a forged source address hoping for amplification).
            socket.send(self.beacon, to: datagram.source)
        }
    }
}
