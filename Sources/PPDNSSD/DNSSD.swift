import CDNSSD
import Dispatch
import Foundation

/// A DNS-SD call failed. `description` says what it means for the user and the fix.
public struct DNSSDError: Error, Sendable, CustomStringConvertible {
    /// The dns_sd error code (`kDNSServiceErr_*`).
    public var code: Int32
    /// The call that failed (`DNSServiceRegister`, ...).
    public var operation: String

    public var description: String {
        switch Int(self.code) {
        case kDNSServiceErr_Unknown:
            return "\(self.operation) failed (\(self.code)): avahi-daemon is not reachable over the system D-Bus; start it (apt install avahi-daemon dbus; systemctl start avahi-daemon) or set DBUS_SYSTEM_BUS_ADDRESS to its bus"
        case kDNSServiceErr_NameConflict:
            return "\(self.operation) failed (\(self.code)): another service on the network has this name"
        case kDNSServiceErr_BadParam:
            return "\(self.operation) failed (\(self.code)): a bad parameter (name, type or TXT record)"
        default:
            return "\(self.operation) failed with dns_sd error \(self.code)"
        }
    }
}

/// A service instance found by browsing and resolved to an address.
public struct DNSSDService: Sendable, Hashable {
    /// Its instance name (`node1`).
    public var name: String
    /// Its service type (`_ppnode._tcp`).
    public var type: String
    /// Its domain (`local.`).
    public var domain: String
    /// The host name it runs on (`node1.local.`).
    public var host: String
    /// Its IPv4 address, dotted.
    public var address: String
    /// Its port.
    public var port: Int
    /// Its TXT record as key/value pairs.
    public var txt: [String: String]
    /// The interface it was seen on.
    public var interfaceIndex: UInt32
}

/// Builds and parses DNS-SD TXT records (length-prefixed `key=value` strings).
public enum DNSSDTXT {
    /// Encodes pairs, sorted by key; entries longer than 255 bytes are cut.
    public static func encode(_ pairs: [String: String]) -> [UInt8] {
        var out: [UInt8] = []
        for (key, value) in pairs.sorted(by: { $0.key < $1.key }) {
            let entry = Array("\(key)=\(value)".utf8.prefix(255))
            out.append(UInt8(entry.count))
            out += entry
        }
        return out.isEmpty ? [0] : out
    }

    /// Decodes a TXT record; malformed entries are skipped.
    public static func decode(_ bytes: UnsafeBufferPointer<UInt8>) -> [String: String] {
        var pairs: [String: String] = [:]
        var i = 0
        while i < bytes.count {
            let n = Int(bytes[i])
            i += 1
            guard n > 0, i + n <= bytes.count else {
                i += n
                continue
            }
            let entry = String(decoding: bytes[i..<(i + n)], as: UTF8.self)
            i += n
            if let eq = entry.firstIndex(of: "=") {
                pairs[String(entry[..<eq])] = String(entry[entry.index(after: eq)...])
            } else {
                pairs[entry] = ""
            }
        }
        return pairs
    }
}

/// One `DNSServiceRef` whose callbacks run on `queue`, pumped by a read source on the
/// ref's socket. The ref is deallocated on that queue after its last callback.
final class ServiceRefPump: @unchecked Sendable {
    // Only touched on `queue`.
    private var source: (any DispatchSourceRead)?

    init(ref: DNSServiceRef, queue: DispatchQueue, onRelease: @escaping @Sendable () -> Void) {
        let fd = DNSServiceRefSockFD(ref)
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        let box = UnsafeSendable(ref)
        source.setEventHandler {
            _ = DNSServiceProcessResult(box.value)
        }
        source.setCancelHandler {
            DNSServiceRefDeallocate(box.value)
            onRelease()
        }
        self.source = source
        source.resume()
    }

    /// Stops callbacks and frees the ref. Call on the queue.
    func cancel() {
        self.source?.cancel()
        self.source = nil
    }
}

/// Carries a C pointer across a `@Sendable` boundary; used only on one queue.
struct UnsafeSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Turns off avahi's "this program uses the Apple Bonjour compatibility layer" warning.
func quietAvahi() {
    setenv("AVAHI_COMPAT_NOWARN", "1", 0)
}
