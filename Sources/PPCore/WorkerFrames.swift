internal import Foundation  // JSONSerialization: the error JSON
public import NIOCore

/// The frames between the Swift pool and a Python worker process (stdin/stdout).
///
/// Every frame is a 4-byte big-endian length `N`, then `N` bytes: a type byte and the
/// body. docs/WORKER-PROTOCOL.md gives the layout of every body.
public enum WorkerFrame {
    /// The largest frame either side accepts: 1 GiB, the same as the worker's limit.
    public static let maxFrameLength = 1 << 30

    /// Appends a "load bundle" frame (`B`).
    public static func writeBundle(_ bundle: FunctionBundle, to buffer: inout ByteBuffer) {
        self.write("B", bundle.digest, bundle.spec, to: &buffer)
    }

    /// Appends a "drop bundle" frame (`D`).
    public static func writeDrop(_ digest: SHA256Digest, to buffer: inout ByteBuffer) {
        self.write("D", digest, [], to: &buffer)
    }

    /// Appends a "load blob" frame (`L`): a large argument the worker keeps by digest.
    public static func writeBlob(_ blob: ArgumentBlob, to buffer: inout ByteBuffer) {
        self.write("L", blob.digest, blob.bytes, to: &buffer)
    }

    /// Appends a "drop blob" frame (`K`).
    public static func writeDropBlob(_ digest: SHA256Digest, to buffer: inout ByteBuffer) {
        self.write("K", digest, [], to: &buffer)
    }

    /// Appends a frame of `kind` whose body is a digest and then `body`.
    private static func write(_ kind: Unicode.Scalar, _ digest: SHA256Digest, _ body: [UInt8], to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(1 + 32 + body.count))
        buffer.writeInteger(UInt8(ascii: kind))
        buffer.writeBytes(digest.bytes)
        buffer.writeBytes(body)
    }

    /// Appends a "run job" frame (`J`, `O`, or `P` when arguments are blobs).
    public static func writeJob(id: UInt64, bundle: SHA256Digest, arguments: JobArguments, to buffer: inout ByteBuffer) {
        let blobs = arguments.blobs
        // 'P' adds, before the args: flags(1: bit 0 opaque) · count u16 · count × (position u16 · digest).
        let references = blobs.isEmpty ? 0 : 1 + 2 + 34 * blobs.count
        buffer.writeInteger(UInt32(1 + 8 + 32 + references + arguments.json.count))
        // 'O': the same job with opaque bytes instead of a JSON array.
        buffer.writeInteger(UInt8(ascii: !blobs.isEmpty ? "P" : arguments.isOpaque ? "O" : "J"))
        buffer.writeInteger(id)
        buffer.writeBytes(bundle.bytes)
        if !blobs.isEmpty {
            buffer.writeInteger(UInt8(arguments.isOpaque ? 1 : 0))
            buffer.writeInteger(UInt16(blobs.count))
            for blob in blobs {
                buffer.writeInteger(UInt16(blob.position))
                buffer.writeBytes(blob.digest.bytes)
            }
        }
        buffer.writeBytes(arguments.json)
    }

    /// Appends a "run jobs" frame (`M`): consecutive jobs of one bundle, all with JSON
    /// arguments or all opaque, none with blobs. The worker runs them in order and
    /// answers each with its own `R` frame. Every job's id and length come first, then
    /// the arguments back to back, so that the worker parses them from one string.
    public static func writeBatch(_ jobs: some Collection<Job>, bundle: SHA256Digest, opaque: Bool, to buffer: inout ByteBuffer) {
        let lengthIndex = buffer.writerIndex
        buffer.writeInteger(UInt32(0))
        buffer.writeInteger(UInt8(ascii: "M"))
        buffer.writeBytes(bundle.bytes)
        buffer.writeInteger(UInt8(opaque ? 1 : 0))
        buffer.writeInteger(UInt32(jobs.count))
        for job in jobs {
            buffer.writeInteger(job.id)
            buffer.writeInteger(UInt32(job.arguments.json.count))
        }
        for job in jobs {
            buffer.writeBytes(job.arguments.json)
        }
        buffer.setInteger(UInt32(buffer.writerIndex - lengthIndex - 4), at: lengthIndex)
    }

    /// Appends a "check bundle" frame (`C`): the worker answers whether the bundle loaded.
    public static func writeCheck(id: UInt64, bundle: SHA256Digest, to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(1 + 8 + 32))
        buffer.writeInteger(UInt8(ascii: "C"))
        buffer.writeInteger(id)
        buffer.writeBytes(bundle.bytes)
    }
}

