import Foundation
import Logging
import NIOCore
import PPCore
import PPDNSSD
import PPRuntime
import PPTLS

/// Turns node addresses, static and discovered, into `NodeLink`s for the scheduler:
/// the nodes of the configuration, and those found by their broadcast beacons (it
/// listens, and probes once at start) and by DNS-SD.
///
/// Confined to the job server's loop (`@unchecked Sendable` for that reason).
final class ResourceManager: @unchecked Sendable {
    let scheduler: Scheduler
    let configuration: JobServer.Configuration
    private let secret: ClusterSecret?
    /// The client's TLS context (the cluster key), shared by every link.
    let tls: TLSContext?
    /// The client's name in HELLO.
    let clientName = "\(ProcessInfo.processInfo.hostName) pid \(getpid())"
    /// At most this many nodes found by discovery are linked at once: forged beacons
    /// cannot make the client open connections without end.
    static let maxDiscoveredLinks = 64
    /// At most this many distinct "ignored" reports are remembered.
    static let maxReports = 1024
    private var links: [String: NodeLink] = [:]
    private var reported: Set<String> = []
    /// DNS-SD service name -> address key, to act on removals.
    private var services: [String: String] = [:]
    /// What is known of each node, by address (at most `maxReports`), for `verdicts()`.
    private var sightings: [String: NodeSighting] = [:]
    /// Discovery: the beacon socket, the probe socket, the DNS-SD browser.
    private var sockets: [DiscoverySocket] = []
    private var browser: DNSSDBrowser?
    private var stopped = false

    /// Loads the cluster secret when `configuration` has none and may use nodes.
    init(scheduler: Scheduler, configuration: JobServer.Configuration) {
        self.scheduler = scheduler
        self.configuration = configuration
        var secret = configuration.secret
        if secret == nil, !configuration.nodes.isEmpty || configuration.discover {
            do {
                secret = try ClusterSecret.load(file: nil, create: false).secret
            } catch {
                // Quiet when there is simply no secret and nodes would only be discovered.
                if !configuration.nodes.isEmpty || ClusterSecret.isNamedByEnvironment {
                    configuration.logger.warning("no cluster secret: nodes cannot be used", metadata: [LogKey.reason: "\(error)"])
                }
            }
        }
        self.secret = secret
        do {
            self.tls = try secret.map { try TLSContext(keys: $0.keys, role: .client) }
        } catch {
            scheduler.logger.error("nodes unusable: \(error)")
            self.tls = nil
        }
        if configuration.discover {
            for problem in configuration.environmentProblems { configuration.logger.warning("\(problem)") }
        }
    }

    /// Adds the nodes given by address (each is retried for as long as the server
    /// runs) and starts discovery.
    func start() {
        for address in self.configuration.nodes {
            self.sightings[address.description] = NodeSighting(address: address.description, via: ["given"], interface: NetworkInterfaces.name(reaching: address.host))
            self.add(address, discovered: false)
        }
        guard self.configuration.discover else { return }
        self.startBroadcast()
        if self.configuration.dnssd {
            self.startDNSSD()
        } else {
            self.scheduler.logger.info("DNS-SD off (PP_DNSSD=off); finding nodes by broadcast beacons and given addresses only")
        }
    }

