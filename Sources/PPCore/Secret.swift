/// The cluster secret: every node and client of one cluster shares it. It never
/// travels: TLS sessions are keyed by a key derived from it (`ClusterKeys`).
///
/// This is the value alone. Finding, reading and creating secret files (flags,
/// `PP_SECRET`, `PP_SECRET_FILE`, the default file, permission checks) is
/// `ClusterSecret.load(file:origin:create:)` in PPRuntime.
public struct ClusterSecret: Sendable {
    /// The secret's bytes (the text of the secret, UTF-8, surrounding whitespace removed).
    public let bytes: [UInt8]
    /// Where it came from, for messages (`"PP_SECRET"`, a file path).
    public let origin: String

    /// Wraps secret text.
    ///
    /// - Parameters:
    ///   - text: the secret; whitespace and newlines around it are removed.
    ///   - origin: where it came from, for messages (`"PP_SECRET"`, a file path).
    /// - Throws: `SecretError` when it is empty or shorter than 16 bytes.
    public init(text: String, origin: String) throws {
        let trimmed = Self.trimmed(text)
        guard !trimmed.isEmpty else {
            throw SecretError(message: "the secret from \(origin) is empty; put a random string of at least 16 characters there (or delete the default file and let ppnode create one)")
        }
        guard trimmed.utf8.count >= 16 else {
            throw SecretError(message: "the secret from \(origin) has \(trimmed.utf8.count) characters; use at least 16 (e.g. `openssl rand -hex 32`)")
        }
        self.bytes = Array(trimmed.utf8)
        self.origin = origin
        self.keys = ClusterKeys(secret: self.bytes)
    }

    /// The keys derived from the secret (TLS key, key id).
    public let keys: ClusterKeys

    /// A short public name of the secret (`ClusterKeys.keyID`). Peers compare key ids
    /// to tell "my cluster" from "another cluster"; what an observer can learn from
    /// one is in docs/SECURITY.md.
    public var keyID: String { self.keys.keyID }

    /// `text` without the Unicode white space (spaces, tabs, newlines, U+0085,
    /// U+2028...) around it: the set Foundation's `whitespacesAndNewlines` names, so
    /// a secret keeps the bytes (and key id) it always had.
    static func trimmed(_ text: String) -> Substring {
        let scalars = text.unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return Substring(scalars[first...last])
    }
}

/// Compares two byte arrays in time that does not depend on where they differ.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for i in 0..<a.count { diff |= a[i] ^ b[i] }
    return diff == 0
}

/// The cluster secret is missing or unusable.
public struct SecretError: Error, Sendable, CustomStringConvertible {
    /// What is wrong and how to fix it.
    public var message: String

    /// Creates an error with its message.
    ///
    /// - Parameter message: what is wrong and how to fix it.
    public init(message: String) {
        self.message = message
    }

    /// The message.
    public var description: String { self.message }
}
