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
        let meanings = [
            kDNSServiceErr_Unknown: "avahi-daemon is not reachable over the system D-Bus; start it (apt install avahi-daemon dbus; systemctl start avahi-daemon) or set DBUS_SYSTEM_BUS_ADDRESS to its bus",
            kDNSServiceErr_NameConflict: "another service on the network has this name",
            kDNSServiceErr_BadParam: "a bad parameter (name, type or TXT record)",
        ]
        guard let meaning = meanings[Int(self.code)] else { return "\(self.operation) failed with dns_sd error \(self.code)" }
        return "\(self.operation) failed (\(self.code)): \(meaning)"
    }
}

/// A service instance found by browsing and resolved to an address.
public struct DNSSDService: Sendable, Hashable {
    /// Its instance name (`node1`).
    public var name: String
    /// Its IPv4 address, dotted.
    public var address: String
    /// Its port.
    public var port: Int
    /// Its TXT record as key/value pairs.
    public var txt: [String: String]
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
            let start = i + 1
            i = start + Int(bytes[i])
            guard i > start, i <= bytes.count else { continue }
            let entry = String(decoding: bytes[start..<i], as: UTF8.self).split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            pairs[String(entry[0])] = entry.count > 1 ? String(entry[1]) : ""
        }
        return pairs
    }
}

/// One `DNSServiceRef` whose callbacks run on `queue`, pumped by a read source on the
/// ref's socket. The ref is deallocated on that queue after its last callback.
final class ServiceRefPump: @unchecked Sendable {
    // Only touched on `queue`.
    private var source: (any DispatchSourceRead)?

    /// Calls `operation` (`call`) with a new ref and `owner`, retained, as the callback
    /// context, and pumps the ref on `queue`; `owner` is released after the ref's last
    /// callback, or at once when the call fails.
    static func start<Owner: AnyObject>(
        _ operation: String, owner: Owner, queue: DispatchQueue,
        _ call: (inout DNSServiceRef?, UnsafeMutableRawPointer) -> DNSServiceErrorType
    ) -> Result<ServiceRefPump, DNSSDError> {
        var ref: DNSServiceRef?
        let context = UnsafeSendable(value: Unmanaged.passRetained(owner))
        let err = call(&ref, context.value.toOpaque())
        guard err == Int32(kDNSServiceErr_NoError), let ref else {
            context.value.release()
            return .failure(DNSSDError(code: err, operation: operation))
        }
        return .success(ServiceRefPump(ref: UnsafeSendable(value: ref), queue: queue) { context.value.release() })
    }

    private init(ref: UnsafeSendable<DNSServiceRef>, queue: DispatchQueue, onRelease: @escaping @Sendable () -> Void) {
        let source = DispatchSource.makeReadSource(fileDescriptor: DNSServiceRefSockFD(ref.value), queue: queue)
        source.setEventHandler { _ = DNSServiceProcessResult(ref.value) }
        source.setCancelHandler {
            DNSServiceRefDeallocate(ref.value)
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
}

/// The object behind a callback's context pointer (see `ServiceRefPump.start`).
func owner<Owner: AnyObject>(_ context: UnsafeMutableRawPointer?) -> Owner? {
    context.map { Unmanaged<Owner>.fromOpaque($0).takeUnretainedValue() }
}

/// A C string from a callback, or `empty` for none.
func string(_ text: UnsafePointer<CChar>?, or empty: String = "") -> String {
    text.map { String(cString: $0) } ?? empty
}

/// Turns off avahi's "this program uses the Apple Bonjour compatibility layer" warning.
func quietAvahi() {
    setenv("AVAHI_COMPAT_NOWARN", "1", 0)
}
