import NIOCore

// BUNDLE (0x11), client → node, the answer to NEED:
// digest(32) · spec JSON (the rest; its SHA-256 must be the digest, which the node checks)

extension NodeMessage {
    static func writeBundle(digest: SHA256Digest, spec: [UInt8], to buffer: inout ByteBuffer) {
        buffer.writeBytes(digest.bytes)
        buffer.writeBytes(spec)
    }

    static func readBundle(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        let digest = try reader.digest()
        return .bundle(digest: digest, spec: reader.rest())
    }
}
