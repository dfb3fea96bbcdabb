import CDNSSD
import Dispatch
import Foundation

/// Browses a DNS-SD service type and resolves every instance to an IPv4 address,
/// port and TXT record (`DNSServiceBrowse`, `DNSServiceResolve`, then an A-record
/// `DNSServiceQueryRecord`, since avahi's compat library has no `GetAddrInfo`).
///
/// Thread safety: all dns_sd calls and all state live on one private serial queue;
/// the handler is called there too.
public final class DNSSDBrowser: @unchecked Sendable {
    /// What browsing saw.
    public enum Event: Sendable {
        /// An instance appeared (or was resolved again) with its address and TXT.
        case found(DNSSDService)
        /// An instance went away (its node withdrew it or its host left).
        case removed(name: String)
        /// The daemon reported an error; browsing has stopped.
        case failed(DNSSDError)
    }

    fileprivate let queue = DispatchQueue(label: "ppnode.dnssd.browse")
    private let handler: @Sendable (Event) -> Void
    // Touched only on `queue`; `pump` is nil once browsing was cancelled.
    private var pump: ServiceRefPump?
    private var lookups: [String: Lookup] = [:]

    /// Starts browsing `type` (e.g. `_ppnode._tcp`) in the default domain.
    ///
    /// - Throws: `DNSSDError` at once when the daemon cannot be reached.
    public init(type: String, handler: @escaping @Sendable (Event) -> Void) throws(DNSSDError) {
        quietAvahi()
        self.handler = handler
        try self.queue.sync {
            ServiceRefPump.start("DNSServiceBrowse", owner: self, queue: self.queue) { ref, context in
                DNSServiceBrowse(&ref, 0, 0, type, nil, browseReply, context)
            }.map { self.pump = $0 }
        }.get()
    }

    /// Stops browsing and every resolve in progress.
    public func cancel() {
        self.queue.sync {
            self.pump?.cancel()
            self.pump = nil
            for l in self.lookups.values { l.cancel() }
            self.lookups.removeAll()
        }
    }

    fileprivate func browsed(flags: DNSServiceFlags, interface: UInt32, error: DNSServiceErrorType, name: String, type: String, domain: String) {
        guard self.pump != nil else { return }
        guard error == Int32(kDNSServiceErr_NoError) else { return self.handler(.failed(DNSSDError(code: error, operation: "DNSServiceBrowse"))) }
        let key = "\(interface)/\(name)"
        self.lookups.removeValue(forKey: key)?.cancel()
        if flags & DNSServiceFlags(kDNSServiceFlagsAdd) != 0 {
            let lookup = Lookup(browser: self, key: key, name: name, interface: interface)
            self.lookups[key] = lookup
            lookup.start(type: type, domain: domain)
        } else {
            self.handler(.removed(name: name))
        }
    }

    fileprivate func finished(_ lookup: Lookup, _ event: Event) {
        guard self.lookups[lookup.key] === lookup else { return }
        self.handler(event)
    }
}

/// Resolve, then A-record query, for one browsed instance. Lives on the browser's queue.
final class Lookup: @unchecked Sendable {
    let key: String
    private weak var browser: DNSSDBrowser?
    private let interface: UInt32
    /// Filled in as the answers come: the port and TXT, then the address.
    private var service: DNSSDService
    private var pump: ServiceRefPump?
    private var timeout: DispatchWorkItem?

    fileprivate init(browser: DNSSDBrowser, key: String, name: String, interface: UInt32) {
        self.browser = browser
        self.key = key
        self.interface = interface
        self.service = DNSSDService(name: name, address: "", port: 0, txt: [:])
    }

