import NIOCore

// WELCOME (0x04), node → client, the answer to HELLO:
// version u16 · window u32 · maxFrame u32 · info JSON (the rest: the node's beacon object)

extension NodeMessage {
    static func writeWelcome(version: UInt16, window: UInt32, maxFrame: UInt32, info: [UInt8], to buffer: inout ByteBuffer) {
        buffer.writeInteger(version)
        buffer.writeInteger(window)
        buffer.writeInteger(maxFrame)
        buffer.writeBytes(info)
    }

    static func readWelcome(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        let version = try reader.integer("version", as: UInt16.self)
        let window = try reader.integer("window", as: UInt32.self)
        let maxFrame = try reader.integer("max frame", as: UInt32.self)
        return .welcome(version: version, window: window, maxFrame: maxFrame, info: reader.rest())
    }
}
