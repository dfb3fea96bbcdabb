import ArgumentParser
import Foundation
import Logging
import PPCommandLine
import PPCore
import PPNode
import PPRuntime

/// ppnode's settings after merging flag > environment > config file > default.
struct Settings {
    var secretFile: String?
    /// Where `secretFile` came from, for messages (`--secret-file`, `FILE:LINE (secret-file)`).
    var secretFileOrigin = "--secret-file"
    var logLevel = Logger.Level.info
    /// What was set for the node, applied to its configuration once the secret is
    /// loaded; `NodeConfiguration`'s defaults stand for the rest.
    var node: [(inout NodeConfiguration) -> Void] = []

    /// The keys a config file may hold, each documented in config/ppnode.conf.
    static let keys: Set<String> = [
        "host", "port", "workers", "python", "secret-file", "name", "max-frame", "cache-bytes",
        "handshake-timeout", "heartbeat-timeout", "drain-timeout", "log-level", "discovery-port", "beacon-interval",
        "broadcast", "dnssd", "pp-port", "pp-version", "pp-allow-default-secret", "client-weights",
    ]

    init(command c: PPNodeCommand) throws {
        let env = ProcessInfo.processInfo.environment
        let (configPath, file) = try Self.configFile(c.config)

        /// Every value given for a setting, the one that counts first: flag, environment,
        /// config file.
        func given(_ flag: String?, _ envName: String, _ key: String) -> [(text: String, origin: String)] {
            var out: [(String, String)] = []
            if let flag { out.append((flag, "--\(key)")) }
            if let v = env[envName], !v.isEmpty { out.append((v, envName)) }
            if let v = file[key] { out.append((v.value, "\(configPath!):\(v.line) (\(key))")) }
            return out
        }
        /// The setting's value, `nil` when unset. Every value given is checked, also one
        /// that another overrides; text that `parse` refuses is an error that names where
        /// it came from: "ORIGIN: 'TEXT' is not `what`".
        func value<T>(_ flag: String?, _ envName: String, _ key: String, isNot what: String, _ parse: (String) -> T?) throws -> T? {
            var result: T?
            for (text, origin) in given(flag, envName, key) {
                guard let v = parse(text) else { throw ValidationError("\(origin): '\(text)' is not \(what)") }
                result = result ?? v
            }
            return result
        }
        func text(_ flag: String?, _ envName: String, _ key: String, isNot what: String) throws -> String? {
            try value(flag, envName, key, isNot: what) { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0 }
        }
        func int(_ flag: Int?, _ envName: String, _ key: String, in range: ClosedRange<Int>) throws -> Int? {
            try value(flag.map(String.init), envName, key, isNot: "a whole number from \(range.lowerBound) to \(range.upperBound)") { Self.int($0, in: range) }
        }
        func seconds(_ flag: Double?, _ envName: String, _ key: String) throws -> Duration? {
            try value(flag.map { String($0) }, envName, key, isNot: "a positive number of seconds") { text in
                Double(text).flatMap { $0 > 0 && $0.isFinite ? .milliseconds(Int64($0 * 1000)) : nil }
            }
        }
        func bool(_ flag: Bool?, _ envName: String, _ key: String) throws -> Bool? {
            try value(flag.map { $0 ? "yes" : "no" }, envName, key, isNot: Self.boolean, Self.yesNo)
        }
        func set<T>(_ key: WritableKeyPath<NodeConfiguration, T>, _ value: T?) {
            if let value { self.node.append { $0[keyPath: key] = value } }
        }

        set(\.host, try text(c.host, "PP_HOST", "host", isNot: "an address; give one of this machine's addresses, or 0.0.0.0 for every interface"))
        set(\.port, try int(c.port, "PP_PORT", "port", in: 0...65535))
        // 0 is a standby node: it advertises and accepts clients (a check of the network
        // and the secret before Python is installed) but gives them a window of 0.
        let workers = "a number of workers from 0 to 4096; 0 runs no jobs (leave it unset for one per core)"
        set(\.workers, try value(c.workers.map(String.init), "PP_WORKERS", "workers", isNot: workers) { Self.int($0, in: 0...4096) })
        set(\.python, try text(c.python, "PP_PYTHON", "python", isNot: "an interpreter; give python3 or the path of one"))
        if try text(c.secretOptions.secretFile, "", "secret-file", isNot: "a file; give the path of the secret file") != nil {
            (self.secretFile, self.secretFileOrigin) = given(c.secretOptions.secretFile, "", "secret-file")[0]
        }
        let name = "a node name; give 1 to 63 bytes of text, such as rack1-node3"
        set(\.name, try value(c.name, "PP_NODE_NAME", "name", isNot: name) { $0.isEmpty || $0.utf8.count > 63 ? nil : $0 })
        let maxFrame = "a frame limit ppnode supports; \(NodeConfiguration.maxFrameAdvice)"
        set(\.maxFrame, try value(c.maxFrame, "PP_MAX_FRAME", "max-frame", isNot: maxFrame) { Self.byteCount($0).flatMap { NodeConfiguration.maxFrameRange.contains($0) ? $0 : nil } })
        let cacheBytes = "a number of bytes; give bytes or a KiB, MiB or GiB size, such as 256MiB"
        set(\.cacheBytes, try value(c.cacheBytes, "PP_CACHE_BYTES", "cache-bytes", isNot: cacheBytes, Self.byteCount))
        set(\.handshakeTimeout, try seconds(c.handshakeTimeout, "PP_HANDSHAKE_TIMEOUT", "handshake-timeout"))
        set(\.heartbeatTimeout, try seconds(c.heartbeatTimeout, "PP_HEARTBEAT_TIMEOUT", "heartbeat-timeout"))
        set(\.drainTimeout, try seconds(c.drainTimeout, "PP_DRAIN_TIMEOUT", "drain-timeout"))
        set(\.discoveryPort, try int(c.discoveryPort, "PP_DISCOVERY_PORT", "discovery-port", in: 1...65535))
        set(\.beaconInterval, try seconds(c.beaconInterval, "PP_BEACON_INTERVAL", "beacon-interval"))
        let broadcasts = try given(c.broadcast, "PP_BROADCAST", "broadcast").map { try BroadcastTarget.parse($0.text.trimmingCharacters(in: .whitespaces), origin: $0.origin) }
        set(\.broadcast, broadcasts.first)
        set(\.dnssd, try bool(c.noDNSSD ? false : nil, "PP_DNSSD", "dnssd"))
        if c.noPP, c.ppPort != nil { throw ValidationError("--pp-port and --no-pp contradict each other; give one") }
        // nil: off.
        let ppPort = try value(c.ppPort.map(String.init), "PP_PP_PORT", "pp-port", isNot: "a port (0-65535) or off") { text -> Int?? in
            text.lowercased() == "off" ? .some(nil) : Self.int(text, in: 0...65535).map { .some($0) }
        }
        if !c.noPP, let port = ppPort ?? nil { set(\.ppPort, port) }
        // ppft compares it with its own version string (ASCII, such as 1.7.8).
        let ppVersion = "a ppft version string; give the version your ppft clients run, such as 1.7.8"
        set(\.ppVersion, try value(c.ppVersion, "PP_PP_VERSION", "pp-version", isNot: ppVersion) { v in
            !v.isEmpty && v.count <= 64 && v.unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 }) ? v : nil
        })
        set(\.ppAllowDefaultSecret, try bool(c.ppAllowDefaultSecret ? true : nil, "PP_PP_ALLOW_DEFAULT_SECRET", "pp-allow-default-secret"))
        let weights = "a list of ADDRESS=WEIGHT pairs, such as 10.0.0.5=2,10.0.0.7=0.5 (weights from 0.01 to 100)"
        set(\.clientWeights, try value(c.clientWeights, "PP_CLIENT_WEIGHTS", "client-weights", isNot: weights, Self.weights))
        let logLevel = "a log level; use trace, debug, info, notice, warning, error or critical"
        if let level = try value(c.logLevel, "PP_LOG_LEVEL", "log-level", isNot: logLevel, { Logger.Level(rawValue: $0.lowercased()) }) { self.logLevel = level }
    }

    /// A whole number in `range`, or `nil`.
    static func int(_ text: String, in range: ClosedRange<Int>) -> Int? {
        Int(text).flatMap { range.contains($0) ? $0 : nil }
    }

    /// `ADDRESS=WEIGHT` pairs separated by commas (weights 0.01 to 100); `nil` for
    /// anything else.
    static func weights(_ text: String) -> [String: Double]? {
        var out: [String: Double] = [:]
        for pair in text.split(separator: ",") {
            let parts = pair.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty, let w = Double(parts[1]), w >= 0.01, w <= 100 else { return nil }
            out[parts[0]] = w
        }
        return out.isEmpty ? nil : out
    }

    /// What a boolean setting takes, for messages.
    static let boolean = "yes or no (on/off, true/false and 1/0 work too)"

    /// yes, on, true, 1 or no, off, false, 0 (any case): the one vocabulary of every
    /// boolean setting; `nil` for anything else.
    static func yesNo(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "on", "yes", "true", "1": true
        case "off", "no", "false", "0": false
        default: nil
        }
    }

    /// A byte count: a whole number, optionally followed by KiB, MiB or GiB (also K, M,
    /// G, KB, MB, GB: all binary); `nil` for anything else, negative or over 2^53.
    static func byteCount(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: .whitespaces)
        let digits = t.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, digits.count <= 16, let n = Int(digits) else { return nil }
        let unit = t.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
        let shifts = ["": 0, "b": 0, "k": 10, "kb": 10, "kib": 10, "m": 20, "mb": 20, "mib": 20, "g": 30, "gb": 30, "gib": 30]
        guard let shift = shifts[unit] else { return nil }
        let (v, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
        return overflow || v > 1 << 53 ? nil : v
    }

    /// The config file (`--config`, `$PP_CONFIG`, else /etc/ppnode/ppnode.conf when it
    /// exists) and its settings.
    static func configFile(_ flag: String?) throws -> (path: String?, settings: [String: (value: String, line: Int)]) {
        var path = flag ?? ProcessInfo.processInfo.environment["PP_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        if path == nil, FileManager.default.fileExists(atPath: "/etc/ppnode/ppnode.conf") { path = "/etc/ppnode/ppnode.conf" }
        return (path, try path.map(Self.parse) ?? [:])
    }

    /// Reads `key = value` lines; `#` starts a comment. A key may appear once.
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
            if let first = out[parts[0]] {
                throw ValidationError("\(path):\(i + 1): '\(parts[0])' is set again (first on line \(first.line)); keep one of the two lines")
            }
            out[parts[0]] = (parts[1], i + 1)
        }
        return out
    }
}
