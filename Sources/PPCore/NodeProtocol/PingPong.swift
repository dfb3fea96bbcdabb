import NIOCore

// PING (0x13) and PONG (0x14), either way: a heartbeat and its answer, which carries the
// PING's token.
// token u64

extension NodeMessage {
    static func writeToken(_ token: UInt64, to buffer: inout ByteBuffer) {
        buffer.writeInteger(token)
    }

    /// Reads a body that is one token (PING, PONG, STATS_REQUEST).
    static func readToken(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> UInt64 {
        let token = try reader.integer("token", as: UInt64.self)
        try reader.end()
        return token
    }
}
