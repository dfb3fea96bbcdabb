import ArgumentParser
import Foundation
import Logging
import PPCommandLine
import PPCore
import PPNode
import PPRuntime

/// ppnode's settings after merging flag > environment > config file > default.
struct Settings {
    var host = "0.0.0.0"
    var port = NodeProtocol.defaultPort
    var workers: Int?
    var python: String?
    var secretFile: String?
    /// Where `secretFile` came from, for messages (`--secret-file`, `FILE:LINE (secret-file)`).
    var secretFileOrigin = "--secret-file"
    var name = ProcessInfo.processInfo.hostName
    var maxFrame = NodeProtocol.defaultMaxFrame
    var cacheBytes = 256 << 20
    var handshakeTimeout: Duration = .seconds(5)
    var heartbeatTimeout: Duration = .seconds(3)
    var drainTimeout: Duration = .seconds(10)
    var logLevel = Logger.Level.info
    var discoveryPort = NodeBeacon.defaultPort
    var beaconInterval: Duration = .seconds(2)
    var broadcast = BroadcastTarget.address("255.255.255.255")
    var dnssd = true
    var ppPort: Int?  // off unless asked for
    var ppVersion = PPWire.defaultVersion
    var ppAllowDefaultSecret = false

    /// The keys a config file may hold, each documented in config/ppnode.conf.
    static let keys: Set<String> = [
        "host", "port", "workers", "python", "secret-file", "name", "max-frame", "cache-bytes",
        "handshake-timeout", "heartbeat-timeout", "drain-timeout", "log-level", "discovery-port", "beacon-interval",
        "broadcast", "dnssd", "pp-port", "pp-version", "pp-allow-default-secret",
    ]

