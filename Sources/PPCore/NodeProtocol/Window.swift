import NIOCore

// WINDOW (0x22), node → client: the most jobs the client may have at the node from now
// on (0 while draining).
// window u32

extension NodeMessage {
    static func writeWindow(_ window: UInt32, to buffer: inout ByteBuffer) {
        buffer.writeInteger(window)
    }

    static func readWindow(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        let window = try reader.integer("window", as: UInt32.self)
        try reader.end()
        return .window(window)
    }
}
