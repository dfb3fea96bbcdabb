import NIOCore
import NIOEmbedded
import NIOTestUtils
import PPCore
import Testing

/// The native protocol's decoder in a channel pipeline: every message in every
/// fragmentation, and bad frames turned into errors that name the frame and the field.
@Suite("Native protocol decoder")
struct NodeMessageDecoderTests {
    static let digest = SHA256Digest(hashing: Array("bundle".utf8))

    /// Arguments with two large elements moved into blobs (positions 0 and 2).
    static let withBlobs: JobArguments = {
        var digester = BlobDigester()
        return try! JobArguments([String(repeating: "a", count: 40), 1, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]).movingLarge(above: 20, digester: &digester)
    }()

    /// One message of every frame type.
    static let messages: [NodeMessage] = [
        .hello(minVersion: 2, maxVersion: 3, maxFrame: 65_536, name: "client"),
        .welcome(version: 2, window: 8, maxFrame: 1 << 20, info: Array("{\"id\":\"n\"}".utf8)),
        .error(code: 6, message: "over credit"),
        .submit([
            WireJob(id: 1, digest: Self.digest, timeoutMilliseconds: 0, arguments: JobArguments(jsonArray: Array("[1, 2]".utf8))),
            WireJob(id: 2, digest: Self.digest, timeoutMilliseconds: 250, arguments: JobArguments(opaque: [0, 1, 2])),
        ]),
        .submit([]),
        .submit([WireJob(id: 3, digest: Self.digest, timeoutMilliseconds: 9, arguments: Self.withBlobs)]),
        .submit([
            WireJob(
                id: 4, digest: Self.digest, timeoutMilliseconds: 0,
                arguments: JobArguments(opaque: [1, 2], parts: [ArgumentBlob(position: 1, digest: Self.digest, bytes: []), ArgumentBlob(position: 2, digest: Self.digest, bytes: [])])
            )
        ]),
        .blob(digest: Self.digest, bytes: [7, 8, 9]),
        .needBlob(Self.digest),
        .bundle(digest: Self.digest, spec: Array("{\"name\":\"f\"}".utf8)),
        .cancel(id: 3),
        .stop(id: 4),
        .ping(5),
        .pong(6),
        .statsRequest(7),
        .goodbye(reason: "node shutting down"),
        .results([
            JobResult(id: 1, code: nil, nanoseconds: 12, stdout: Array("out".utf8), stderr: [], payload: Array("3".utf8), executor: ""),
            JobResult(id: 2, code: .timeout, nanoseconds: 0, payload: Array("{}".utf8), executor: ""),
        ]),
        .need(Self.digest),
        .window(256),
        .stats(token: 7, json: Array("{\"workers\":2}".utf8)),
    ]

    static func frame(_ message: NodeMessage) -> ByteBuffer {
        var buffer = ByteBuffer()
        message.write(to: &buffer)
        return buffer
    }