    /// A node announced itself at `host` (by a beacon, or a resolved DNS-SD service):
    /// use it if it is of our cluster and speaks our protocol, else report it once.
    func discovered(_ beacon: NodeBeacon, host: String, via: String) {
        guard !self.stopped else { return }
        let address = NodeAddress(host: host, port: beacon.port)
        if via == "DNS-SD", self.services.count < Self.maxReports || self.services[beacon.name] != nil {
            self.services[beacon.name] = address.description
        }
        if self.sightings.count < Self.maxReports || self.sightings[address.description] != nil {
            self.sightings[address.description, default: NodeSighting(address: address.description, interface: NetworkInterfaces.name(reaching: host))]
                .heard(beacon, via: via, at: Date().timeIntervalSince1970)
        }
        if beacon.leaving == true {
            // A goodbye beacon: stop trying a node we are not connected to (a connected
            // one says GOODBYE on its session and drains).
            if let link = self.links[address.description], link.discovered, !link.connected {
                self.scheduler.logger.info("node left (goodbye beacon)", metadata: [LogKey.node: "\(address)"])
                link.stop()
                self.forget(link)
            }
            return
        }
        if let link = self.links[address.description] {
            // A node that came back (or restarted: a new id) is tried at once, not after
            // the backoff. A connected link is kept whatever a beacon says: beacons are
            // not authenticated, and a restarted node's old connection fails by itself.
            link.nudge()
            return
        }
        guard let secret = self.secret, beacon.keyid == secret.keyID else {
            let ids: Logger.Metadata = [LogKey.nodeKeyID: "\(PeerText.cut(beacon.keyid, limit: 32))", LogKey.ourKeyID: "\(self.secret?.keyID ?? "none (no secret)")"]
            return self.ignored(address, "keyid", "node of another cluster ignored", ids)
        }
        guard beacon.protocol >= Int(NodeProtocol.minimumVersion), beacon.protocol <= Int(NodeProtocol.version) else {
            let versions: Logger.Metadata = [LogKey.nodeProtocol: "\(beacon.protocol)", LogKey.ourProtocol: "\(NodeProtocol.version)"]
            return self.ignored(address, "protocol", "node with an incompatible protocol ignored", versions)
        }
        guard beacon.workers > 0 else {
            return self.ignored(address, "workers", "node with no workers ignored", [LogKey.workers: "0"])
        }
        guard self.links.values.filter(\.discovered).count < Self.maxDiscoveredLinks else {
            let cap: Logger.Metadata = [LogKey.cap: "\(Self.maxDiscoveredLinks)"]
            return self.ignored(address, "cap", "node ignored: the client already links the most discovered nodes it will", cap)
        }
        self.scheduler.logger.info("node discovered", metadata: [LogKey.node: "\(address)", LogKey.nodeName: "\(PeerText.cut(beacon.name, limit: 64))", LogKey.via: "\(via)"])
        self.add(address, discovered: true)
    }

    /// A node's DNS-SD service went away. A node that is connected says goodbye or
    /// misses heartbeats on its own; one we are still trying to reach is forgotten
    /// until it is announced again.
    func withdrawn(serviceName: String) {
        guard !self.stopped, let key = self.services.removeValue(forKey: serviceName), let link = self.links[key], link.discovered else { return }
        self.scheduler.logger.info("node withdrew its DNS-SD service", metadata: [LogKey.node: "\(key)", LogKey.nodeName: "\(PeerText.cut(serviceName, limit: 64))"])
        if !link.connected {
            link.stop()
            self.forget(link)
        }
    }

    /// The outcome of a connection attempt to `node`, for its verdict.
    func contacted(_ node: String, _ contact: NodeSighting.Contact) {
        self.sightings[node]?.contact = contact
    }

    /// Every node known, given or discovered, with whether it is used and why not.
    func verdicts() -> [NodeVerdict] {
        NodeVerdict.judge(Array(self.sightings.values), ourKeyID: self.secret?.keyID, now: Date().timeIntervalSince1970)
    }

    /// Drops a link that was stopped or gave up (until its node is announced again).
    func forget(_ link: NodeLink) {
        self.links[link.name] = nil
        self.scheduler.nodeProblem(nil, node: link.name)
    }

    private func add(_ address: NodeAddress, discovered: Bool) {
        guard !self.stopped, self.links[address.description] == nil else { return }
        let link = NodeLink(address: address, manager: self, discovered: discovered)
        self.links[address.description] = link
        self.scheduler.joining(node: link.name)
        link.start()
    }

