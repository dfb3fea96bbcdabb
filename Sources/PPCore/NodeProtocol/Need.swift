import NIOCore

// NEED (0x21), node → client: send the bundle with this digest (once per digest while
// jobs wait for it).
// digest(32)

extension NodeMessage {
    static func writeNeed(_ digest: SHA256Digest, to buffer: inout ByteBuffer) {
        buffer.writeBytes(digest.bytes)
    }

    static func readNeed(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        let digest = try reader.digest()
        try reader.end()
        return .need(digest)
    }
}
