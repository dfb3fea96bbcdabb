internal import COpenSSL
import Foundation

/// The cluster secret: every node and client of one cluster shares it. It never
/// travels: TLS sessions are keyed by a key derived from it (`ClusterKeys`).
public struct ClusterSecret: Sendable {
    /// The secret's bytes (the text of the secret, UTF-8, surrounding whitespace removed).
    public let bytes: [UInt8]
    /// Where it came from, for messages (`"PP_SECRET"`, a file path).
    public let origin: String

    /// Wraps secret text.
    ///
    /// - Throws: `SecretError` when it is empty or shorter than 16 bytes.
    public init(text: String, origin: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
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

    /// HMAC-SHA256 of `message` under the secret.
    public func hmac(_ message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        self.bytes.withUnsafeBufferPointer { key in
            message.withUnsafeBufferPointer { msg in
                _ = HMAC(EVP_sha256(), key.baseAddress, Int32(key.count), msg.baseAddress, msg.count, &out, &length)
            }
        }
        return out
    }

    // MARK: Loading

    /// The default secret file: `$PP_SECRET_FILE`, else `$XDG_CONFIG_HOME/ppnode/secret`,
    /// else `~/.config/ppnode/secret`.
    public static var defaultFile: String {
        let env = ProcessInfo.processInfo.environment
        if let f = env["PP_SECRET_FILE"], !f.isEmpty { return f }
        if let x = env["XDG_CONFIG_HOME"], !x.isEmpty { return x + "/ppnode/secret" }
        let home = env["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + "/.config/ppnode/secret"
    }

    /// Finds the secret, in this order: `file` (a `--secret-file` flag), the `PP_SECRET`
    /// environment variable, the default file.
    ///
    /// - Parameters:
    ///   - file: an explicit secret file, or `nil`.
    ///   - create: create the default file (random, mode 0600) when no secret exists.
    /// - Returns: the secret and whether it was created now.
    /// - Throws: `SecretError` when there is none (and `create` is false) or it is unusable.
    public static func load(file: String?, create: Bool) throws -> (secret: ClusterSecret, created: Bool) {
        if let file { return (try Self.read(file), false) }
        if let text = ProcessInfo.processInfo.environment["PP_SECRET"] {
            return (try ClusterSecret(text: text, origin: "PP_SECRET"), false)
        }
        let path = Self.defaultFile
        if FileManager.default.fileExists(atPath: path) { return (try Self.read(path), false) }
        guard create else {
            throw SecretError(message: "no cluster secret: give --secret-file, set PP_SECRET, or copy a node's secret file to \(path)")
        }
        return (try Self.create(at: path), true)
    }

    static func read(_ path: String) throws -> ClusterSecret {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SecretError(message: "cannot read the secret file \(path): \(String(cString: strerror(errno))); check the path and its permissions")
        }
        if let attributes = try? FileManager.default.attributesOfItem(atPath: path),
            let mode = attributes[.posixPermissions] as? Int, mode & 0o077 != 0
        {
            throw SecretError(message: "the secret file \(path) is readable by others (mode \(String(mode, radix: 8))); run chmod 600 \(path)")
        }
        return try ClusterSecret(text: String(decoding: data, as: UTF8.self), origin: path)
    }

    /// Creates a secret file with 32 random bytes in hex, mode 0600, parents 0700.
    static func create(at path: String) throws -> ClusterSecret {
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let text = Hex.encode(randomBytes(32)) + "\n"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else {
            throw SecretError(message: "cannot create the secret file \(path): \(String(cString: strerror(errno))); give --secret-file or PP_SECRET")
        }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else {
            throw SecretError(message: "cannot write the secret file \(path): \(String(cString: strerror(errno)))")
        }
        return try ClusterSecret(text: text, origin: path)
    }
}

/// Cryptographically random bytes from OpenSSL.
public func randomBytes(_ count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    precondition(RAND_bytes(&out, Int32(count)) == 1, "OpenSSL RAND_bytes failed")
    return out
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

    public var description: String { self.message }
}
