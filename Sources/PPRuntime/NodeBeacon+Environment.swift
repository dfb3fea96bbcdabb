public import PPCore
import Foundation

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
