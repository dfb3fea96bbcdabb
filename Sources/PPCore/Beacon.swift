internal import Foundation  // JSONEncoder, JSONDecoder, Data: the beacon's JSON

/// What a node announces in its UDP broadcast beacons, and how a client asks for them.
///
/// A beacon is the byte `S` (so Parallel Python's own autodiscovery recognises it),
/// the magic `PPNB`, a format version byte (1), then a JSON object:
/// `{"id","name","port","keyid","protocol","cores","workers","version"}` and, when
/// known, `"arch"`, `"os"`, `"python"`, `"impl"` and `"pp"` (the pp-compatible port); a node that
/// shuts down sends a few copies with `"leaving": true` (a goodbye beacon).
/// A probe is `PPNQ`, a version byte (2) and zero bytes up to 1,400 in all; a node
/// answers a probe at once with a beacon sent back to the probe's source address, and
/// only when the beacon is no larger than the probe, so a forged source address
/// cannot turn the node into an amplifier. Both fit one datagram (at most 1,400 bytes).
public struct NodeBeacon: Sendable, Hashable, Codable {
    /// The node's random id, new each start: a new id at a known address is a new
    /// instance (a restarted node).
    public var id: String
    /// Its human name.
    public var name: String
    /// Its native-protocol TCP port.
    public var port: Int
    /// The key id of its secret: a client with another key id is in another cluster.
    public var keyid: String
    /// Its native protocol version.
    public var `protocol`: Int
    /// Cores of its machine.
    public var cores: Int
    /// Its worker processes.
    public var workers: Int
    /// Its software version.
    public var version: String
    /// Its machine architecture (`x86_64`, `aarch64`).
    public var arch: String?
    /// Its operating system (`Linux 6.1.0`).
    public var os: String?
    /// Its workers' Python version (`3.11.2`), once a worker has started.
    public var python: String?
    /// Its workers' Python implementation (`cpython`, `pypy`: `sys.implementation.name`),
    /// once a worker has started.
    public var impl: String?
    /// The TCP port of its Parallel Python (ppft) compatible listener, when that is on.
    public var pp: Int?
    /// `true` in the goodbye beacons of a node that shuts down; absent otherwise.
    public var leaving: Bool?

    /// Creates a beacon.
    ///
    /// - Parameters:
    ///   - arch: the machine architecture, `HostInfo.architecture` (PPRuntime) for this one.
    ///   - os: the operating system, `HostInfo.operatingSystem` (PPRuntime) for this one.
    ///   - python: the workers' Python version, once known.
    ///   - impl: the workers' Python implementation, once known.
    ///   - pp: the TCP port of the pp-compatible listener, when it is on.
    public init(
        id: String,
        name: String,
        port: Int,
        keyid: String,
        protocol: Int,
        cores: Int,
        workers: Int,
        version: String,
        arch: String? = nil,
        os: String? = nil,
        python: String? = nil,
        impl: String? = nil,
        pp: Int? = nil
    ) {
        self.id = id
        self.name = name
        self.port = port
        self.keyid = keyid
        self.protocol = `protocol`
        self.cores = cores
        self.workers = workers
        self.version = version
        self.arch = arch
        self.os = os
        self.python = python
        self.impl = impl
        self.pp = pp
    }

    /// The default UDP port of beacons and probes.
    public static let defaultPort = 7340
    /// The largest datagram either kind takes.
    public static let maxSize = 1_400
    static let beaconMagic = Array("SPPNB".utf8) + [1]
    /// A probe datagram: padded to `maxSize`, so that the answer is never larger.
    public static let probe: [UInt8] = Array("PPNQ".utf8) + [2] + [UInt8](repeating: 0, count: maxSize - 5)

    /// The datagram of this beacon.
    public var datagram: [UInt8] { Self.beaconMagic + self.json }

    /// The beacon's JSON object alone (also the node info of a CHALLENGE).
    public var json: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(self)).map(Array.init) ?? []
    }

    /// Parses a beacon datagram; `nil` for anything else (a probe, ppft's own beacons,
    /// garbage, an oversized datagram).
    public init?(datagram: [UInt8]) {
        guard datagram.count <= Self.maxSize, datagram.starts(with: Self.beaconMagic) else { return nil }
        self.init(json: Array(datagram.dropFirst(Self.beaconMagic.count)))
    }

    /// Parses the beacon's JSON object alone (a WELCOME's node info); `nil` for
    /// anything else.
    public init?(json: [UInt8]) {
        guard let beacon = try? JSONDecoder().decode(NodeBeacon.self, from: Data(json)), (1...65535).contains(beacon.port) else { return nil }
        self = beacon
    }

    /// The DNS-SD service type nodes register.
    public static let serviceType = "_ppnode._tcp"

    /// The node's DNS-SD TXT record: the beacon's fields but the port (which the SRV
    /// record carries).
    public var txt: [String: String] {
        var pairs = [
            "id": self.id, "name": self.name, "keyid": self.keyid, "protocol": String(self.protocol),
            "cores": String(self.cores), "workers": String(self.workers), "version": self.version,
        ]
        pairs["arch"] = self.arch
        pairs["os"] = self.os
        pairs["python"] = self.python
        pairs["impl"] = self.impl
        pairs["pp"] = self.pp.map(String.init)
        return pairs
    }

    /// Reads what a node's TXT record says; `nil` when a required key is missing or bad
    /// (a service of another program under our type).
    public init?(txt: [String: String], port: Int, serviceName: String) {
        guard let keyid = txt["keyid"], let proto = txt["protocol"].flatMap(Int.init), (1...65535).contains(port) else { return nil }
        self.init(
            id: txt["id"] ?? "", name: txt["name"] ?? serviceName, port: port, keyid: keyid, protocol: proto,
            cores: txt["cores"].flatMap(Int.init) ?? 0, workers: txt["workers"].flatMap(Int.init) ?? 0, version: txt["version"] ?? "?",
            arch: txt["arch"], os: txt["os"], python: txt["python"], impl: txt["impl"], pp: txt["pp"].flatMap(Int.init).flatMap { (1...65535).contains($0) ? $0 : nil }
        )
    }

    /// Whether a datagram is a probe.
    public static func isProbe(_ datagram: [UInt8]) -> Bool {
        datagram.count >= 5 && datagram.starts(with: Self.probe.prefix(4))
    }
}

/// Where beacons and probes go. PPRuntime reads it from `PP_BROADCAST` or a flag
/// (`BroadcastTarget.fromEnvironment`, `BroadcastTarget.parse(_:origin:)`).
public enum BroadcastTarget: Sendable, Equatable {
    /// Broadcast is off (`PP_BROADCAST=off`).
    case off
    /// Send to this IPv4 address (a broadcast address such as 10.88.0.255 or 127.255.255.255).
    case address(String)
}