    fileprivate func start(type: String, domain: String) {
        self.attach("DNSServiceResolve") { ref, context in
            DNSServiceResolve(&ref, 0, self.interface, self.service.name, type, domain, resolveReply, context)
        }
        // A host that never answers must not hold the lookup forever.
        let item = DispatchWorkItem { [weak self] in self?.fail(DNSSDError(code: Int32(kDNSServiceErr_Unknown), operation: "resolving '\(self?.service.name ?? "")' (no answer within 5 s)")) }
        self.timeout = item
        self.browser?.queue.asyncAfter(deadline: .now() + 5, execute: item)
    }

    private func attach(_ operation: String, _ call: (inout DNSServiceRef?, UnsafeMutableRawPointer) -> DNSServiceErrorType) {
        guard let queue = self.browser?.queue else { return self.cancel() }
        switch ServiceRefPump.start(operation, owner: self, queue: queue, call) {
        case .success(let pump): self.pump = pump
        case .failure(let error): self.fail(error)
        }
    }

    fileprivate func resolvedService(error: DNSServiceErrorType, host: String, port: Int, txt: [String: String]) {
        self.pump?.cancel()
        guard error == Int32(kDNSServiceErr_NoError) else { return self.fail(DNSSDError(code: error, operation: "DNSServiceResolve")) }
        self.service.port = port
        self.service.txt = txt
        self.attach("DNSServiceQueryRecord") { ref, context in
            DNSServiceQueryRecord(&ref, 0, self.interface, host, UInt16(kDNSServiceType_A), UInt16(kDNSServiceClass_IN), queryReply, context)
        }
    }

    fileprivate func answered(error: DNSServiceErrorType, rdata: [UInt8]) {
        guard error == Int32(kDNSServiceErr_NoError) else { return self.fail(DNSSDError(code: error, operation: "DNSServiceQueryRecord")) }
        guard rdata.count == 4 else { return }
        self.cancel()
        self.service.address = rdata.map(String.init).joined(separator: ".")
        self.browser?.finished(self, .found(self.service))
    }

    private func fail(_ error: DNSSDError) {
        self.cancel()
        self.browser?.finished(self, .failed(error))
    }

    /// Stops the timeout and the ref in use (both may be cancelled again).
    func cancel() {
        self.timeout?.cancel()
        self.pump?.cancel()
    }
}

private func browseReply(
    _ ref: DNSServiceRef?, _ flags: DNSServiceFlags, _ interface: UInt32, _ error: DNSServiceErrorType,
    _ name: UnsafePointer<CChar>?, _ type: UnsafePointer<CChar>?, _ domain: UnsafePointer<CChar>?,
    _ context: UnsafeMutableRawPointer?
) {
    let browser: DNSSDBrowser? = owner(context)
    browser?.browsed(flags: flags, interface: interface, error: error, name: string(name), type: string(type), domain: string(domain, or: "local."))
}

private func resolveReply(
    _ ref: DNSServiceRef?, _ flags: DNSServiceFlags, _ interface: UInt32, _ error: DNSServiceErrorType,
    _ fullname: UnsafePointer<CChar>?, _ host: UnsafePointer<CChar>?, _ port: UInt16,
    _ txtLength: UInt16, _ txt: UnsafePointer<UInt8>?, _ context: UnsafeMutableRawPointer?
) {
    let pairs = txt.map { DNSSDTXT.decode(UnsafeBufferPointer(start: $0, count: Int(txtLength))) } ?? [:]
    let lookup: Lookup? = owner(context)
    lookup?.resolvedService(error: error, host: string(host), port: Int(UInt16(bigEndian: port)), txt: pairs)
}

private func queryReply(
    _ ref: DNSServiceRef?, _ flags: DNSServiceFlags, _ interface: UInt32, _ error: DNSServiceErrorType,
    _ fullname: UnsafePointer<CChar>?, _ rrtype: UInt16, _ rrclass: UInt16, _ rdlength: UInt16,
    _ rdata: UnsafeRawPointer?, _ ttl: UInt32, _ context: UnsafeMutableRawPointer?
) {
    let lookup: Lookup? = owner(context)
    lookup?.answered(error: error, rdata: rdata.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(rdlength))) } ?? [])
}
