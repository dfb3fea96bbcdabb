import NIOCore

import Foundation

/// This machine's IPv4 interfaces, as discovery needs them (`getifaddrs`, through NIO).
public enum NetworkInterfaces {
    /// The name of the interface that holds the IPv4 address `address`, if any.
    ///
    /// - Parameter address: an IPv4 address in dotted form.
    /// - Returns: the interface's name (`eth0`), or `nil` when no interface holds it
    ///   (or `address` is not an IPv4 address).
    public static func name(owning address: String) -> String? {
        var wanted = in_addr()
        guard inet_pton(AF_INET, address, &wanted) == 1 else { return nil }
        return Self.ipv4.first { $0.address.sin_addr.s_addr == wanted.s_addr }?.device.name
    }

    /// The name of the interface whose IPv4 subnet holds `address`: the one a datagram
    /// from that address arrives on, or a connection to it leaves by.
    ///
    /// - Parameter address: an IPv4 address in dotted form.
    /// - Returns: the interface's name, or `nil` when no local subnet holds it (then it
    ///   is reached through a gateway) or `address` is not an IPv4 address.
    public static func name(reaching address: String) -> String? {
        var wanted = in_addr()
        guard inet_pton(AF_INET, address, &wanted) == 1 else { return nil }
        return Self.ipv4.first { device, local in
            guard case .v4(let mask) = device.netmask else { return false }
            let m = mask.address.sin_addr.s_addr
            return local.sin_addr.s_addr & m == wanted.s_addr & m
        }?.device.name
    }

    /// The IPv4 broadcast address of a network interface, if it has one.
    ///
    /// - Parameter name: the interface's name (`eth0`).
    /// - Returns: its broadcast address in dotted form; `nil` when there is no such
    ///   interface or it has no IPv4 broadcast address (loopback).
    public static func broadcastAddress(ofInterface name: String) -> String? {
        Self.ipv4.lazy.compactMap { $0.device.name == name ? $0.device.broadcastAddress?.ipAddress : nil }.first
    }

    /// This machine's IPv4 addresses, those of loopback last: where clients may reach a
    /// listener bound to 0.0.0.0.
    public static var addresses: [String] {
        let all = Self.ipv4.compactMap { $0.device.address?.ipAddress }
        return all.filter { !$0.hasPrefix("127.") } + all.filter { $0.hasPrefix("127.") }
    }

    /// This machine's interfaces, once per IPv4 address they hold.
    private static var ipv4: [(device: NIONetworkDevice, address: sockaddr_in)] {
        ((try? System.enumerateDevices()) ?? []).compactMap { device in
            guard case .v4(let address) = device.address else { return nil }
            return (device, address.address)
        }
    }
}
