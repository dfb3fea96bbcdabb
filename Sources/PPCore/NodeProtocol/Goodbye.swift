import NIOCore

// GOODBYE (0x16), either way: the sender is leaving (a node: draining).
// reason (UTF-8, the whole body)

extension NodeMessage {
    static func writeGoodbye(reason: String, to buffer: inout ByteBuffer) {
        buffer.writeString(reason)
    }

    static func readGoodbye(_ reader: inout NodeFrameReader) -> NodeMessage {
        .goodbye(reason: reader.restText())
    }
}
