internal import COpenSSL
public import PPCore

/// An OpenSSL TLS 1.3 context keyed by the cluster key: one per process and role.
///
/// Every connection of the native protocol runs inside TLS 1.3 with the cluster's
/// external pre-shared key (`ClusterKeys.tlsKey`, identity `ClusterKeys.tlsIdentity`)
/// and an ephemeral X25519 (or P-256) exchange: both sides prove they hold the key,
/// an observer reads nothing, a relay or an on-path machine can neither read nor
/// inject, and a recorded session stays secret if the cluster secret leaks later.
/// No certificates exist for anyone to manage.
///
/// `@unchecked Sendable`: the context is configured once in `init` and then only read
/// by OpenSSL (an `SSL_CTX` may be shared by connections on any thread); the key
/// block it points at is written once before the context exists and freed in `deinit`.
public final class TLSContext: @unchecked Sendable {
    /// Which end of connections the context makes.
    public enum Role: Sendable {
        /// Accepts connections (ppnode).
        case server
        /// Opens connections (clients).
        case client
    }

    /// The role.
    public let role: Role
    /// The key id of the key the context uses.
    public let keyID: String
    /// The PSK identity the context sends or accepts.
    public let identity: String
    let ctx: OpaquePointer
    private let psk: UnsafeMutablePointer<pp_tls_psk>

    /// Creates a context for `keys`.
    ///
    /// - Throws: `TLSError` when OpenSSL cannot make one (a broken libssl).
    public init(keys: ClusterKeys, role: Role) throws {
        self.role = role
        self.keyID = keys.keyID
        self.identity = keys.tlsIdentity
        self.psk = .allocate(capacity: 1)
        self.psk.initialize(to: pp_tls_psk())
        // The struct starts zeroed: the identity stays NUL-terminated.
        withUnsafeMutableBytes(of: &self.psk.pointee.key) { $0.copyBytes(from: keys.tlsKey.prefix(32)) }
        withUnsafeMutableBytes(of: &self.psk.pointee.identity) { $0.copyBytes(from: keys.tlsIdentity.utf8.prefix($0.count - 1)) }
        guard let ctx = pp_tls_ctx_new(role == .server ? 1 : 0, self.psk) else {
            self.psk.deinitialize(count: 1)
            self.psk.deallocate()
            throw TLSError(code: .internalError, message: "cannot create an OpenSSL TLS 1.3 context: \(TLSError.openSSLText()); check the system's libssl3")
        }
        self.ctx = ctx
    }

    deinit {
        SSL_CTX_free(self.ctx)
        // Wipe the key before giving the memory back.
        withUnsafeMutableBytes(of: &self.psk.pointee.key) { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) }
        self.psk.deinitialize(count: 1)
        self.psk.deallocate()
    }
}

/// A TLS failure: the handshake failed (wrong key, not TLS, an old peer), a record did
/// not authenticate (bytes injected or changed on the way), or OpenSSL failed.
public struct TLSError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure.
    public enum Code: Sendable, Hashable {
        /// The handshake failed: the peer has another key, or does not speak TLS 1.3.
        case handshakeFailed
        /// After the handshake, a record did not decrypt or the peer broke TLS.
        case recordFailed
        /// OpenSSL itself failed.
        case internalError
    }

    /// The kind.
    public var code: Code
    /// What happened, with OpenSSL's reason where there is one.
    public var message: String

    public var description: String { self.message }

    /// The oldest queued OpenSSL error as text (the queue is cleared).
    static func openSSLText() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        pp_tls_error_text(&buffer, buffer.count)
        let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // "error:0A000410:SSL routines::sslv3 alert handshake failure" -> the reason.
        if let last = text.split(separator: ":", omittingEmptySubsequences: false).last, !last.isEmpty { return String(last) }
        return text.isEmpty ? "no reason given" : text
    }
}
