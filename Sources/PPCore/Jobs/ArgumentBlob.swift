internal import Foundation  // memcmp

/// One large argument that travels by its SHA-256 instead of inline: to a node once
/// per node (BLOB, asked for by NEED_BLOB), to a worker once per worker (`L` frame).
/// `JobArguments.blobs` lists them; each is put back into the argument list at its
/// position (an opaque blob is the whole opaque bytes).
public struct ArgumentBlob: Sendable, Hashable {
    /// The index of the argument in the call's argument list (0 for opaque bytes).
    public var position: Int
    /// SHA-256 of `bytes`: the blob's name on the wire and in caches.
    public var digest: SHA256Digest
    /// The argument's JSON text (or the opaque bytes). Empty in a job decoded from
    /// SUBMIT until the node fills it in from its cache or a BLOB frame.
    public var bytes: [UInt8]

    /// Creates a blob.
    public init(position: Int, digest: SHA256Digest, bytes: [UInt8]) {
        self.position = position
        self.digest = digest
        self.bytes = bytes
    }

    /// Blobs are the same argument when their positions and digests are.
    public static func == (a: ArgumentBlob, b: ArgumentBlob) -> Bool { a.position == b.position && a.digest == b.digest }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.position)
        hasher.combine(self.digest)
    }
}

/// Hashes large arguments, remembering the last one: jobs that share an argument
/// (the common case) are hashed once, then only compared (`memcmp`), and share one
/// copy of its bytes.
public struct BlobDigester: Sendable {
    private var last: (bytes: [UInt8], digest: SHA256Digest)?

    /// Creates a digester that remembers nothing yet.
    public init() {}

    /// The bytes (the remembered copy when equal to the last ones) and their digest.
    public mutating func digest(_ bytes: [UInt8]) -> (bytes: [UInt8], digest: SHA256Digest) {
        if let last = self.last, last.bytes.count == bytes.count,
            last.bytes.withUnsafeBytes({ a in bytes.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } })
        {
            return last
        }
        let entry = (bytes, SHA256Digest(hashing: bytes))
        self.last = entry
        return entry
    }
}