    /// Reports once per node and reason (`what`) that a node is ignored.
    private func ignored(_ address: NodeAddress, _ what: String, _ message: Logger.Message, _ metadata: Logger.Metadata) {
        guard self.reported.count < Self.maxReports, self.reported.insert("\(address)/\(what)").inserted else { return }
        self.scheduler.logger.notice(message, metadata: metadata.merging([LogKey.node: "\(address)"]) { old, _ in old })
    }

    func stop() {
        self.stopped = true
        for socket in self.sockets { socket.close() }
        self.sockets.removeAll()
        self.browser?.cancel()
        self.browser = nil
        for link in self.links.values { link.stop() }
    }

    // MARK: Discovery

    /// Binds the shared discovery port (beacons) and an ephemeral port (probe answers),
    /// then probes. Failures turn broadcast discovery off with one log line.
    private func startBroadcast() {
        let (logger, loop, port) = (self.scheduler.logger, self.scheduler.loop, self.configuration.discoveryPort)
        // Both sockets hand beacons over; errors (an ICMP error, a bad datagram) must
        // not stop discovery and are ignored.
        let receive: @Sendable (DiscoverySocket, DiscoverySocket.Datagram) -> Void = { [self] _, datagram in
            guard let beacon = NodeBeacon(datagram: datagram.bytes), let host = datagram.source.ipAddress else { return }
            self.discovered(beacon, host: host, via: "broadcast")
        }
        DiscoverySocket.open(port: port, on: loop, receive: receive).whenComplete { [self] result in
            switch result {
            case .success(let socket): self.sockets.append(socket)
            case .failure(let error):
                logger.warning("broadcast discovery off: cannot listen for beacons", metadata: [LogKey.discoveryPort: "\(port)", LogKey.error: "\(error)"])
            }
        }
        guard case .address(let host) = self.configuration.broadcast else {
            logger.info("broadcast probes off (PP_BROADCAST=off); listening for beacons only")
            return
        }
        DiscoverySocket.open(port: 0, on: loop, receive: receive).whenComplete { [self] result in
            guard case .success(let socket) = result, let destination = try? SocketAddress(ipAddress: host, port: port) else {
                logger.warning("broadcast discovery: cannot send probes", metadata: [LogKey.broadcast: "\(host):\(port)"])
                return
            }
            self.sockets.append(socket)
            socket.send(NodeBeacon.probe, to: destination).whenFailure { error in
                logger.warning("broadcast discovery: cannot send a probe", metadata: [LogKey.broadcast: "\(destination)", LogKey.error: "\(error)"])
            }
        }
    }

    /// Browses `_ppnode._tcp`; browser callbacks arrive on the browser's queue and hop
    /// to the loop. When avahi-daemon cannot be reached, says once that DNS-SD is off
    /// and why (broadcast beacons still work).
    private func startDNSSD() {
        let (logger, loop) = (self.scheduler.logger, self.scheduler.loop)
        do {
            self.browser = try DNSSDBrowser(type: NodeBeacon.serviceType) { [self] event in
                loop.execute {
                    switch event {
                    case .found(let service):
                        guard let beacon = NodeBeacon(txt: service.txt, port: service.port, serviceName: service.name) else {
                            logger.debug("DNS-SD service without a ppnode TXT record ignored", metadata: [LogKey.service: "\(service.name)"])
                            return
                        }
                        self.discovered(beacon, host: service.address, via: "DNS-SD")
                    case .removed(let name):
                        self.withdrawn(serviceName: name)
                    case .failed(let error):
                        logger.notice("DNS-SD: \(error)")
                    }
                }
            }
        } catch {
            // Info, not notice: a machine without avahi-daemon is common, and a run that
            // only wants local workers should not say so every time (ppnodes --why does).
            logger.info("DNS-SD off: \(error); finding nodes by broadcast beacons and given addresses only")
        }
    }
}
