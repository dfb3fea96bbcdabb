public import NIOCore

/// The native wire protocol between clients and `ppnode`, described byte by byte in
/// docs/PROTOCOL.md. It runs inside TLS 1.3 keyed by the cluster secret (PPTLS): the
/// first frame is sent only after both sides proved they hold the key. Every frame:
/// u32 length N (of type + body), u8 type, body.
public enum NodeProtocol {
    /// The protocol version this build speaks. Version 2 runs inside TLS; version 1
    /// (plaintext, HMAC challenge) is no longer spoken.
    public static let version: UInt16 = 2
    /// The lowest version this build accepts.
    public static let minimumVersion: UInt16 = 2
    /// The four bytes that open every HELLO.
    public static let magic: [UInt8] = Array("PPNP".utf8)
    /// The default maximum frame size: 64 MiB.
    public static let defaultMaxFrame = 64 << 20
    /// The smallest and largest maximum frame a node or client may be configured with.
    public static let maxFrameRange = (64 << 10)...(1 << 30)
    /// The largest frame accepted before the peer's HELLO (or WELCOME) has been read.
    public static let preambleMaxFrame = 4096
    /// The default TCP port of ppnode.
    public static let defaultPort = 7340
    /// Frame types (docs/PROTOCOL.md describes each).
    public enum Kind: UInt8, Sendable {
        // 0x02 and 0x03 were CHALLENGE and AUTH in version 1.
        case hello = 0x01, welcome = 0x04, error = 0x05
        case submit = 0x10, bundle = 0x11, cancel = 0x12, ping = 0x13, pong = 0x14, statsRequest = 0x15, goodbye = 0x16, stop = 0x17
        case results = 0x20, need = 0x21, window = 0x22, stats = 0x23
    }
}

/// Error codes carried by ERROR frames.
public enum NodeErrorCode: UInt16, Sendable {
    /// Version 1 only (the key is now checked by TLS).
    case authenticationFailed = 1
    /// The protocol versions of the peers do not overlap.
    case versionMismatch = 2
    /// A frame that is malformed, unknown, or out of order.
    case protocolViolation = 3
    /// A length prefix above the receiver's maximum.
    case frameTooLarge = 4
    /// No TLS handshake and HELLO in time.
    case handshakeTimeout = 5
    /// More jobs in flight than the window allows.
    case overCredit = 6
    /// The node is shutting down.
    case shuttingDown = 7
}

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
    /// The longest timeout the wire carries (bit 31 is the flag): about 24.8 days.
    public static let maxTimeout: UInt32 = (1 << 31) - 1

    /// Creates a job.
    public init(id: UInt64, digest: SHA256Digest, timeoutMilliseconds: UInt32, arguments: JobArguments) {
        self.id = id
        self.digest = digest
        self.timeoutMilliseconds = timeoutMilliseconds
        self.arguments = arguments
    }
}

/// A decoded frame of the native protocol.
public enum NodeMessage: Sendable {
    /// Client → node, first (inside TLS): versions spoken, the largest frame the client
    /// accepts, the client's name.
    case hello(minVersion: UInt16, maxVersion: UInt16, maxFrame: UInt32, name: String)
    /// Node → client: the chosen version, the initial job window, the node's frame
    /// limit and its info JSON (the beacon object).
    case welcome(version: UInt16, window: UInt32, maxFrame: UInt32, info: [UInt8])
    /// Either way: a fatal error (`NodeErrorCode`) and its message; the sender closes.
    case error(code: UInt16, message: String)
    /// Client → node: a batch of jobs.
    case submit([WireJob])
    /// Client → node: a function bundle the node asked for.
    case bundle(digest: SHA256Digest, spec: [UInt8])
    /// Client → node: cancel a job that has not started.
    case cancel(id: UInt64)
    /// Client → node: stop a job, queued or running (its worker is killed and replaced);
    /// it ends with status 7, cancelled.
    case stop(id: UInt64)
    /// Either way: a heartbeat; answer with `pong`.
    case ping(UInt64)
    /// Either way: the answer to `ping`.
    case pong(UInt64)
    /// Client → node: ask for the node's counters.
    case statsRequest(UInt64)
    /// Either way: the sender is leaving (a node: draining).
    case goodbye(reason: String)
    /// Node → client: a batch of results.
    case results([JobResult])
    /// Node → client: send the bundle with this digest.
    case need(SHA256Digest)
    /// Node → client: the new job window.
    case window(UInt32)
    /// Node → client: the counters asked for by `statsRequest`.
    case stats(token: UInt64, json: [UInt8])
}

