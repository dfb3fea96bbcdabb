import CDNSSD
import Dispatch
public import ServiceLifecycle

/// A service to publish with DNS-SD (`DNSServiceRegister`).
///
/// Creating one publishes nothing. It is a `Service`: `run()` publishes it, keeps it
/// published until graceful shutdown or cancellation, then withdraws it (peers see it
/// removed).
///
/// Thread safety: every call to the dns_sd ref happens on the private serial queue, so
/// the type is `@unchecked Sendable`.
public final class DNSSDRegistration: Service, @unchecked Sendable {
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
    private let record: [UInt8]
    private let baseName: String
    // Touched only on `queue`.
    private var pump: ServiceRefPump?
    private var conflicts = 0

    /// The name to register: after a conflict, `name (2)`, `name (3)`, ...
    private var name: String { self.conflicts == 0 ? self.baseName : "\(self.baseName) (\(self.conflicts + 1))" }

    /// A service `name` (of `type`, e.g. `_ppnode._tcp`) on `port` with a TXT record;
    /// `handler` hears how its registration goes.
    ///
    /// A name taken by another service is retried as `name (2)`, `name (3)`, ...
    public init(name: String, type: String, port: Int, txt: [String: String], handler: @escaping @Sendable (Event) -> Void) {
        self.baseName = name
        self.type = type
        self.port = port
        self.record = DNSSDTXT.encode(txt)
        self.handler = handler
    }

    /// Publishes the service until graceful shutdown or cancellation, then withdraws it
    /// and waits until that is done.
    ///
    /// - Throws: `DNSSDError` at once when the daemon cannot be reached.
    public func run() async throws(DNSSDError) {
        quietAvahi()
        try self.queue.sync { self.register() }.get()
        try? await gracefulShutdown()
        self.queue.sync { self.pump?.cancel() }
    }

    private func register() -> Result<Void, DNSSDError> {
        ServiceRefPump.start("DNSServiceRegister", owner: self, queue: self.queue) { ref, context in
            self.record.withUnsafeBytes { txt in
                DNSServiceRegister(
                    &ref, 0, 0, self.name, self.type, nil, nil, UInt16(self.port).bigEndian,
                    UInt16(txt.count), txt.baseAddress, registerReply, context
                )
            }
        }.map { self.pump = $0 }
    }

    fileprivate func replied(error: DNSServiceErrorType, name: String?) {
        if error == Int32(kDNSServiceErr_NoError) {
            self.handler(.registered(name: name ?? self.name))
        } else if error == Int32(kDNSServiceErr_NameConflict), self.conflicts < 8 {
            self.conflicts += 1
            self.pump?.cancel()
            if case .failure(let e) = self.register() { self.handler(.failed(e)) }
        } else {
            self.handler(.failed(DNSSDError(code: error, operation: "DNSServiceRegister")))
        }
    }
}

private func registerReply(
    _ ref: DNSServiceRef?, _ flags: DNSServiceFlags, _ error: DNSServiceErrorType,
    _ name: UnsafePointer<CChar>?, _ type: UnsafePointer<CChar>?, _ domain: UnsafePointer<CChar>?,
    _ context: UnsafeMutableRawPointer?
) {
    guard let registration: DNSSDRegistration = owner(context) else { return }
    registration.replied(error: error, name: name.map { String(cString: $0) })
}
