internal import COpenSSL

/// The keys derived from a cluster secret. The secret itself never leaves the
/// process: TLS uses `tlsKey` as its external pre-shared key, and beacons, TXT records
/// and TLS identities carry only `keyID`.
///
/// Derivation (docs/PROTOCOL.md, "Keys"):
///
///     K      = HKDF-Extract(salt: "ppnode cluster key v2", secret)        generated secrets
///     K      = scrypt(secret, salt: "ppnode cluster key v2", N=2^15, r=8, p=1, 32 bytes)
///                                                                        any other secret
///     keyID  = hex(HKDF-Expand(K, "ppnode key id", 8))
///     tlsKey = HKDF-Expand(K, "ppnode tls13 external psk", 32)
///
/// A generated secret (what ppnode writes: 64 lower-case hex digits from 32 random
/// bytes) has 256 bits of entropy, so a fast derivation loses nothing. Any other
/// secret may be a word a person chose: scrypt makes each guess of it cost about
/// 0.1 s and 32 MiB, for whoever tries to find it from a key id.
public struct ClusterKeys: Sendable, Hashable {
    /// The public name of the key: 16 hex digits. Equal key ids mean the same secret.
    public let keyID: String
    /// The 32-byte TLS 1.3 external pre-shared key.
    public let tlsKey: [UInt8]
    /// The TLS PSK identity: `"ppnode2:"` and the key id.
    public var tlsIdentity: String { "ppnode2:" + self.keyID }
    /// Whether the slow derivation was used (the secret is not in the generated form).
    public let stretched: Bool

    /// The salt of both derivations; it changes with the protocol's key schedule.
    static let salt = Array("ppnode cluster key v2".utf8)

    /// Derives the keys of `secret` (its trimmed UTF-8 bytes).
    public init(secret: [UInt8]) {
        let generated = secret.count == 64 && secret.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
        let master = generated ? Self.hmacSHA256(key: Self.salt, message: secret) : Self.scrypt(secret, salt: Self.salt)
        self.stretched = !generated
        self.keyID = Hex.encode(Self.expand(master, info: "ppnode key id", count: 8))
        self.tlsKey = Self.expand(master, info: "ppnode tls13 external psk", count: 32)
    }

    /// HKDF-Expand (RFC 5869) with HMAC-SHA256, for up to 32 bytes.
    static func expand(_ prk: [UInt8], info: String, count: Int) -> [UInt8] {
        precondition(count <= 32)
        return Array(Self.hmacSHA256(key: prk, message: Array(info.utf8) + [1]).prefix(count))
    }

    /// HMAC-SHA256.
    static func hmacSHA256(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        _ = HMAC(EVP_sha256(), key, Int32(key.count), message, message.count, &out, &length)
        return out
    }

    /// scrypt with N = 2^15, r = 8, p = 1 (32 MiB), 32 bytes out.
    static func scrypt(_ password: [UInt8], salt: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        let password = password.map { CChar(bitPattern: $0) }
        let ok = EVP_PBE_scrypt(password, password.count, salt, salt.count, 1 << 15, 8, 1, 64 << 20, &out, out.count)
        precondition(ok == 1, "OpenSSL scrypt failed")
        return out
    }
}
