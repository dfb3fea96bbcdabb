import NIOCore

// ERROR (0x05), either way; the sender closes the connection after it:
// code u16 (`NodeErrorCode`) · message (UTF-8, the rest)

extension NodeMessage {
    static func writeError(code: UInt16, message: String, to buffer: inout ByteBuffer) {
        buffer.writeInteger(code)
        buffer.writeString(message)
    }

    static func readError(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        let code = try reader.integer("code", as: UInt16.self)
        return .error(code: code, message: reader.restText())
    }
}
