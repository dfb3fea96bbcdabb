public import NIOCore

// SUBMIT (0x10), client → node: a batch of jobs.
// count u32 · count × job
// job = id u64 · digest(32) · timeout ms u32 (0: none; bit 31: the arguments are opaque
//       bytes; bit 30: blob references follow) · argsLen u32 · args
//       [· refCount u16 · refCount × (position u16 · digest(32))]   (bit 30 only)
// A reference is a large argument sent by digest (BLOB, asked for by NEED_BLOB), put
// back into the argument list at its position; positions rise strictly. With bit 31
// the argument list is the opaque bytes as one `bytes` argument (none when empty) and
// each blob, as bytes, at its position.
// A job takes at least 48 bytes, so a count is checked against the body before anything
// is reserved for it.

/// One job as SUBMIT carries it.
public struct WireJob: Sendable {
    /// The client's job id.
    public var id: UInt64
    /// The bundle's digest.
    public var digest: SHA256Digest
    /// Timeout in milliseconds, 0 for none.
    public var timeoutMilliseconds: UInt32
    /// The JSON array of arguments, or opaque bytes.
    public var arguments: JobArguments

    /// Bit 31 of a job's timeout field on the wire: its arguments are opaque bytes.
    public static let opaqueFlag: UInt32 = 1 << 31
    /// Bit 30 of a job's timeout field on the wire: blob references follow the arguments.
    public static let blobsFlag: UInt32 = 1 << 30
    /// The longest timeout the wire carries (bits 31 and 30 are flags): about 12.4 days.
    public static let maxTimeout: UInt32 = (1 << 30) - 1
    /// The fewest bytes a job takes in a SUBMIT body (empty arguments).
    public static let minimumSize = 8 + 32 + 4 + 4

    /// Creates a job.
    public init(id: UInt64, digest: SHA256Digest, timeoutMilliseconds: UInt32, arguments: JobArguments) {
        self.id = id
        self.digest = digest
        self.timeoutMilliseconds = timeoutMilliseconds
        self.arguments = arguments
    }
}

extension NodeMessage {
    static func writeSubmit(_ jobs: [WireJob], to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(jobs.count))
        for job in jobs { Self.writeJob(job, to: &buffer) }
    }

    /// Appends one job of a SUBMIT body (a client that writes its own SUBMIT header
    /// batches jobs with this).
    public static func writeJob(_ job: WireJob, to buffer: inout ByteBuffer) {
        buffer.writeInteger(job.id)
        buffer.writeBytes(job.digest.bytes)
        // Bit 31 of the timeout field: the arguments are opaque bytes, not JSON.
        let blobs = job.arguments.blobs
        let flags = (job.arguments.isOpaque ? WireJob.opaqueFlag : 0) | (blobs.isEmpty ? 0 : WireJob.blobsFlag)
        buffer.writeInteger(min(job.timeoutMilliseconds, WireJob.maxTimeout) | flags)
        buffer.writeInteger(UInt32(job.arguments.json.count))
        buffer.writeBytes(job.arguments.json)
        guard !blobs.isEmpty else { return }
        buffer.writeInteger(UInt16(blobs.count))
        for blob in blobs {
            buffer.writeInteger(UInt16(blob.position))
            buffer.writeBytes(blob.digest.bytes)
        }
    }

    static func readSubmit(_ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        .submit(
            try reader.items("job", minimumItemSize: WireJob.minimumSize) { reader throws(NodeFrameError) in
                let id = try reader.integer("job id", as: UInt64.self)
                let digest = try reader.digest()
                let timeout = try reader.integer("timeout", as: UInt32.self)
                let arguments = try reader.lengthPrefixed("argument")
                let opaque = timeout & WireJob.opaqueFlag != 0
                var blobs: [ArgumentBlob] = []
                if timeout & WireJob.blobsFlag != 0 {
                    let count = try reader.integer("blob count", as: UInt16.self)
                    for _ in 0..<count {
                        let position = Int(try reader.integer("blob position", as: UInt16.self))
                        guard position > blobs.last?.position ?? -1 else { throw reader.error("blob position", .invalid("\(position) does not follow \(blobs.last!.position)")) }
                        blobs.append(ArgumentBlob(position: position, digest: try reader.digest("blob digest"), bytes: []))
                    }
                }
                return WireJob(
                    id: id, digest: digest, timeoutMilliseconds: timeout & WireJob.maxTimeout,
                    arguments: JobArguments(json: arguments, isOpaque: opaque, blobs: blobs)
                )
            }
        )
    }
}
