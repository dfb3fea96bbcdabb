#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// This machine's IPv4 interfaces, as discovery needs them (`getifaddrs`).
public enum NetworkInterfaces {
    /// The name of the interface that holds the IPv4 address `address`, if any.
    ///
    /// - Parameter address: an IPv4 address in dotted form.
    /// - Returns: the interface's name (`eth0`), or `nil` when no interface holds it
    ///   (or `address` is not an IPv4 address).
    public static func name(owning address: String) -> String? {
        var wanted = in_addr()
        guard inet_pton(AF_INET, address, &wanted) == 1 else { return nil }
        return Self.firstIPv4Interface { entry, sin in
            sin.sin_addr.s_addr == wanted.s_addr ? String(cString: entry.ifa_name) : nil
        }
    }

    /// The IPv4 broadcast address of a network interface, if it has one.
    ///
    /// - Parameter name: the interface's name (`eth0`).
    /// - Returns: its broadcast address in dotted form; `nil` when there is no such
    ///   interface or it has no IPv4 broadcast address (loopback).
    public static func broadcastAddress(ofInterface name: String) -> String? {
        Self.firstIPv4Interface { entry, _ in
            guard String(cString: entry.ifa_name) == name, Int32(entry.ifa_flags) & Int32(IFF_BROADCAST) != 0,
                let broadcast = entry.ifa_ifu.ifu_broadaddr
            else { return nil }
            return broadcast.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                var a = sin.pointee.sin_addr
                var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                inet_ntop(AF_INET, &a, &text, socklen_t(INET_ADDRSTRLEN))
                return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
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
