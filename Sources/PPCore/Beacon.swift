import Foundation

/// What a node announces in its UDP broadcast beacons, and how a client asks for them.
///
/// A beacon is the byte `S` (so Parallel Python's own autodiscovery recognises it),
/// the magic `PPNB`, a format version byte (1), then a JSON object:
/// `{"id","name","port","keyid","protocol","cores","workers","version"}`.
/// A probe is `PPNQ` and a version byte; a node answers a probe at once with a beacon
/// sent back to the probe's source address. Both fit one datagram (at most 1,400 bytes).
public struct NodeBeacon: Sendable, Hashable, Codable {
    /// The node's random id (new each start).
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

    /// Creates a beacon; `arch` and `os` are this machine's.
    public init(id: String, name: String, port: Int, keyid: String, protocol: Int, cores: Int, workers: Int, version: String) {
        self.id = id
        self.name = name
        self.port = port
        self.keyid = keyid
        self.protocol = `protocol`
        self.cores = cores
        self.workers = workers
        self.version = version
        var u = utsname()
        uname(&u)
        func text<T>(_ field: T) -> String {
            withUnsafeBytes(of: field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        self.arch = text(u.machine)
        self.os = text(u.sysname) + " " + text(u.release)
    }

    /// The default UDP port of beacons and probes.
    public static let defaultPort = 7340
    /// The largest datagram either kind takes.
    public static let maxSize = 1_400
    static let beaconMagic = Array("SPPNB".utf8) + [1]
    /// A probe datagram.
    public static let probe: [UInt8] = Array("PPNQ".utf8) + [1]

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
        guard datagram.count <= Self.maxSize, datagram.starts(with: Self.beaconMagic),
            let beacon = try? JSONDecoder().decode(NodeBeacon.self, from: Data(datagram.dropFirst(Self.beaconMagic.count))),
            (1...65535).contains(beacon.port)
        else { return nil }
        self = beacon
    }

    /// Whether a datagram is a probe.
    public static func isProbe(_ datagram: [UInt8]) -> Bool {
        datagram.count >= 5 && datagram.starts(with: Self.probe.prefix(4))
    }
}

/// Where beacons and probes go, from `PP_BROADCAST`.
public enum BroadcastTarget: Sendable, Equatable {
    /// Broadcast is off (`PP_BROADCAST=off`).
    case off
    /// Send to this IPv4 address (a broadcast address such as 10.88.0.255 or 127.255.255.255).
    case address(String)

    /// Reads `PP_BROADCAST`: `off`, an IPv4 address, or unset for 255.255.255.255
    /// (the LAN).
    ///
    /// - Throws: `BroadcastError` when the value is neither.
    public static func fromEnvironment(_ environment: [String: String]? = nil) throws -> BroadcastTarget {
        let environment = environment ?? ProcessInfo.processInfo.environment
        guard let value = environment["PP_BROADCAST"]?.trimmingCharacters(in: .whitespaces), !value.isEmpty else {
            return .address("255.255.255.255")
        }
        if value.lowercased() == "off" { return .off }
        var addr = in_addr()
        guard inet_pton(AF_INET, value, &addr) == 1 else {
            throw BroadcastError(message: "PP_BROADCAST='\(value)' is neither 'off' nor an IPv4 address; use e.g. 192.168.1.255, 127.255.255.255 or off")
        }
        return .address(value)
    }
}

/// `PP_BROADCAST` does not parse.
public struct BroadcastError: Error, Sendable, CustomStringConvertible {
    /// What is wrong and the fix.
    public var message: String

    public var description: String { self.message }
}
