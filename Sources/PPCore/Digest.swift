internal import COpenSSL

/// A SHA-256 digest: the name of a function bundle, and the building block of key ids.
public struct SHA256Digest: Hashable, Sendable, CustomStringConvertible {
    /// The 32 digest bytes.
    public let bytes: [UInt8]

    /// Wraps 32 bytes that already are a digest.
    ///
    /// - Parameter bytes: exactly 32 bytes.
    /// - Returns: `nil` when `bytes` is not 32 bytes long.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.bytes = bytes
    }

    /// Hashes `data` with SHA-256.
    ///
    /// - Parameter data: the bytes to hash.
    public init(hashing data: [UInt8]) {
        var out = [UInt8](repeating: 0, count: 32)
        _ = SHA256(data, data.count, &out)
        self.bytes = out
    }

    /// The digest in lower-case hexadecimal.
    /// Hashes the 32 bytes in one call (the synthesized hash fed them one by one, on
    /// every bundle look-up of every job).
    public func hash(into hasher: inout Hasher) {
        self.bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    public var hex: String { Hex.encode(self.bytes) }

    /// The first 12 hex digits, enough to tell digests apart in logs.
    public var description: String { String(self.hex.prefix(12)) }
}

/// Lower-case hexadecimal encoding.
public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    /// Encodes bytes as lower-case hexadecimal.
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var chars = [UInt8]()
        chars.reserveCapacity(bytes.underestimatedCount * 2)
        for b in bytes {
            chars.append(Self.digits[Int(b >> 4)])
            chars.append(Self.digits[Int(b & 0x0f)])
        }
        return String(decoding: chars, as: UTF8.self)
    }
}
