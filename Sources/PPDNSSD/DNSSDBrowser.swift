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

    private let queue = DispatchQueue(label: "ppnode.dnssd.browse")
    private let handler: @Sendable (Event) -> Void
    private let type: String
    // Touched only on `queue`.
    private var pump: ServiceRefPump?
    private var lookups: [String: Lookup] = [:]
    private var stopped = false

    /// Starts browsing `type` (e.g. `_ppnode._tcp`) in the default domain.
    ///
    /// - Throws: `DNSSDError` at once when the daemon cannot be reached.
    public init(type: String, handler: @escaping @Sendable (Event) -> Void) throws(DNSSDError) {
        quietAvahi()
        self.type = type
        self.handler = handler
        let result: Result<Void, DNSSDError> = self.queue.sync {
            var ref: DNSServiceRef?
            let context = Unmanaged.passRetained(self).toOpaque()
            let err = DNSServiceBrowse(&ref, 0, 0, type, nil, browseReply, context)
            guard err == Int32(kDNSServiceErr_NoError), let ref else {
                Unmanaged<DNSSDBrowser>.fromOpaque(context).release()
                return .failure(DNSSDError(code: err, operation: "DNSServiceBrowse"))
            }
            self.pump = ServiceRefPump(ref: ref, queue: self.queue) { [context = UnsafeSendable(context)] in
                Unmanaged<DNSSDBrowser>.fromOpaque(context.value).release()
            }
            return .success(())
        }
        try result.get()
    }

    /// Stops browsing and every resolve in progress.
    public func cancel() {
        self.queue.sync {
            self.stopped = true
            self.pump?.cancel()
            self.pump = nil
            for l in self.lookups.values { l.cancel() }
            self.lookups.removeAll()
        }
    }

    fileprivate func browsed(flags: DNSServiceFlags, interface: UInt32, error: DNSServiceErrorType, name: String, type: String, domain: String) {
        guard !self.stopped else { return }
        guard error == Int32(kDNSServiceErr_NoError) else {
            self.handler(.failed(DNSSDError(code: error, operation: "DNSServiceBrowse")))
            return
        }
        let key = "\(interface)/\(name)"
        if flags & DNSServiceFlags(kDNSServiceFlagsAdd) != 0 {
            self.lookups[key]?.cancel()
            let lookup = Lookup(browser: self, key: key, name: name, type: type, domain: domain, interface: interface)
            self.lookups[key] = lookup
            lookup.start()
        } else {
            self.lookups.removeValue(forKey: key)?.cancel()
            self.handler(.removed(name: name))
        }
    }

    fileprivate func finished(_ lookup: Lookup, _ result: Result<DNSSDService, DNSSDError>) {
        guard !self.stopped, self.lookups[lookup.key] === lookup else { return }
        switch result {
        case .success(let service): self.handler(.found(service))
        case .failure(let error): self.handler(.failed(error))
        }
    }

    fileprivate var callbackQueue: DispatchQueue { self.queue }
}

/// Resolve, then A-record query, for one browsed instance. Lives on the browser's queue.
final class Lookup: @unchecked Sendable {
    let key: String
    private weak var browser: DNSSDBrowser?
    private let name: String
    private let type: String
    private let domain: String
    private let interface: UInt32
    private var pump: ServiceRefPump?
    private var resolved: (host: String, port: Int, txt: [String: String])?
    private var timeout: DispatchWorkItem?

    fileprivate init(browser: DNSSDBrowser, key: String, name: String, type: String, domain: String, interface: UInt32) {
        self.browser = browser
        self.key = key
        self.name = name
        self.type = type
        self.domain = domain
        self.interface = interface
    }

    fileprivate func start() {
        var ref: DNSServiceRef?
        let context = Unmanaged.passRetained(self).toOpaque()
        let err = DNSServiceResolve(&ref, 0, self.interface, self.name, self.type, self.domain, resolveReply, context)
        self.attach(ref: ref, err: err, context: context, operation: "DNSServiceResolve")
        // A host that never answers must not hold the lookup forever.
        let item = DispatchWorkItem { [weak self] in self?.fail(DNSSDError(code: Int32(kDNSServiceErr_Unknown), operation: "resolving '\(self?.name ?? "")' (no answer within 5 s)")) }
        self.timeout = item
        self.browser?.callbackQueue.asyncAfter(deadline: .now() + 5, execute: item)
    }