    init(command c: PPNodeCommand) throws {
        let env = ProcessInfo.processInfo.environment
        var file: [String: (value: String, line: Int)] = [:]
        var configPath = c.config ?? env["PP_CONFIG"]
        if configPath == nil, FileManager.default.fileExists(atPath: "/etc/ppnode/ppnode.conf") {
            configPath = "/etc/ppnode/ppnode.conf"
        }
        if let configPath { file = try Self.parse(configPath) }

        func pick(_ flag: String?, _ envName: String, _ key: String) -> (String, String)? {
            if let flag { return (flag, "--\(key)") }
            if let v = env[envName], !v.isEmpty { return (v, envName) }
            if let v = file[key] { return (v.value, "\(configPath!):\(v.line) (\(key))") }
            return nil
        }
        func int(_ flag: Int?, _ envName: String, _ key: String, min: Int, max: Int = Int.max) throws -> Int? {
            guard let (text, origin) = pick(flag.map(String.init), envName, key) else { return nil }
            guard let v = Int(text), v >= min, v <= max else {
                throw ValidationError("\(origin): '\(text)' is not a whole number from \(min) to \(max)")
            }
            return v
        }
        func seconds(_ flag: Double?, _ envName: String, _ key: String) throws -> Duration? {
            guard let (text, origin) = pick(flag.map { String($0) }, envName, key) else { return nil }
            guard let v = Double(text), v > 0, v.isFinite else {
                throw ValidationError("\(origin): '\(text)' is not a positive number of seconds")
            }
            return .milliseconds(Int64(v * 1000))
        }

        if let (v, _) = pick(c.host, "PP_HOST", "host") { self.host = v }
        if let v = try int(c.port, "PP_PORT", "port", min: 0, max: 65535) { self.port = v }
        if let (text, origin) = pick(c.workers.map(String.init), "PP_WORKERS", "workers") {
            // 0 is refused: such a node would advertise itself and hold its clients' jobs.
            guard let v = Int(text), (1...4096).contains(v) else {
                throw ValidationError("\(origin): '\(text)' is not a number of workers from 1 to 4096; a node needs at least one (leave it unset for one per core)")
            }
            self.workers = v
        }
        if let (v, _) = pick(c.python, "PP_PYTHON", "python") { self.python = v }
        if let v = c.secretOptions.secretFile {
            self.secretFile = v
        } else if let v = file["secret-file"] {
            self.secretFile = v.value
            self.secretFileOrigin = "\(configPath!):\(v.line) (secret-file)"
        }
        if let (v, _) = pick(c.name, "PP_NODE_NAME", "name") { self.name = v }
        if let (text, origin) = pick(c.maxFrame, "PP_MAX_FRAME", "max-frame") {
            guard let v = Self.byteCount(text), NodeConfiguration.maxFrameRange.contains(v) else {
                throw ValidationError("\(origin): '\(text)' is not a frame limit ppnode supports; \(NodeConfiguration.maxFrameAdvice)")
            }
            self.maxFrame = v
        }
        if let (text, origin) = pick(c.cacheBytes, "PP_CACHE_BYTES", "cache-bytes") {
            guard let v = Self.byteCount(text) else {
                throw ValidationError("\(origin): '\(text)' is not a number of bytes; give bytes or a KiB, MiB or GiB size, such as 256MiB")
            }
            self.cacheBytes = v
        }
        if let v = try seconds(c.handshakeTimeout, "PP_HANDSHAKE_TIMEOUT", "handshake-timeout") { self.handshakeTimeout = v }
        if let v = try seconds(c.heartbeatTimeout, "PP_HEARTBEAT_TIMEOUT", "heartbeat-timeout") { self.heartbeatTimeout = v }
        if let v = try seconds(c.drainTimeout, "PP_DRAIN_TIMEOUT", "drain-timeout") { self.drainTimeout = v }
        if let v = try int(c.discoveryPort, "PP_DISCOVERY_PORT", "discovery-port", min: 1, max: 65535) { self.discoveryPort = v }
        if let v = try seconds(c.beaconInterval, "PP_BEACON_INTERVAL", "beacon-interval") { self.beaconInterval = v }
        if let (text, origin) = pick(c.broadcast, "PP_BROADCAST", "broadcast") {
            do {
                self.broadcast = try BroadcastTarget.parse(text.trimmingCharacters(in: .whitespaces), origin: origin)
            } catch {
                throw ValidationError("\(error)")
            }
        }
        if let (text, origin) = pick(c.noDNSSD ? "off" : nil, "PP_DNSSD", "dnssd") {
            switch text.lowercased() {
            case "on", "yes", "true", "1": self.dnssd = true
            case "off", "no", "false", "0": self.dnssd = false
            default: throw ValidationError("\(origin): '\(text)' is not on or off")
            }
        }
        if c.noPP {
            if c.ppPort != nil { throw ValidationError("--pp-port and --no-pp contradict each other; give one") }
            self.ppPort = nil
        } else if let (text, origin) = pick(c.ppPort.map(String.init), "PP_PP_PORT", "pp-port") {
            if text.lowercased() == "off" {
                self.ppPort = nil
            } else {
                guard let v = Int(text), (0...65535).contains(v) else { throw ValidationError("\(origin): '\(text)' is not a port (0-65535) or off") }
                self.ppPort = v
            }
        }
        if let (v, origin) = pick(c.ppVersion, "PP_PP_VERSION", "pp-version") {
            // ppft compares it with its own version string (ASCII, such as 1.7.8).
            guard !v.isEmpty, v.count <= 64, v.unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 }) else {
                throw ValidationError("\(origin): '\(v)' is not a ppft version string; give the version your ppft clients run, such as 1.7.8")
            }
            self.ppVersion = v
        }
        if c.ppAllowDefaultSecret { self.ppAllowDefaultSecret = true }
        if let (text, origin) = pick(nil, "PP_PP_ALLOW_DEFAULT_SECRET", "pp-allow-default-secret") {
            switch text.lowercased() {
            case "yes", "on", "true", "1": self.ppAllowDefaultSecret = true
            case "no", "off", "false", "0": break
            default: throw ValidationError("\(origin): '\(text)' is not yes or no")
            }
        }
        if let (text, origin) = pick(c.logLevel, "PP_LOG_LEVEL", "log-level") {
            guard let level = Logger.Level(rawValue: text.lowercased()) else {
                throw ValidationError("\(origin): '\(text)' is not a log level; use trace, debug, info, notice, warning, error or critical")
            }
            self.logLevel = level
        }
    }

    /// A byte count: a whole number, optionally followed by KiB, MiB or GiB (also K, M,
    /// G, KB, MB, GB: all binary); `nil` for anything else, negative or over 2^53.
    static func byteCount(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: .whitespaces)
        let digits = t.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, digits.count <= 16, let n = Int(digits) else { return nil }
        let unit = t.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
        let shift: Int
        switch unit {
        case "", "b": shift = 0
        case "k", "kb", "kib": shift = 10
        case "m", "mb", "mib": shift = 20
        case "g", "gb", "gib": shift = 30
        default: return nil
        }
        let (v, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
        return overflow || v > 1 << 53 ? nil : v
    }

    /// Reads `key = value` lines; `#` starts a comment.
    static func parse(_ path: String) throws -> [String: (value: String, line: Int)] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read the config file \(path): \(String(cString: strerror(errno)))")
        }
        var out: [String: (value: String, line: Int)] = [:]
        for (i, raw) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            let parts = trimmed.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty else {
                throw ValidationError("\(path):\(i + 1): '\(trimmed)' is not `key = value`")
            }
            guard Self.keys.contains(parts[0]) else {
                throw ValidationError("\(path):\(i + 1): unknown key '\(parts[0])'; known keys: \(Self.keys.sorted().joined(separator: ", "))")
            }
            out[parts[0]] = (parts[1], i + 1)
        }
        return out
    }
}
