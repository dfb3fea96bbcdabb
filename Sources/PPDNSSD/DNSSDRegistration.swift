import CDNSSD
import Dispatch

/// A service published with DNS-SD (`DNSServiceRegister`) until `cancel()`.
///
/// Thread safety: every call to the dns_sd ref happens on the private serial queue, so
/// the type is `@unchecked Sendable`.
public final class DNSSDRegistration: @unchecked Sendable {
    /// What happened to the registration.
    public enum Event: Sendable {
        /// Published under this name (it may differ from the one asked for after a conflict).
        case registered(name: String)
        /// The daemon refused or lost the registration.
        case failed(DNSSDError)
    }

    private let queue = DispatchQueue(label: "ppnode.dnssd.register")
    private let handler: @Sendable (Event) -> Void
    private let type: String
    private let port: Int
    // Touched only on `queue`.
    private let baseName: String
    private var name: String
    private var txt: [String: String]
    private var ref: DNSServiceRef?
    private var pump: ServiceRefPump?
    private var conflicts = 0

    /// Publishes `name` (of `type`, e.g. `_ppnode._tcp`) on `port` with a TXT record.
    ///
    /// A name taken by another service is retried as `name (2)`, `name (3)`, ...
    ///
    /// - Throws: `DNSSDError` at once when the daemon cannot be reached.
    public init(name: String, type: String, port: Int, txt: [String: String], handler: @escaping @Sendable (Event) -> Void) throws(DNSSDError) {
        quietAvahi()
        self.baseName = name
        self.name = name
        self.type = type
        self.port = port
        self.txt = txt
        self.handler = handler
        let result: Result<Void, DNSSDError> = self.queue.sync { self.register() }
        try result.get()
    }

    private func register() -> Result<Void, DNSSDError> {
        var ref: DNSServiceRef?
        let record = DNSSDTXT.encode(self.txt)
        let context = Unmanaged.passRetained(self).toOpaque()
        let err = record.withUnsafeBytes { txt in
            DNSServiceRegister(
                &ref, 0, 0, self.name, self.type, nil, nil, UInt16(self.port).bigEndian,
                UInt16(txt.count), txt.baseAddress, registerReply, context
            )
        }
        guard err == Int32(kDNSServiceErr_NoError), let ref else {
            Unmanaged<DNSSDRegistration>.fromOpaque(context).release()
            return .failure(DNSSDError(code: err, operation: "DNSServiceRegister"))
        }
        self.ref = ref
        self.pump = ServiceRefPump(ref: ref, queue: self.queue) { [context = UnsafeSendable(context)] in
            Unmanaged<DNSSDRegistration>.fromOpaque(context.value).release()
        }
        return .success(())
    }

    fileprivate func replied(error: DNSServiceErrorType, name: String?) {
        if error == Int32(kDNSServiceErr_NoError) {
            self.handler(.registered(name: name ?? self.name))
        } else if error == Int32(kDNSServiceErr_NameConflict), self.conflicts < 8 {
            self.conflicts += 1
            self.pump?.cancel()
            self.ref = nil
            self.name = "\(self.baseName) (\(self.conflicts + 1))"
            if case .failure(let e) = self.register() { self.handler(.failed(e)) }
        } else {
            self.handler(.failed(DNSSDError(code: error, operation: "DNSServiceRegister")))
        }
    }

    /// Replaces the TXT record (peers browsing see the new values when they resolve).
    public func update(txt: [String: String]) {
        self.queue.async {
            guard txt != self.txt else { return }
            self.txt = txt
            guard let ref = self.ref else { return }
            let record = DNSSDTXT.encode(txt)
            let err = record.withUnsafeBytes { DNSServiceUpdateRecord(ref, nil, 0, UInt16($0.count), $0.baseAddress, 0) }
            if err != Int32(kDNSServiceErr_NoError) {
                self.handler(.failed(DNSSDError(code: err, operation: "DNSServiceUpdateRecord")))
            }
        }
    }

    /// Withdraws the service (peers see it removed) and waits until it is done.
    public func cancel() {
        self.queue.sync {
            self.pump?.cancel()
            self.pump = nil
            self.ref = nil
        }
    }
}

private func registerReply(
    _ ref: DNSServiceRef?, _ flags: DNSServiceFlags, _ error: DNSServiceErrorType,
    _ name: UnsafePointer<CChar>?, _ type: UnsafePointer<CChar>?, _ domain: UnsafePointer<CChar>?,
    _ context: UnsafeMutableRawPointer?
) {
    guard let context else { return }
    let registration = Unmanaged<DNSSDRegistration>.fromOpaque(context).takeUnretainedValue()
    registration.replied(error: error, name: name.map { String(cString: $0) })
}