    private func attach(ref: DNSServiceRef?, err: DNSServiceErrorType, context: UnsafeMutableRawPointer, operation: String) {
        guard err == Int32(kDNSServiceErr_NoError), let ref, let queue = self.browser?.callbackQueue else {
            Unmanaged<Lookup>.fromOpaque(context).release()
            self.fail(DNSSDError(code: err, operation: operation))
            return
        }
        self.pump = ServiceRefPump(ref: ref, queue: queue) { [context = UnsafeSendable(context)] in
            Unmanaged<Lookup>.fromOpaque(context.value).release()
        }
    }

    fileprivate func resolvedService(error: DNSServiceErrorType, host: String, port: Int, txt: [String: String]) {
        self.pump?.cancel()
        self.pump = nil
        guard error == Int32(kDNSServiceErr_NoError) else {
            self.fail(DNSSDError(code: error, operation: "DNSServiceResolve"))
            return
        }
        self.resolved = (host, port, txt)
        var ref: DNSServiceRef?
        let context = Unmanaged.passRetained(self).toOpaque()
        let err = DNSServiceQueryRecord(&ref, 0, self.interface, host, UInt16(kDNSServiceType_A), UInt16(kDNSServiceClass_IN), queryReply, context)
        self.attach(ref: ref, err: err, context: context, operation: "DNSServiceQueryRecord")
    }

    fileprivate func answered(error: DNSServiceErrorType, rdata: [UInt8]) {
        guard error == Int32(kDNSServiceErr_NoError) else {
            self.fail(DNSSDError(code: error, operation: "DNSServiceQueryRecord"))
            return
        }
        guard rdata.count == 4, let resolved = self.resolved else { return }
        self.cancel()
        let address = rdata.map(String.init).joined(separator: ".")
        let service = DNSSDService(
            name: self.name, type: self.type, domain: self.domain, host: resolved.host, address: address,
            port: resolved.port, txt: resolved.txt, interfaceIndex: self.interface
        )
        self.browser?.finished(self, .success(service))
    }

    private func fail(_ error: DNSSDError) {
        self.cancel()
        self.browser?.finished(self, .failure(error))
    }

    func cancel() {
        self.timeout?.cancel()
        self.timeout = nil
        self.pump?.cancel()
        self.pump = nil
    }
}

private func browseReply(
    _ ref: DNSServiceRef?, _ flags: DNSServiceFlags, _ interface: UInt32, _ error: DNSServiceErrorType,
    _ name: UnsafePointer<CChar>?, _ type: UnsafePointer<CChar>?, _ domain: UnsafePointer<CChar>?,
    _ context: UnsafeMutableRawPointer?
) {
    guard let context else { return }
    let browser = Unmanaged<DNSSDBrowser>.fromOpaque(context).takeUnretainedValue()
    browser.browsed(
        flags: flags, interface: interface, error: error,
        name: name.map { String(cString: $0) } ?? "", type: type.map { String(cString: $0) } ?? "",
        domain: domain.map { String(cString: $0) } ?? "local."
    )
}

private func resolveReply(
    _ ref: DNSServiceRef?, _ flags: DNSServiceFlags, _ interface: UInt32, _ error: DNSServiceErrorType,
    _ fullname: UnsafePointer<CChar>?, _ host: UnsafePointer<CChar>?, _ port: UInt16,
    _ txtLength: UInt16, _ txt: UnsafePointer<UInt8>?, _ context: UnsafeMutableRawPointer?
) {
    guard let context else { return }
    let lookup = Unmanaged<Lookup>.fromOpaque(context).takeUnretainedValue()
    let pairs = txt.map { DNSSDTXT.decode(UnsafeBufferPointer(start: $0, count: Int(txtLength))) } ?? [:]
    lookup.resolvedService(error: error, host: host.map { String(cString: $0) } ?? "", port: Int(UInt16(bigEndian: port)), txt: pairs)
}

private func queryReply(
    _ ref: DNSServiceRef?, _ flags: DNSServiceFlags, _ interface: UInt32, _ error: DNSServiceErrorType,
    _ fullname: UnsafePointer<CChar>?, _ rrtype: UInt16, _ rrclass: UInt16, _ rdlength: UInt16,
    _ rdata: UnsafeRawPointer?, _ ttl: UInt32, _ context: UnsafeMutableRawPointer?
) {
    guard let context else { return }
    let lookup = Unmanaged<Lookup>.fromOpaque(context).takeUnretainedValue()
    let bytes = rdata.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(rdlength))) } ?? []
    lookup.answered(error: error, rdata: bytes)
}