/// A frame that breaks the native protocol.
public struct NodeProtocolError: Error, Sendable, CustomStringConvertible {
    /// The error code an ERROR frame would carry.
    public var code: NodeErrorCode
    /// What was wrong.
    public var message: String

    /// Creates an error.
    public init(_ code: NodeErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { self.message }
}

// MARK: - Encoding

extension NodeMessage {
    /// Appends this message as one frame.
    public func write(to buffer: inout ByteBuffer) {
        let start = buffer.writerIndex
        buffer.writeInteger(UInt32(0))
        switch self {
        case .hello(let minV, let maxV, let maxFrame, let name):
            buffer.writeInteger(NodeProtocol.Kind.hello.rawValue)
            buffer.writeBytes(NodeProtocol.magic)
            buffer.writeInteger(minV)
            buffer.writeInteger(maxV)
            buffer.writeInteger(maxFrame)
            buffer.writeShortString(name)
        case .welcome(let version, let window, let maxFrame, let info):
            buffer.writeInteger(NodeProtocol.Kind.welcome.rawValue)
            buffer.writeInteger(version)
            buffer.writeInteger(window)
            buffer.writeInteger(maxFrame)
            buffer.writeBytes(info)
        case .error(let code, let message):
            buffer.writeInteger(NodeProtocol.Kind.error.rawValue)
            buffer.writeInteger(code)
            buffer.writeString(message)
        case .submit(let jobs):
            buffer.writeInteger(NodeProtocol.Kind.submit.rawValue)
            buffer.writeInteger(UInt32(jobs.count))
            for job in jobs { Self.writeJob(job, to: &buffer) }
        case .bundle(let digest, let spec):
            buffer.writeInteger(NodeProtocol.Kind.bundle.rawValue)
            buffer.writeBytes(digest.bytes)
            buffer.writeBytes(spec)
        case .cancel(let id):
            buffer.writeInteger(NodeProtocol.Kind.cancel.rawValue)
            buffer.writeInteger(id)
        case .stop(let id):
            buffer.writeInteger(NodeProtocol.Kind.stop.rawValue)
            buffer.writeInteger(id)
        case .ping(let token):
            buffer.writeInteger(NodeProtocol.Kind.ping.rawValue)
            buffer.writeInteger(token)
        case .pong(let token):
            buffer.writeInteger(NodeProtocol.Kind.pong.rawValue)
            buffer.writeInteger(token)
        case .statsRequest(let token):
            buffer.writeInteger(NodeProtocol.Kind.statsRequest.rawValue)
            buffer.writeInteger(token)
        case .goodbye(let reason):
            buffer.writeInteger(NodeProtocol.Kind.goodbye.rawValue)
            buffer.writeString(reason)
        case .results(let results):
            buffer.writeInteger(NodeProtocol.Kind.results.rawValue)
            buffer.writeInteger(UInt32(results.count))
            for r in results { Self.writeResult(r, to: &buffer) }
        case .need(let digest):
            buffer.writeInteger(NodeProtocol.Kind.need.rawValue)
            buffer.writeBytes(digest.bytes)
        case .window(let window):
            buffer.writeInteger(NodeProtocol.Kind.window.rawValue)
            buffer.writeInteger(window)
        case .stats(let token, let json):
            buffer.writeInteger(NodeProtocol.Kind.stats.rawValue)
            buffer.writeInteger(token)
            buffer.writeBytes(json)
        }
        buffer.setInteger(UInt32(buffer.writerIndex - start - 4), at: start)
    }

    /// Appends one job of a SUBMIT body.
    public static func writeJob(_ job: WireJob, to buffer: inout ByteBuffer) {
        buffer.writeInteger(job.id)
        buffer.writeBytes(job.digest.bytes)
        // Bit 31 of the timeout field: the arguments are opaque bytes, not JSON.
        buffer.writeInteger(min(job.timeoutMilliseconds, WireJob.maxTimeout) | (job.arguments.isOpaque ? WireJob.opaqueFlag : 0))
        buffer.writeInteger(UInt32(job.arguments.json.count))
        buffer.writeBytes(job.arguments.json)
    }

    /// The bytes a RESULTS frame takes besides its results: length, type, count.
    public static let resultFrameOverhead = 9

