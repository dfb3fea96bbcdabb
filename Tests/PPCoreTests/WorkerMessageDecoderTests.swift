import NIOCore
import NIOEmbedded
import NIOTestUtils
import PPCore
import Testing

/// The decoder of what Python workers write (docs/WORKER-PROTOCOL.md), in a channel
/// pipeline: every frame in every fragmentation, bad frames as typed errors.
@Suite("Worker frame decoder")
struct WorkerMessageDecoderTests {
    /// A worker message as plain values, so the verifier can compare them.
    enum Seen: Equatable {
        case hello(String)
        case result(id: UInt64, status: UInt8, nanoseconds: UInt64, stdout: String, stderr: String, payload: String)
        case checkReply(id: UInt64, error: String?)
        case retiring(UInt8)

        init(_ message: WorkerMessage) {
            switch message {
            case .hello(let json):
                self = .hello(String(buffer: json))
            case .result(let r):
                self = .result(
                    id: r.id, status: r.code?.wireStatus ?? 0, nanoseconds: r.nanoseconds,
                    stdout: String(decoding: r.stdout, as: UTF8.self), stderr: String(decoding: r.stderr, as: UTF8.self),
                    payload: String(decoding: r.payload, as: UTF8.self)
                )
            case .checkReply(let id, let error):
                self = .checkReply(id: id, error: error.map { String(buffer: $0) })
            case .retiring(let reason):
                self = .retiring(reason)
            }
        }
    }

    /// `WorkerMessageDecoder` with its messages turned into `Seen` values.
    struct SeenDecoder: NIOSingleStepByteToMessageDecoder {
        typealias InboundOut = Seen
        var decoder = WorkerMessageDecoder()

        mutating func decode(buffer: inout ByteBuffer) throws -> Seen? {
            try self.decoder.decode(buffer: &buffer).map(Seen.init)
        }

        mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Seen? {
            try self.decoder.decodeLast(buffer: &buffer, seenEOF: seenEOF).map(Seen.init)
        }
    }

    static func frame(_ type: Character, _ body: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(1 + body.count))
        buffer.writeInteger(type.asciiValue!)
        buffer.writeBytes(body)
        return buffer
    }

    static func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    static func result(id: UInt64, status: UInt8, ns: UInt64, out: String, err: String, payload: String) -> [UInt8] {
        Self.be(id) + [status] + Self.be(ns) + Self.be(UInt32(out.utf8.count)) + Array(out.utf8) + Self.be(UInt32(err.utf8.count)) + Array(err.utf8)
            + Array(payload.utf8)
    }

    @Test func verifierFeedsEveryFrameInEveryWay() throws {
        let pairs: [(ByteBuffer, [Seen])] = [
            (Self.frame("H", Array("{\"pid\":42}".utf8)), [.hello("{\"pid\":42}")]),
            (
                Self.frame("R", Self.result(id: 7, status: 0, ns: 1500, out: "printed\n", err: "", payload: "[1, 2]")),
                [.result(id: 7, status: 0, nanoseconds: 1500, stdout: "printed\n", stderr: "", payload: "[1, 2]")]
            ),
            (
                Self.frame("R", Self.result(id: 8, status: 1, ns: 9, out: "", err: "warn", payload: "{\"type\":\"ValueError\"}")),
                [.result(id: 8, status: 1, nanoseconds: 9, stdout: "", stderr: "warn", payload: "{\"type\":\"ValueError\"}")]
            ),
            (Self.frame("C", Self.be(UInt64(3)) + [0]), [.checkReply(id: 3, error: nil)]),
            (Self.frame("C", Self.be(UInt64(4)) + [1] + Array("{\"message\":\"x\"}".utf8)), [.checkReply(id: 4, error: "{\"message\":\"x\"}")]),
            (Self.frame("X", [1]), [.retiring(1)]),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs, decoderFactory: { SeenDecoder() })
    }

    @Test func badFramesAreTypedErrors() throws {
        var tooLong = ByteBuffer()
        tooLong.writeInteger(UInt32(WorkerFrame.maxFrameLength + 1))
        let cases: [(ByteBuffer, String)] = [
            (ByteBuffer(bytes: [0, 0, 0, 0]), "frame length 0 outside 1...1073741824"),
            (tooLong, "frame length 1073741825 outside 1...1073741824"),
            (Self.frame("Z", []), "unknown frame type 90"),
            (Self.frame("R", Self.be(UInt64(1)) + [0] + Self.be(UInt64(0)) + Self.be(UInt32(50)) + Array("short".utf8)), "truncated result frame"),
            (Self.frame("R", Self.result(id: 1, status: 9, ns: 0, out: "", err: "", payload: "")), "unknown result status 9"),
            (Self.frame("C", [0, 0, 1]), "truncated check reply"),
        ]
        for (bytes, message) in cases {
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(WorkerMessageDecoder()))
            let error = #expect(throws: WorkerProtocolError.self, "\(message)") { try channel.writeInbound(bytes) }
            #expect(error?.message == message)
            _ = try? channel.finish()
        }
    }
}
