import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import PPCommandLine
import PPCore
import PPDNSSD
import PPRuntime
import ParallelPython
import Synchronization

/// `ppnodes`: lists the ppnode daemons of the LAN and their state.
@main
struct PPNodes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ppnodes",
        abstract: "List the ppnode daemons that answer on this network, and their state.",
        discussion: """
            Browses DNS-SD (_ppnode._tcp, through avahi-daemon; PP_DNSSD=off skips it) \
            and sends a probe to $PP_BROADCAST (default 255.255.255.255; off sends none) \
            on the discovery port ($PP_DISCOVERY_PORT, default 7340), gathers answers \
            for --timeout seconds, then asks every node of your cluster (same secret key \
            id) for its counters over the native protocol. Nodes of another cluster are \
            listed with what they announce. When one path is off, ppnodes says why once \
            and uses the other.

            Exit status: 0 when at least one node was found, 1 when none, 2 on a bad \
            secret, PP_BROADCAST or PP_DISCOVERY_PORT, 64 on a bad command line.

            Examples:
              ppnodes
              ppnodes --json | python3 -m json.tool
              ppnodes --watch --timeout 1
            """
    )

    @Option(help: ArgumentHelp("Seconds to wait for nodes (default 2).", valueName: "SECONDS"))
    var timeout: Double = 2

    @Flag(help: "Print JSON (an array of nodes) for scripts.")
    var json = false

    @Flag(help: "Refresh the list every --timeout seconds until interrupted.")
    var watch = false

    @OptionGroup var secretOptions: SecretOptions

    func validate() throws {
        guard self.timeout > 0, self.timeout <= 60, self.timeout.isFinite else {
            throw ValidationError("--timeout must be more than 0 and at most 60 seconds (got \(self.timeout))")
        }
    }

    func run() async throws {
        let target: BroadcastTarget
        let port: Int
        do {
            target = try BroadcastTarget.fromEnvironment()
            port = try NodeBeacon.discoveryPort()
        } catch {
            FileHandle.standardError.write(Data("ppnodes: \(error)\n".utf8))
            throw ExitCode(2)
        }
        var secret: ClusterSecret?
        do {
            secret = try self.secretOptions.load().secret
        } catch {
            if self.secretOptions.secretFile != nil {
                FileHandle.standardError.write(Data("ppnodes: \(error)\n".utf8))
                throw ExitCode(2)
            }
            FileHandle.standardError.write(Data("ppnodes: \(error); nodes are listed from their beacons only\n".utf8))
        }
        let useDNSSD = !["off", "no", "false", "0"].contains(ProcessInfo.processInfo.environment["PP_DNSSD"]?.lowercased() ?? "")
        var paths: [String] = []
        if case .address(let a) = target { paths.append("broadcast probe to \(a):\(port)") } else { paths.append("beacons on port \(port) (PP_BROADCAST=off)") }
        if !useDNSSD { FileHandle.standardError.write(Data("ppnodes: DNS-SD off (PP_DNSSD=off); listing nodes found by broadcast only\n".utf8)) }
        var dnssdReported = false
        repeat {
            let browse = useDNSSD ? DNSSDCollector() : nil
            if let error = browse?.error, !dnssdReported {
                dnssdReported = true
                FileHandle.standardError.write(Data("ppnodes: DNS-SD off: \(error); listing nodes found by broadcast only\n".utf8))
            } else if browse?.error == nil, useDNSSD, !paths.contains("DNS-SD") {
                paths.append("DNS-SD")
            }
            let rows = await Self.survey(target: target, port: port, window: self.timeout, secret: secret, browse: browse)
            if self.watch, !self.json { print("\u{1B}[H\u{1B}[2J", terminator: "") }
            if self.json {
                print(Self.jsonText(rows))
            } else if rows.isEmpty {
                FileHandle.standardError.write(Data("ppnodes: no node answered within \(self.timeout) s (looked by \(paths.joined(separator: " and "))); is a ppnode running on this network, and is PP_BROADCAST right?\n".utf8))
            } else {
                print(Self.table(rows))
            }
            if !self.watch { throw ExitCode(rows.isEmpty ? 1 : 0) }
        } while true
    }

    // MARK: Survey

    /// One node as listed.
    struct Row {
        var address: String
        var beacon: NodeBeacon
        var via: [String]
        var inCluster: Bool
        var accepted: Bool?
        var stats: [String: JSONValue]
    }

    static func survey(target: BroadcastTarget, port: Int, window: Double, secret: ClusterSecret?, browse: DNSSDCollector?) async -> [Row] {
        let beacons = await Self.collectBeacons(target: target, port: port, window: window)
        let services = browse?.finish() ?? [:]
        var rows: [Row] = []
        for key in Set(beacons.keys).union(services.keys) {
            let beacon = beacons[key] ?? services[key]!
            let via = (services[key] != nil ? ["DNS-SD"] : []) + (beacons[key] != nil ? ["broadcast"] : [])
            rows.append(Row(address: key, beacon: beacon, via: via, inCluster: beacon.keyid == secret?.keyID, accepted: nil, stats: [:]))
        }
        let ours = rows.filter(\.inCluster).compactMap { try? NodeAddress(parsing: $0.address) }
        if !ours.isEmpty, let secret {
            var logger = Logger(label: "ppnodes")
            logger.logLevel = .critical
            let server = JobServer(configuration: .init(workers: 0, nodes: ours, secret: secret, discover: false, logger: logger))
            // Wait (bounded) for the handshakes, then ask for counters.
            for _ in 0..<100 where await server.activeExecutors().count < ours.count {
                try? await Task.sleep(for: .milliseconds(10))
            }
            let stats = await server.nodeStatistics()
            await server.shutdown()
            for i in rows.indices where rows[i].inCluster {
                if case .object(let o) = stats[rows[i].address] {
                    rows[i].stats = o
                    rows[i].accepted = true
                } else {
                    rows[i].accepted = false
                }
            }
        }
        return rows.sorted { ($0.beacon.name, $0.address) < ($1.beacon.name, $1.address) }
    }

    /// Probes once, then gathers beacons (answers and periodic ones) for `window` seconds.
    ///
    /// Two discovery sockets: one on the shared discovery port (periodic beacons) and
    /// one on a free port, which sends the probe and hears the answers. A socket that
    /// cannot be opened is left out without a word, as is the probe when broadcast is off.
    static func collectBeacons(target: BroadcastTarget, port: Int, window: Double) async -> [String: NodeBeacon] {
        let found = Found()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let receive: @Sendable (DiscoverySocket, DiscoverySocket.Datagram) -> Void = { _, datagram in
            guard let beacon = NodeBeacon(datagram: datagram.bytes), let host = datagram.source.ipAddress else { return }
            found.byAddress.withLock { $0[NodeAddress(host: host, port: beacon.port).description] = beacon }
        }
        let listener = try? await DiscoverySocket.open(port: port, on: loop, receive: receive).get()
        let prober = try? await DiscoverySocket.open(port: 0, on: loop, receive: receive).get()
        if case .address(let host) = target, let prober, let destination = try? SocketAddress(ipAddress: host, port: port) {
            _ = try? await prober.send(NodeBeacon.probe, to: destination).get()
        }
        try? await Task.sleep(for: .milliseconds(Int64(window * 1000)))
        for socket in [listener, prober].compactMap({ $0 }) { _ = try? await socket.close().get() }
        return found.byAddress.withLock { $0 }
    }

    /// Beacons gathered by address, written on the sockets' event loop (and by the
    /// DNS-SD browser's callbacks).
    final class Found: Sendable {
        let byAddress = Mutex<[String: NodeBeacon]>([:])
    }

    // MARK: Output

    static func value(_ stats: [String: JSONValue], _ key: String) -> String {
        switch stats[key] {
        case .int(let i): return String(i)
        case .double(let d): return String(format: "%.2f", d)
        case .string(let s): return s
        default: return "-"
        }
    }

    static func table(_ rows: [Row]) -> String {
        let header = ["NAME", "ADDRESS", "CORES", "WORKERS", "BUSY", "DONE", "LOAD", "VERSION", "PROTO", "PYTHON", "PP PORT", "ARCH/OS", "RTT", "FOUND BY", "CLUSTER"]
        var lines = [header]
        for r in rows {
            let cluster = !r.inCluster ? "other (key id \(PeerText.cut(r.beacon.keyid, limit: 16)))" : (r.accepted == true ? "mine, secret accepted" : "mine, secret refused")
            let rtt = r.stats["rtt_us"].map { if case .int(let us) = $0 { String(format: "%.1f ms", Double(us) / 1000) } else { "-" } } ?? "-"
            // Beacon fields come from the network: escaped and cut before they reach a terminal.
            lines.append([
                PeerText.cut(r.beacon.name, limit: 40), r.address, String(r.beacon.cores), String(r.beacon.workers), Self.value(r.stats, "busy_workers"),
                Self.value(r.stats, "jobs_done"), Self.value(r.stats, "load_average"), PeerText.cut(r.beacon.version, limit: 16), String(r.beacon.protocol),
                PeerText.cut(r.python, limit: 16), r.beacon.pp.map(String.init) ?? "-", PeerText.cut("\(r.beacon.arch ?? "?")/\(r.beacon.os ?? "?")", limit: 40), rtt, r.via.joined(separator: "+"), cluster,
            ])
        }
        let widths = header.indices.map { c in lines.map { $0[c].count }.max() ?? 0 }
        return lines.map { row in
            var line = row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(separator: "  ")
            while line.hasSuffix(" ") { line.removeLast() }
            return line
        }.joined(separator: "\n")
    }

    static func jsonText(_ rows: [Row]) -> String {
        let values: [JSONValue] = rows.map { r in
            var o: [String: JSONValue] = [
                "name": .string(r.beacon.name), "address": .string(r.address), "id": .string(r.beacon.id),
                "cores": .int(r.beacon.cores), "workers": .int(r.beacon.workers), "version": .string(r.beacon.version),
                "protocol": .int(r.beacon.protocol), "keyid": .string(r.beacon.keyid), "in_cluster": .bool(r.inCluster),
                "arch": r.beacon.arch.map { .string($0) } ?? .null, "os": r.beacon.os.map { .string($0) } ?? .null,
                "accepts_secret": r.accepted.map { .bool($0) } ?? .null,
                "python": r.python == "-" ? .null : .string(r.python),
                "found_by": .array(r.via.map { .string($0) }),
                "pp_port": r.beacon.pp.map { .int($0) } ?? .null,
            ]
            for key in ["busy_workers", "jobs_done", "load_average", "rtt_us", "queued"] {
                o[key] = r.stats[key] ?? .null
            }
            return .object(o)
        }
        return JSONValue.array(values).description
    }
}

extension PPNodes.Row {
    /// The Python version from the node's counters, else from its announcement.
    var python: String {
        if case .string(let v) = self.stats["python"], !v.isEmpty { return v }
        return self.beacon.python ?? "-"
    }
}

/// Gathers `_ppnode._tcp` services resolved by DNS-SD while the survey runs.
final class DNSSDCollector: Sendable {
    private let found = PPNodes.Found()
    private let browser = Mutex<DNSSDBrowser?>(nil)
    /// Why DNS-SD is off, when it is.
    let error: DNSSDError?

    init() {
        do {
            let found = self.found
            let browser = try DNSSDBrowser(type: NodeBeacon.serviceType) { [found] event in
                guard case .found(let service) = event,
                    let beacon = NodeBeacon(txt: service.txt, port: service.port, serviceName: service.name)
                else { return }
                found.byAddress.withLock { $0[NodeAddress(host: service.address, port: service.port).description] = beacon }
            }
            self.browser.withLock { $0 = browser }
            self.error = nil
        } catch {
            self.error = error
        }
    }

    /// Stops browsing and returns what was found, by address.
    func finish() -> [String: NodeBeacon] {
        self.browser.withLock { $0.take() }?.cancel()
        return self.found.byAddress.withLock { $0 }
    }
}
