import NIOCore

// BLOB (0x18), client → node, the answer to NEED_BLOB:
// digest(32) · bytes (the rest; their SHA-256 must be the digest, which the node checks)
//
// NEED_BLOB (0x24), node → client: send the large argument with this digest (once per
// digest while jobs wait for it).
// digest(32)

extension NodeMessage {
    static func writeBlob(digest: SHA256Digest, bytes: [UInt8], to buffer: inout ByteBuffer) {
        buffer.writeBytes(digest.bytes)
        buffer.writeBytes(bytes)
    }

    static func readBlob(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        let digest = try reader.digest()
        return .blob(digest: digest, bytes: reader.rest())
    }

    static func readNeedBlob(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        let digest = try reader.digest()
        try reader.end()
        return .needBlob(digest)
    }
}
