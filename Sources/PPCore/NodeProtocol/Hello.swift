import NIOCore

// HELLO (0x01), client → node, the first frame inside TLS:
// "PPNP"(4) · minVersion u16 · maxVersion u16 · maxFrame u32 · client name *short*

extension NodeMessage {
    static func writeHello(minVersion: UInt16, maxVersion: UInt16, maxFrame: UInt32, name: String, to buffer: inout ByteBuffer) {
        buffer.writeBytes(NodeProtocol.magic)
        buffer.writeInteger(minVersion)
        buffer.writeInteger(maxVersion)
        buffer.writeInteger(maxFrame)
        // A short string: at most 255 bytes of the name.
        let name = Array(name.utf8.prefix(255))
        buffer.writeInteger(UInt8(name.count))
        buffer.writeBytes(name)
    }

    static func readHello(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        let magic = try reader.bytes("magic", count: 4)
        guard magic == NodeProtocol.magic else { throw reader.error("magic", .badMagic(magic)) }
        let minVersion = try reader.integer("minimum version", as: UInt16.self)
        let maxVersion = try reader.integer("maximum version", as: UInt16.self)
        let maxFrame = try reader.integer("max frame", as: UInt32.self)
        let name = String(decoding: try reader.lengthPrefixed("client name", length: UInt8.self), as: UTF8.self)
        try reader.end()
        return .hello(minVersion: minVersion, maxVersion: maxVersion, maxFrame: maxFrame, name: name)
    }
}