    /// Appends `results` as as many RESULTS frames as needed so that none is larger
    /// than `maxFrame` (each result alone must fit: see `JobResult.encodedSize`).
    public static func writeResults(_ results: [JobResult], maxFrame: Int, to buffer: inout ByteBuffer) {
        var index = 0
        while index < results.count {
            let start = buffer.writerIndex
            buffer.writeInteger(UInt32(0))
            buffer.writeInteger(NodeProtocol.Kind.results.rawValue)
            let countAt = buffer.writerIndex
            buffer.writeInteger(UInt32(0))
            var size = Self.resultFrameOverhead
            var count: UInt32 = 0
            while index < results.count {
                let next = results[index].encodedSize
                if count > 0, size + next > maxFrame { break }
                Self.writeResult(results[index], to: &buffer)
                size += next
                count += 1
                index += 1
            }
            buffer.setInteger(count, at: countAt)
            buffer.setInteger(UInt32(buffer.writerIndex - start - 4), at: start)
        }
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
}

extension ByteBuffer {
    mutating func writeShortString(_ s: String) {
        let bytes = Array(s.utf8.prefix(255))
        self.writeInteger(UInt8(bytes.count))
        self.writeBytes(bytes)
    }

    mutating func readShortString() -> String? {
        guard let n = self.readInteger(as: UInt8.self), let bytes = self.readBytes(length: Int(n)) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }
}

// MARK: - Decoding

/// Decodes native-protocol frames. It checks the length prefix against `maxFrame`
/// before reading (or allocating) the body, and turns malformed bodies into
/// `NodeProtocolError`.
public struct NodeMessageDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = NodeMessage

    /// The limit, shared with the handler that raises it once the peer's first frame
    /// has been read (until then it is `NodeProtocol.preambleMaxFrame`).
    public let limit: FrameLimit

    /// The largest frame accepted now.
    public var maxFrame: Int { self.limit.value }

    /// Creates a decoder with a fixed limit.
    public init(maxFrame: Int = NodeProtocol.defaultMaxFrame) {
        self.limit = FrameLimit(maxFrame)
    }

