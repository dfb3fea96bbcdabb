public import PPCore
import Foundation

// MARK: Reading the broadcast target from PP_BROADCAST or a flag

extension BroadcastTarget {
    /// Reads `PP_BROADCAST` (see `parse`); unset means 255.255.255.255 (the LAN).
    ///
    /// - Parameter environment: the environment to read; `nil` means this process's.
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
    /// - Parameters:
    ///   - value: the setting's text.
    ///   - origin: where the value came from, for the error message.
    /// - Throws: `BroadcastError` naming the value and the fix.
    public static func parse(_ value: String, origin: String) throws -> BroadcastTarget {
        if value.lowercased() == "off" { return .off }
        var addr = in_addr()
        if inet_pton(AF_INET, value, &addr) == 1 { return .address(value) }
        if let broadcast = NetworkInterfaces.broadcastAddress(ofInterface: value) { return .address(broadcast) }
        throw BroadcastError(
            message: "\(origin)='\(value)' is neither 'off', an IPv4 address nor an interface with an IPv4 broadcast address; use e.g. 192.168.1.255, eth0, 127.255.255.255 or off"
        )
    }
}

/// A discovery setting (`PP_BROADCAST`, `PP_DISCOVERY_PORT`, `--broadcast`) does not
/// parse.
public struct BroadcastError: Error, Sendable, CustomStringConvertible {
    /// What is wrong and the fix.
    public var message: String

    /// What is wrong and the fix.
    public var description: String { self.message }
}

// MARK: Reading the discovery port from PP_DISCOVERY_PORT

extension NodeBeacon {
    /// Reads `PP_DISCOVERY_PORT`; unset or empty means `defaultPort`.
    ///
    /// - Parameter environment: the environment to read; `nil` means this process's.
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
}
