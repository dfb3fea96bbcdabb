internal import COpenSSL

/// Cryptographically random bytes from OpenSSL (`RAND_bytes`, seeded by the kernel).
///
/// - Parameter count: how many bytes.
/// - Returns: `count` random bytes. A failure of OpenSSL's generator stops the process:
///   a secret, node id or challenge must never be predictable.
public func randomBytes(_ count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    precondition(RAND_bytes(&out, Int32(count)) == 1, "OpenSSL RAND_bytes failed")
    return out
}
