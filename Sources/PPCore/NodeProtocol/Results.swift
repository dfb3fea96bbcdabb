public import NIOCore

// RESULTS (0x20), node → client: a batch of results.
// count u32 · count × result
// result = id u64 · status u8 · ns u64 · outLen u32 · stdout · errLen u32 · stderr ·
//          payloadLen u32 · payload
// A result takes at least 29 bytes (`JobResult.encodedSize` counts them).

extension NodeMessage {
    /// The bytes a RESULTS frame takes besides its results: length, type, count.
    public static let resultFrameOverhead = 9
    /// The fewest bytes a result takes in a RESULTS body (no output, empty payload).
    static let minimumResultSize = 29

    static func writeResultsBody(_ results: [JobResult], to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(results.count))
        for r in results { Self.writeResult(r, to: &buffer) }
    }

    /// Appends `results` as as many RESULTS frames as needed so that none is larger
    /// than `maxFrame` (each result alone must fit: see `JobResult.encodedSize`).
    public static func writeResults(_ results: [JobResult], maxFrame: Int, to buffer: inout ByteBuffer) {
        var batch: [JobResult] = [], size = Self.resultFrameOverhead
        for r in results {
            if !batch.isEmpty, size + r.encodedSize > maxFrame {
                NodeMessage.results(batch).write(to: &buffer)
                (batch, size) = ([], Self.resultFrameOverhead)
            }
            batch.append(r)
            size += r.encodedSize
        }
        if !batch.isEmpty { NodeMessage.results(batch).write(to: &buffer) }
    }

    /// Appends one result of a RESULTS body.
    public static func writeResult(_ r: JobResult, to buffer: inout ByteBuffer) {
        buffer.writeInteger(r.id)
        buffer.writeInteger(r.code?.wireStatus ?? 0)
        buffer.writeInteger(r.nanoseconds)
        buffer.writeInteger(UInt32(r.stdout.count))
        buffer.writeBytes(r.stdout)
        buffer.writeInteger(UInt32(r.stderr.count))
        buffer.writeBytes(r.stderr)
        buffer.writeInteger(UInt32(r.payload.count))
        buffer.writeBytes(r.payload)
    }

    static func readResults(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        .results(
            try reader.items("result", minimumItemSize: Self.minimumResultSize) { reader throws(NodeFrameError) in
                let id = try reader.integer("job id", as: UInt64.self)
                let status = try reader.integer("status", as: UInt8.self)
                let nanoseconds = try reader.integer("run time", as: UInt64.self)
                let stdout = try reader.lengthPrefixed("stdout")
                let stderr = try reader.lengthPrefixed("stderr")
                let payload = try reader.lengthPrefixed("payload")
                return JobResult(
                    id: id, code: status == 0 ? nil : JobError.Code(wireStatus: status), nanoseconds: nanoseconds,
                    stdout: stdout, stderr: stderr, payload: payload, executor: ""
                )
            }
        )
    }
}

// MARK: - Result status on the wire

extension JobError.Code {
    /// The RESULTS status byte of each code, both ways. Every other code (`nodeLost`,
    /// `noExecutor`) goes out as 9, and an unknown byte reads as `protocolError`.
    private static let wireStatuses: [(code: Self, status: UInt8)] = [
        (.pythonException, 1), (.resultNotJSON, 2), (.functionUnavailable, 3), (.badArguments, 4), (.timeout, 5),
        (.workerDied, 6), (.cancelled, 7), (.shutdown, 8), (.protocolError, 9), (.resultTooLarge, 10),
    ]

    /// The status byte RESULTS uses for this code.
    public var wireStatus: UInt8 { Self.wireStatuses.first { $0.code == self }?.status ?? 9 }

    /// The code for a RESULTS status byte (never called with 0, which means success).
    public init(wireStatus: UInt8) {
        self = Self.wireStatuses.first { $0.status == wireStatus }?.code ?? .protocolError
    }
}
