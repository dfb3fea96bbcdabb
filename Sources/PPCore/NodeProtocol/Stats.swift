import NIOCore

// STATS_REQUEST (0x15), client → node: token u64 (read and written as PING's body)
// STATS (0x23), node → client, the answer: token u64 · JSON (the rest: the counters)

extension NodeMessage {
    static func writeStats(token: UInt64, json: [UInt8], to buffer: inout ByteBuffer) {
        buffer.writeInteger(token)
        buffer.writeBytes(json)
    }

    static func readStats(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        let token = try reader.integer("token", as: UInt64.self)
        return .stats(token: token, json: reader.rest())
    }
}