    /// Creates a decoder whose limit `limit`'s owner may change.
    public init(limit: FrameLimit) {
        self.limit = limit
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> NodeMessage? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= 1 else { throw NodeProtocolError(.protocolViolation, "empty frame") }
        guard Int(length) <= self.maxFrame else {
            throw NodeProtocolError(.frameTooLarge, "frame of \(length) bytes is larger than the limit of \(self.maxFrame)")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        var body = buffer.readSlice(length: Int(length))!
        let rawKind = body.readInteger(as: UInt8.self)!
        guard let kind = NodeProtocol.Kind(rawValue: rawKind) else {
            throw NodeProtocolError(.protocolViolation, "unknown frame type 0x\(String(rawKind, radix: 16))")
        }
        guard let message = Self.decodeBody(kind, &body) else {
            throw NodeProtocolError(.protocolViolation, "malformed \(kind) frame")
        }
        return message
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> NodeMessage? {
        try self.decode(buffer: &buffer)
    }

    static func decodeBody(_ kind: NodeProtocol.Kind, _ body: inout ByteBuffer) -> NodeMessage? {
        switch kind {
        case .hello:
            guard body.readBytes(length: 4) == NodeProtocol.magic,
                let minV = body.readInteger(as: UInt16.self), let maxV = body.readInteger(as: UInt16.self),
                let maxFrame = body.readInteger(as: UInt32.self),
                let name = body.readShortString(), body.readableBytes == 0
            else { return nil }
            return .hello(minVersion: minV, maxVersion: maxV, maxFrame: maxFrame, name: name)
        case .welcome:
            guard let version = body.readInteger(as: UInt16.self), let w = body.readInteger(as: UInt32.self),
                let m = body.readInteger(as: UInt32.self)
            else { return nil }
            return .welcome(version: version, window: w, maxFrame: m, info: Array(body.readableBytesView))
        case .error:
            guard let code = body.readInteger(as: UInt16.self) else { return nil }
            return .error(code: code, message: String(buffer: body))
        case .submit:
            guard let count = body.readInteger(as: UInt32.self) else { return nil }
            // Each job takes at least 48 bytes: a count that cannot fit is refused before
            // anything is reserved for it.
            guard Int(count) <= body.readableBytes / 48 else { return nil }
            var jobs = [WireJob]()
            jobs.reserveCapacity(Int(count))
            for _ in 0..<count {
                guard let id = body.readInteger(as: UInt64.self), let d = body.readBytes(length: 32),
                    let t = body.readInteger(as: UInt32.self), let n = body.readInteger(as: UInt32.self),
                    Int(n) <= body.readableBytes, let args = body.readBytes(length: Int(n))
                else { return nil }
                let opaque = t & WireJob.opaqueFlag != 0
                jobs.append(
                    WireJob(
                        id: id, digest: SHA256Digest(bytes: d)!, timeoutMilliseconds: t & WireJob.maxTimeout,
                        arguments: opaque ? JobArguments(opaque: args) : JobArguments(jsonArray: args)
                    )
                )
            }
            guard body.readableBytes == 0 else { return nil }
            return .submit(jobs)
        case .bundle:
            guard let d = body.readBytes(length: 32) else { return nil }
            return .bundle(digest: SHA256Digest(bytes: d)!, spec: Array(body.readableBytesView))
        case .cancel:
            guard let id = body.readInteger(as: UInt64.self) else { return nil }
            return .cancel(id: id)
        case .stop:
            guard let id = body.readInteger(as: UInt64.self), body.readableBytes == 0 else { return nil }
            return .stop(id: id)
        case .ping:
            return body.readInteger(as: UInt64.self).map { .ping($0) }
        case .pong:
            return body.readInteger(as: UInt64.self).map { .pong($0) }
        case .statsRequest:
            return body.readInteger(as: UInt64.self).map { .statsRequest($0) }
        case .goodbye:
            return .goodbye(reason: String(buffer: body))
        case .results:
            guard let count = body.readInteger(as: UInt32.self), Int(count) <= body.readableBytes / 29 else { return nil }
            var results = [JobResult]()
            results.reserveCapacity(Int(count))
            for _ in 0..<count {
                guard let id = body.readInteger(as: UInt64.self), let status = body.readInteger(as: UInt8.self),
                    let ns = body.readInteger(as: UInt64.self),
                    let out = body.readLengthPrefixed(), let err = body.readLengthPrefixed(), let payload = body.readLengthPrefixed()
                else { return nil }
                results.append(
                    JobResult(
                        id: id, code: status == 0 ? nil : JobError.Code(wireStatus: status), nanoseconds: ns,
                        stdout: out, stderr: err, payload: payload, executor: ""
                    )
                )
            }
            guard body.readableBytes == 0 else { return nil }
            return .results(results)
        case .need:
            guard let d = body.readBytes(length: 32) else { return nil }
            return .need(SHA256Digest(bytes: d)!)
        case .window:
            return body.readInteger(as: UInt32.self).map { .window($0) }
        case .stats:
            guard let token = body.readInteger(as: UInt64.self) else { return nil }
            return .stats(token: token, json: Array(body.readableBytesView))
        }
    }
}

/// A frame size limit that a session raises after the handshake, read by its decoder.
///
/// `@unchecked Sendable` is safe because the decoder and the session that share it
/// run on the same channel's event loop.
public final class FrameLimit: @unchecked Sendable {
    /// The largest frame accepted now.
    public var value: Int

    /// Creates a limit.
    public init(_ value: Int) {
        self.value = value
    }
}

extension ByteBuffer {
    mutating func readLengthPrefixed() -> [UInt8]? {
        guard let n = self.readInteger(as: UInt32.self), Int(n) <= self.readableBytes else { return nil }
        return self.readBytes(length: Int(n))
    }
}

// MARK: - Result status on the wire

extension JobError.Code {
    /// The status byte RESULTS uses for this code.
    public var wireStatus: UInt8 {
        switch self {
        case .pythonException: 1
        case .resultNotJSON: 2
        case .functionUnavailable: 3
        case .badArguments: 4
        case .timeout: 5
        case .workerDied: 6
        case .cancelled: 7
        case .shutdown: 8
        case .resultTooLarge: 10
        default: 9
        }
    }

    /// The code for a RESULTS status byte (never called with 0, which means success).
    public init(wireStatus: UInt8) {
        switch wireStatus {
        case 1: self = .pythonException
        case 2: self = .resultNotJSON
        case 3: self = .functionUnavailable
        case 4: self = .badArguments
        case 5: self = .timeout
        case 6: self = .workerDied
        case 7: self = .cancelled
        case 8: self = .shutdown
        case 10: self = .resultTooLarge
        default: self = .protocolError
        }
    }
}