    /// A frame of `type` with `body`, written by hand (for frames the encoder never makes).
    static func frame(type: UInt8, _ body: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(1 + body.count))
        buffer.writeInteger(type)
        buffer.writeBytes(body)
        return buffer
    }

    static func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    static func channel(limit: FrameLimit = FrameLimit(NodeProtocol.defaultMaxFrame)) -> EmbeddedChannel {
        EmbeddedChannel(handler: ByteToMessageHandler(NodeMessageDecoder(limit: limit)))
    }

    /// The error the decoder raises for `bytes`.
    static func error(for bytes: ByteBuffer, limit: Int = NodeProtocol.defaultMaxFrame) throws -> NodeProtocolError? {
        let channel = Self.channel(limit: FrameLimit(limit))
        defer { _ = try? channel.finish() }
        do {
            try channel.writeInbound(bytes)
        } catch let error as NodeProtocolError {
            return error
        }
        return nil
    }

    @Test func verifierFeedsEveryMessageInEveryWay() throws {
        // Drip-fed byte by byte, all in one buffer, one frame per buffer, and checked
        // for leftovers: the decoder returns nil on a partial frame and never over-reads.
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: Self.messages.map { (Self.frame($0), [$0]) },
            decoderFactory: { NodeMessageDecoder() }
        )
    }

    @Test func framesArriveWhole() throws {
        let channel = Self.channel()
        var all = ByteBuffer()
        for message in Self.messages { message.write(to: &all) }
        // Split at an odd place, into two writes.
        let head = all.readSlice(length: all.readableBytes / 2 + 3)!
        try channel.writeInbound(head)
        try channel.writeInbound(all)
        var decoded: [NodeMessage] = []
        while let message = try channel.readInbound(as: NodeMessage.self) { decoded.append(message) }
        #expect(decoded == Self.messages)
        #expect(try channel.finish().isClean)
    }

    @Test func badFramesNameTheFrameAndTheField() throws {
        let zero = [UInt8](repeating: 0, count: 32)
        // SUBMIT: two good jobs (48 bytes each), then one whose argument length is past the end.
        let goodJob = Self.be(UInt64(1)) + zero + Self.be(UInt32(0)) + Self.be(UInt32(0))
        let badJob = Self.be(UInt64(3)) + zero + Self.be(UInt32(0)) + Self.be(UInt32(900)) + [1, 2, 3, 4]
        let cases: [(ByteBuffer, String, String?)] = [
            (
                Self.frame(type: 0x10, Self.be(UInt32(3)) + goodJob + goodJob + badJob),
                "SUBMIT job 3 of 3: argument length 900 is past the end of the frame (4 bytes left)", "argument"
            ),
            (Self.frame(type: 0x01, Array("GET / HTTP".utf8)), "HELLO: bad magic 0x47455420 (expected \"PPNP\")", "magic"),
            (
                Self.frame(type: 0x01, Array("PPNP".utf8) + Self.be(UInt16(2)) + Self.be(UInt16(2)) + Self.be(UInt32(65_536)) + [50, 0x61, 0x62, 0x63]),
                "HELLO: client name length 50 is past the end of the frame (3 bytes left)", "client name"
            ),
            (Self.frame(type: 0x20, Self.be(UInt32(10_000)) + [UInt8](repeating: 0, count: 40)), "RESULTS: count 10000 cannot fit in 40 bytes", "count"),
            (
                Self.frame(type: 0x20, Self.be(UInt32(1)) + Self.be(UInt64(1)) + [0] + Self.be(UInt64(0)) + Self.be(UInt32(0)) + Self.be(UInt32(0)) + Self.be(UInt32(7))),
                "RESULTS result 1 of 1: payload length 7 is past the end of the frame (0 bytes left)", "payload"
            ),
            (Self.frame(type: 0x17, Self.be(UInt64(4)) + [9, 9, 9]), "STOP: 3 bytes left over after job id", "job id"),
            (Self.frame(type: 0x13, [1, 2, 3]), "PING: token needs 8 bytes, only 3 left in the frame", "token"),
            (Self.frame(type: 0x11, [1, 2]), "BUNDLE: digest needs 32 bytes, only 2 left in the frame", "digest"),
            (Self.frame(type: 0x7f, []), "unknown frame type 0x7f", nil),
            (
                Self.frame(type: 0x10, Self.be(UInt32(1)) + Self.be(UInt64(1)) + zero + Self.be(UInt32(1 << 30)) + Self.be(UInt32(0)) + Self.be(UInt16(2))
                    + Self.be(UInt16(3)) + zero + Self.be(UInt16(3)) + zero),
                "SUBMIT job 1 of 1: blob position: 3 does not follow 3", "blob position"
            ),
            (Self.frame(type: 0x24, [1, 2]), "NEED_BLOB: digest needs 32 bytes, only 2 left in the frame", "digest"),
            (ByteBuffer(bytes: [0, 0, 0, 0]), "empty frame", nil),
        ]
        for (bytes, message, field) in cases {
            let error = try #require(try Self.error(for: bytes), "\(message)")
            #expect(error.message == message)
            #expect(error.code == .protocolViolation)
            #expect(error.frameError?.field == field, "\(message)")
        }
    }

    @Test func theLengthIsCheckedAgainstTheLimitBeforeTheBody() throws {
        // Only the 4-byte length has arrived: a frame over the limit fails at once.
        let error = try #require(try Self.error(for: ByteBuffer(bytes: [0, 0, 0x13, 0x89]), limit: NodeProtocol.preambleMaxFrame))
        #expect(error.code == .frameTooLarge)
        #expect(error.message == "frame of 5001 bytes is larger than the limit of 4096")
        #expect(error.frameError?.problem == .tooLarge(length: 5001, limit: 4096))
    }

    @Test func aRaisedLimitAdmitsLargerFrames() throws {
        // The session raises the limit its decoder reads once HELLO has been read.
        let limit = FrameLimit(NodeProtocol.preambleMaxFrame)
        let channel = Self.channel(limit: limit)
        let big = NodeMessage.bundle(digest: Self.digest, spec: [UInt8](repeating: 0x20, count: 10_000))
        try channel.writeInbound(Self.frame(.ping(1)))
        #expect(try channel.readInbound(as: NodeMessage.self) == .ping(1))
        limit.value = NodeProtocol.defaultMaxFrame
        try channel.writeInbound(Self.frame(big))
        #expect(try channel.readInbound(as: NodeMessage.self) == big)
        #expect(try channel.finish().isClean)
    }
}