/// A message from a worker process.
public enum WorkerMessage: Sendable {
    /// Sent once at start: JSON with `pid`, `python`, `implementation`, `executable`.
    case hello(ByteBuffer)
    /// One job's result (its status byte is a RESULTS status: 0 to 4; its executor
    /// is empty until the pool sets it).
    case result(JobResult)
    /// The answer to a check: `nil` when the bundle loaded, else its error JSON.
    case checkReply(id: UInt64, error: ByteBuffer?)
    /// The worker runs no more jobs and exits (after a MemoryError, for example).
    case retiring(reason: UInt8)
}

/// A frame from a worker that breaks the worker protocol.
public struct WorkerProtocolError: Error, Sendable, CustomStringConvertible {
    /// What was wrong.
    public var message: String

    public var description: String { "worker protocol error: \(self.message)" }
}

/// Decodes worker frames; checks the length before reading the body.
public struct WorkerMessageDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = WorkerMessage

    /// Creates a decoder.
    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws -> WorkerMessage? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= 1, Int(length) <= WorkerFrame.maxFrameLength else {
            throw WorkerProtocolError(message: "frame length \(length) outside 1...\(WorkerFrame.maxFrameLength)")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        var body = buffer.readSlice(length: Int(length))!
        let kind = body.readInteger(as: UInt8.self)!
        switch kind {
        case UInt8(ascii: "R"):
            guard let id = body.readInteger(as: UInt64.self),
                let rawStatus = body.readInteger(as: UInt8.self),
                let ns = body.readInteger(as: UInt64.self),
                let outLen = body.readInteger(as: UInt32.self),
                let out = body.readSlice(length: Int(outLen)),
                let errLen = body.readInteger(as: UInt32.self),
                let err = body.readSlice(length: Int(errLen))
            else { throw WorkerProtocolError(message: "truncated result frame") }
            // The worker's statuses are the RESULTS statuses 0-4: ok, raised, result not
            // JSON, bundle error, bad arguments.
            guard rawStatus <= 4 else { throw WorkerProtocolError(message: "unknown result status \(rawStatus)") }
            return .result(
                JobResult(
                    id: id, code: rawStatus == 0 ? nil : JobError.Code(wireStatus: rawStatus), nanoseconds: ns,
                    stdout: Array(out.readableBytesView), stderr: Array(err.readableBytesView), payload: Array(body.readableBytesView), executor: ""
                )
            )
        case UInt8(ascii: "H"):
            return .hello(body)
        case UInt8(ascii: "C"):
            guard let id = body.readInteger(as: UInt64.self), let status = body.readInteger(as: UInt8.self) else {
                throw WorkerProtocolError(message: "truncated check reply")
            }
            return .checkReply(id: id, error: status == 0 ? nil : body)
        case UInt8(ascii: "X"):
            return .retiring(reason: body.readInteger(as: UInt8.self) ?? 0)
        default:
            throw WorkerProtocolError(message: "unknown frame type \(kind)")
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> WorkerMessage? {
        try self.decode(buffer: &buffer)
    }
}

extension JobError {
    /// The error as the JSON object workers and RESULTS frames carry.
    public var wireJSON: [UInt8] {
        var w = JSONWriter()
        w.raw("{\"type\":")
        w.string(self.pythonType ?? "")
        w.member("message", self.message)
        w.member("traceback", self.traceback)
        w.raw("}")
        return w.bytes
    }

    /// Builds an error from the error JSON `{"type","message","traceback"}` of a worker
    /// or a RESULTS frame; bytes that are not such an object become the message.
    public init(code: Code, wireJSON json: [UInt8]) {
        let object = try? JSONSerialization.jsonObject(with: Data(json)) as? [String: Any]
        let type = object?["type"] as? String
        self.init(
            code: code,
            message: object.map { $0["message"] as? String ?? "" } ?? String(decoding: json, as: UTF8.self),
            pythonType: type?.isEmpty == false ? type : nil,
            traceback: object?["traceback"] as? String ?? ""
        )
    }
}
