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

            --why adds, for every node found or named with --node, whether a client \
            would use it and, if not, why and what to do: another cluster, another \
            protocol version, 0 workers, unreachable (and from which interface), TLS \
            refused (another key), left (its goodbye beacon), restarted (a new id at its \
            address), silent (its beacons stopped). --json always carries it as \
            "status" and "reason".

            The table fits the terminal (or $COLUMNS): the less useful columns are \
            left out first; --wide shows them all. Shell completions: ppnodes \
            --generate-completion-script bash (or zsh, fish).

            Exit status: 0 when at least one node was found, 1 when none, 2 on a bad \
            secret, PP_BROADCAST or PP_DISCOVERY_PORT, 64 on a bad command line.

            Examples:
              ppnodes
              ppnodes --json | python3 -m json.tool
              ppnodes --watch --timeout 1
              ppnodes --wide                         # every column, however wide
              ppnodes --watch --json | jq -c '.[] | {name, busy_workers}'
              ppnodes --why --node 10.0.0.5:7340
            """,
        version: ParallelPythonVersion.text("ppnodes")
    )

    @Option(help: ArgumentHelp("Seconds to wait for nodes (default 2).", valueName: "SECONDS"))
    var timeout: Double = 2

    @Flag(help: "Print JSON (an array of nodes) for scripts.")
    var json = false

    @Flag(help: "Refresh the list every --timeout seconds until interrupted; into a pipe, each survey is written as it ends (with --json, one JSON document per line).")
    var watch = false

    @Flag(help: "Show every column, however wide (default: the columns that fit the terminal, $COLUMNS, else all).")
    var wide = false

    @Flag(help: "Say for each node whether a client would use it, and if not why.")
    var why = false

    @Option(name: .customLong("node"), help: ArgumentHelp("A node expected at HOST[:PORT] (repeatable): listed with why it did not answer.", valueName: "HOST[:PORT]"))
    var nodes: [String] = []

    @OptionGroup var secretOptions: SecretOptions

    func validate() throws {
        guard self.timeout > 0, self.timeout <= 60, self.timeout.isFinite else {
            throw ValidationError("--timeout must be more than 0 and at most 60 seconds (got \(self.timeout))")
        }
        for node in self.nodes { _ = try self.address(node) }
    }

    func address(_ text: String) throws -> NodeAddress {
        do { return try NodeAddress(parsing: text) } catch { throw ValidationError("--node: \(error)") }
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
        // What is known of each node, kept across --watch rounds (a node that left or
        // restarted stays listed so).
        var known: [String: NodeSighting] = [:]
        for node in try self.nodes.map(self.address) {
            known[node.description] = NodeSighting(address: node.description, via: ["given"], interface: NetworkInterfaces.name(reaching: node.host))
        }
        repeat {
            let found = Found(known)
            let browse = useDNSSD ? Self.browse(into: found) : nil
            if case .failure(let error) = browse, !dnssdReported {
                dnssdReported = true
                FileHandle.standardError.write(Data("ppnodes: DNS-SD off: \(error); listing nodes found by broadcast only\n".utf8))
            } else if case .success = browse, !paths.contains("DNS-SD") {
                paths.append("DNS-SD")
            }
            let rows = await Self.survey(target: target, port: port, window: self.timeout, secret: secret, found: found, browse: try? browse?.get())
            known = Dictionary(rows.map { ($0.sighting.address, $0.sighting) }) { a, _ in a }
            let answered = rows.contains { $0.sighting.beacon != nil || $0.sighting.contact == .connected }
            if self.watch, !self.json, isatty(STDOUT_FILENO) == 1 { print("\u{1B}[H\u{1B}[2J", terminator: "") }
            if self.json {
                print(Self.jsonText(rows))
            } else if !answered {
                FileHandle.standardError.write(Data("ppnodes: no node answered within \(self.timeout) s (looked by \(paths.joined(separator: " and "))); is a ppnode running on this network, and is PP_BROADCAST right?\n".utf8))
            }
            if !self.json, !rows.isEmpty, answered || self.why { print(Self.table(rows, why: self.why, width: self.wide ? nil : Self.terminalWidth())) }
            // Into a pipe stdout is block-buffered: each survey goes out as it ends.
            fflush(nil)
            if !self.watch { throw ExitCode(answered ? 0 : 1) }
        } while true
    }

    // MARK: Survey

    /// One node as listed.
    struct Row {
        var verdict: NodeVerdict
        var stats: [String: JSONValue]
        var sighting: NodeSighting { self.verdict.sighting }
        var beacon: NodeBeacon? { self.sighting.beacon }
        /// Whether its key id is ours.
        var inCluster: Bool
        /// Whether it accepted our secret: `nil` when not asked.
        var accepted: Bool?
    }

    /// Gathers beacons into `found` for `window` seconds (DNS-SD answers arrive there
    /// too), then asks the nodes of our cluster that speak our protocol, and those
    /// named with --node, for their counters; judges every node.
    static func survey(target: BroadcastTarget, port: Int, window: Double, secret: ClusterSecret?, found: Found, browse: DNSSDBrowser?) async -> [Row] {
        await Self.collectBeacons(target: target, port: port, window: window, into: found)
        browse?.cancel()
        var sightings = found.sightings.withLock { $0 }
        let ask = sightings.values.filter { s in
            guard let b = s.beacon else { return s.via.contains("given") }
            return s.leftAt == nil && b.keyid == secret?.keyID && NodeVerdict.protocols.contains(b.protocol)
        }.compactMap { try? NodeAddress(parsing: $0.address) }
        var stats: [String: JSONValue] = [:]
        if !ask.isEmpty, let secret {
            var logger = Logger(label: "ppnodes")
            logger.logLevel = .critical
            let server = JobServer(configuration: .init(workers: 0, nodes: ask, secret: secret, discover: false, logger: logger))
            // Wait (bounded: a connection times out in 3 s) until every attempt has an
            // outcome, then ask for counters.
            var contacts: [String: NodeSighting.Contact] = [:]
            for _ in 0..<400 {
                contacts = Dictionary(await server.nodes().compactMap { v in v.sighting.contact.map { (v.sighting.address, $0) } }) { a, _ in a }
                if contacts.count >= ask.count { break }
                try? await Task.sleep(for: .milliseconds(10))
            }
            stats = await server.nodeStatistics()
            await server.shutdown()
            for (address, contact) in contacts { sightings[address]?.contact = contact }
        }
        let asked = Set(ask.map(\.description))
        return NodeVerdict.judge(Array(sightings.values), ourKeyID: secret?.keyID, now: Date().timeIntervalSince1970).map { v in
            let address = v.sighting.address
            var row = Row(verdict: v, stats: [:], inCluster: v.sighting.beacon?.keyid == secret?.keyID, accepted: nil)
            if case .object(let o) = stats[address] {
                row.stats = o
                row.accepted = true
            } else if asked.contains(address), case .keyRejected = v.sighting.contact {
                // Only a failed TLS handshake says the secret was refused (no counters
                // may also mean the node was slow to answer).
                row.accepted = false
            }
            return row
        }.sorted { ($0.beacon?.name ?? "", $0.sighting.address) < ($1.beacon?.name ?? "", $1.sighting.address) }
    }

    /// Probes once, then gathers beacons (answers and periodic ones) for `window` seconds.
    ///
    /// Two discovery sockets: one on the shared discovery port (periodic beacons) and
    /// one on a free port, which sends the probe and hears the answers. A socket that
    /// cannot be opened is left out without a word, as is the probe when broadcast is off.
    static func collectBeacons(target: BroadcastTarget, port: Int, window: Double, into found: Found) async {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let receive: @Sendable (DiscoverySocket, DiscoverySocket.Datagram) -> Void = { _, datagram in
            guard let beacon = NodeBeacon(datagram: datagram.bytes), let host = datagram.source.ipAddress else { return }
            found.heard(beacon, host: host, via: "broadcast")
        }
        let listener = try? await DiscoverySocket.open(port: port, on: loop, receive: receive).get()
        let prober = try? await DiscoverySocket.open(port: 0, on: loop, receive: receive).get()
        if case .address(let host) = target, let prober, let destination = try? SocketAddress(ipAddress: host, port: port) {
            _ = try? await prober.send(NodeBeacon.probe, to: destination).get()
        }
        try? await Task.sleep(for: .milliseconds(Int64(window * 1000)))
        for socket in [listener, prober].compactMap({ $0 }) { _ = try? await socket.close().get() }
    }

    /// Browses `_ppnode._tcp` while the survey runs; what is resolved goes into `found`.
    static func browse(into found: Found) -> Result<DNSSDBrowser, DNSSDError> {
        Result { () throws(DNSSDError) in
            try DNSSDBrowser(type: NodeBeacon.serviceType) { event in
                guard case .found(let service) = event,
                    let beacon = NodeBeacon(txt: service.txt, port: service.port, serviceName: service.name)
                else { return }
                found.heard(beacon, host: service.address, via: "DNS-SD")
            }
        }
    }

    /// What is known of each node by address, written on the sockets' event loop and
    /// by the DNS-SD browser's callbacks. At most 1,024 nodes (forged beacons cannot
    /// grow it without end).
    final class Found: Sendable {
        let sightings: Mutex<[String: NodeSighting]>

        init(_ known: [String: NodeSighting]) {
            self.sightings = Mutex(known)
        }

        func heard(_ beacon: NodeBeacon, host: String, via: String) {
            let key = NodeAddress(host: host, port: beacon.port).description
            let now = Date().timeIntervalSince1970
            self.sightings.withLock { all in
                guard all.count < 1024 || all[key] != nil else { return }
                all[key, default: NodeSighting(address: key, interface: NetworkInterfaces.name(reaching: host))].heard(beacon, via: via, at: now)
            }
        }
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

    /// The width to fit: `$COLUMNS`, else the terminal's on stdout; `nil` (every
    /// column) when neither is known.
    static func terminalWidth() -> Int? {
        if let c = ProcessInfo.processInfo.environment["COLUMNS"].flatMap({ Int($0) }), c > 0 { return c }
        var size = winsize()
        return ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0 && size.ws_col > 0 ? Int(size.ws_col) : nil
    }

    /// The columns left out first when the table is wider than the terminal, in order.
    static let dropOrder = ["FOUND BY", "PP PORT", "ARCH/OS", "PROTO", "VERSION", "RTT", "PYTHON", "CORES", "DONE", "LOAD"]

    /// The table of `rows`; with `width`, columns of `dropOrder` are left out until it
    /// fits (NAME, ADDRESS, WORKERS, BUSY, CLUSTER and WHY stay).
    static func table(_ rows: [Row], why: Bool, width: Int? = nil) -> String {
        let header = ["NAME", "ADDRESS", "CORES", "WORKERS", "BUSY", "DONE", "LOAD", "VERSION", "PROTO", "PYTHON", "PP PORT", "ARCH/OS", "RTT", "FOUND BY", "CLUSTER"] + (why ? ["WHY"] : [])
        var lines = [header]
        for r in rows {
            let cluster =
                r.beacon == nil ? "?" : !r.inCluster ? "other (key id \(PeerText.cut(r.beacon!.keyid, limit: 16)))" : (r.accepted == false ? "mine, secret refused" : r.accepted == true ? "mine, secret accepted" : "mine")
            let rtt = r.stats["rtt_us"].map { if case .int(let us) = $0 { String(format: "%.1f ms", Double(us) / 1000) } else { "-" } } ?? "-"
            let b = r.beacon
            let number: (Int?) -> String = { $0.map(String.init) ?? "-" }
            let system = b.map { PeerText.cut("\($0.arch ?? "?")/\($0.os ?? "?")", limit: 40) } ?? "-"
            // Beacon fields come from the network: escaped and cut before they reach a terminal.
            var line: [String] = [PeerText.cut(b?.name ?? "-", limit: 40), r.sighting.address, number(b?.cores), number(b?.workers)]
            line += [Self.value(r.stats, "busy_workers"), Self.value(r.stats, "jobs_done"), Self.value(r.stats, "load_average")]
            line += [PeerText.cut(b?.version ?? "-", limit: 16), number(b?.protocol), PeerText.cut(r.python, limit: 16), number(b?.pp), system, rtt]
            line += [r.sighting.via.sorted().joined(separator: "+"), cluster]
            if why { line.append("\(r.verdict.status.rawValue): \(r.verdict.reason)") }
            lines.append(line)
        }
        let widths = header.indices.map { c in lines.map { $0[c].count }.max() ?? 0 }
        var shown = Array(header.indices)
        for name in Self.dropOrder {
            guard let width, shown.map({ widths[$0] + 2 }).reduce(-2, +) > width else { break }
            shown.removeAll { header[$0] == name }
        }
        return lines.map { row in
            var line = shown.map { row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
            while line.hasSuffix(" ") { line.removeLast() }
            return line
        }.joined(separator: "\n")
    }

    static func jsonText(_ rows: [Row]) -> String {
        let values: [JSONValue] = rows.map { r in
            let b = r.beacon
            func text(_ v: String?) -> JSONValue { v.map { .string($0) } ?? .null }
            func int(_ v: Int?) -> JSONValue { v.map { .int($0) } ?? .null }
            var o: [String: JSONValue] = [
                "name": text(b?.name), "address": .string(r.sighting.address), "id": text(b?.id),
                "cores": int(b?.cores), "workers": int(b?.workers), "version": text(b?.version),
                "protocol": int(b?.protocol), "keyid": text(b?.keyid), "in_cluster": .bool(r.inCluster),
                "arch": text(b?.arch), "os": text(b?.os),
                "accepts_secret": r.accepted.map { .bool($0) } ?? .null,
                "python": r.python == "-" ? .null : .string(r.python),
                "implementation": text(r.implementation),
                "found_by": .array(r.sighting.via.sorted().map { .string($0) }),
                "pp_port": int(b?.pp),
                "interface": text(r.sighting.interface),
                "status": .string(r.verdict.status.rawValue), "reason": .string(r.verdict.reason),
                "usable": .bool(r.verdict.usable),
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
        return self.beacon?.python ?? "-"
    }

    /// The Python implementation (`cpython`) from the node's counters, else from its
    /// announcement.
    var implementation: String? {
        if case .string(let v) = self.stats["python_implementation"], !v.isEmpty { return v }
        return self.beacon?.impl
    }
}
