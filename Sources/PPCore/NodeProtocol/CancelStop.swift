import NIOCore

// CANCEL (0x12), client → node: drop a job that has not started.
// STOP (0x17), client → node: stop a job, queued or running (its worker is killed).
// Both: job id u64

extension NodeMessage {
    static func writeJobID(_ id: UInt64, to buffer: inout ByteBuffer) {
        buffer.writeInteger(id)
    }

    /// Reads a CANCEL or STOP body.
    static func readJobID(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> UInt64 {
        let id = try reader.integer("job id", as: UInt64.self)
        try reader.end()
        return id
    }
}
