import Foundation

/// What a node announces in its UDP broadcast beacons, and how a client asks for them.
///
/// A beacon is the byte `S` (so Parallel Python's own autodiscovery recognises it),
/// the magic `PPNB`, a format version byte (1), then a JSON object:
/// `{"id","name","port","keyid","protocol","cores","workers","version"}` and, when
/// known, `"arch"`, `"os"`, `"python"` and `"pp"` (the pp-compatible port).
/// A probe is `PPNQ`, a version byte (2) and zero bytes up to 1,400 in all; a node
/// answers a probe at once with a beacon sent back to the probe's source address, and
/// only when the beacon is no larger than the probe, so a forged source address
/// cannot turn the node into an amplifier. Both fit one datagram (at most 1,400 bytes).
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
    /// Its workers' Python version (`3.11.2`), once a worker has started.
    public var python: String?
    /// The TCP port of its Parallel Python (ppft) compatible listener, when that is on.
    public var pp: Int?

    /// Creates a beacon; `arch` and `os` are this machine's.
    public init(id: String, name: String, port: Int, keyid: String, protocol: Int, cores: Int, workers: Int, version: String, python: String? = nil, pp: Int? = nil) {
        self.python = python
        self.pp = pp
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
        guard datagram.count <= Self.maxSize, datagram.starts(with: Self.beaconMagic),
            let beacon = try? JSONDecoder().decode(NodeBeacon.self, from: Data(datagram.dropFirst(Self.beaconMagic.count))),
            (1...65535).contains(beacon.port)
        else { return nil }
        self = beacon
    }

    /// Reads `PP_DISCOVERY_PORT`; unset or empty means `defaultPort`.
    ///
    /// - Throws: `BroadcastError` naming the value and the fix when it is not a port.
    public static func discoveryPort(fromEnvironment environment: [String: String]? = nil) throws -> Int {
        let environment = environment ?? ProcessInfo.processInfo.environment
        guard let text = environment["PP_DISCOVERY_PORT"]?.trimmingCharacters(in: .whitespaces), !text.isEmpty else {
            return Self.defaultPort
        }
        guard let port = Int(text), (1...65535).contains(port) else {
            throw BroadcastError(message: "PP_DISCOVERY_PORT='\(text)' is not a UDP port (1-65535); unset it for the default \(Self.defaultPort)")
        }
        return port
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
        pairs["pp"] = self.pp.map(String.init)
        return pairs
    }

    /// Reads what a node's TXT record says; `nil` when a required key is missing or bad
    /// (a service of another program under our type).
    public init?(txt: [String: String], port: Int, serviceName: String) {
        guard let keyid = txt["keyid"], let proto = txt["protocol"].flatMap(Int.init), (1...65535).contains(port) else { return nil }
        self.id = txt["id"] ?? ""
        self.name = txt["name"] ?? serviceName
        self.port = port
        self.keyid = keyid
        self.protocol = proto
        self.cores = txt["cores"].flatMap(Int.init) ?? 0
        self.workers = txt["workers"].flatMap(Int.init) ?? 0
        self.version = txt["version"] ?? "?"
        self.arch = txt["arch"]
        self.os = txt["os"]
        self.python = txt["python"]
        self.pp = txt["pp"].flatMap(Int.init).flatMap { (1...65535).contains($0) ? $0 : nil }
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

    /// Reads `PP_BROADCAST` (see `parse`); unset means 255.255.255.255 (the LAN).
    ///
    /// - Throws: `BroadcastError` when the value does not parse.
    public static func fromEnvironment(_ environment: [String: String]? = nil) throws -> BroadcastTarget {
        let environment = environment ?? ProcessInfo.processInfo.environment
        guard let value = environment["PP_BROADCAST"]?.trimmingCharacters(in: .whitespaces), !value.isEmpty else {
            return .address("255.255.255.255")
        }
        return try Self.parse(value, origin: "PP_BROADCAST")
    }

    /// Parses `off`, an IPv4 address, or the name of a network interface (its
    /// broadcast address is used, so beacons stay on that interface's subnet).
    ///
    /// - Parameter origin: where the value came from, for the error message.
    /// - Throws: `BroadcastError` naming the value and the fix.
    public static func parse(_ value: String, origin: String) throws -> BroadcastTarget {
        if value.lowercased() == "off" { return .off }
        var addr = in_addr()
        if inet_pton(AF_INET, value, &addr) == 1 { return .address(value) }
        if let broadcast = Self.broadcastAddress(ofInterface: value) { return .address(broadcast) }
        throw BroadcastError(
            message: "\(origin)='\(value)' is neither 'off', an IPv4 address nor an interface with an IPv4 broadcast address; use e.g. 192.168.1.255, eth0, 127.255.255.255 or off"
        )
    }

    /// The name of the interface that holds the IPv4 address `address`, if any.
    public static func interfaceName(owning address: String) -> String? {
        var wanted = in_addr()
        guard inet_pton(AF_INET, address, &wanted) == 1 else { return nil }
        return Self.firstIPv4Interface { entry, sin in
            sin.sin_addr.s_addr == wanted.s_addr ? String(cString: entry.ifa_name) : nil
        }
    }

    /// The IPv4 broadcast address of a network interface, if it has one.
    static func broadcastAddress(ofInterface name: String) -> String? {
        Self.firstIPv4Interface { entry, _ in
            guard String(cString: entry.ifa_name) == name, Int32(entry.ifa_flags) & Int32(IFF_BROADCAST) != 0,
                let broadcast = entry.ifa_ifu.ifu_broadaddr
            else { return nil }
            return broadcast.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                var a = sin.pointee.sin_addr
                var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                inet_ntop(AF_INET, &a, &text, socklen_t(INET_ADDRSTRLEN))
                return String(cString: text)
            }
        }
    }

    /// The first non-nil `match` over the IPv4 addresses of this machine's interfaces.
    private static func firstIPv4Interface(_ match: (ifaddrs, sockaddr_in) -> String?) -> String? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return nil }
        defer { freeifaddrs(list) }
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let a = entry.pointee.ifa_addr, a.pointee.sa_family == sa_family_t(AF_INET) else { continue }
            let sin = a.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
            if let found = match(entry.pointee, sin) { return found }
        }
        return nil
    }
}

/// `PP_BROADCAST` does not parse.
public struct BroadcastError: Error, Sendable, CustomStringConvertible {
    /// What is wrong and the fix.
    public var message: String

    public var description: String { self.message }
}
