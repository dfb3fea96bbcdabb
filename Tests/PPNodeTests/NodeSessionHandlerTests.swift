// NodeSession, the driver of NodeSessionStateMachine, in an EmbeddedChannel: frames in,
// frames out, the node's counters and frame limit, timers on the embedded clock. The
// node has 0 workers (its pool starts no process) and no listener; the tests keep jobs
// waiting for their bundle, so none reaches the pool.

import Logging
import NIOCore
import NIOEmbedded
import PPCore
@testable import PPNode
import PPTLS
import PPWorkers
import Testing

@Suite("NodeSession in an EmbeddedChannel")
struct NodeSessionHandlerTests {
    /// A node of 1 worker (window 2) that is never started (its pool spawns nothing
    /// here: the jobs wait for a bundle), a channel with the decoder and a session.
    struct Harness {
        let node: NodeServer
        let channel: EmbeddedChannel
        let limit: FrameLimit

        init() throws {
            var configuration = NodeConfiguration(
                secret: try ClusterSecret(text: String(repeating: "ab", count: 32), origin: "test"),
                name: "embedded",
                logger: Logger(label: "test")
            )
            configuration.workers = 1
            configuration.python = "/nonexistent/python3"
            self.node = try NodeServer(configuration: configuration)
            self.channel = EmbeddedChannel()
            self.limit = FrameLimit(NodeProtocol.preambleMaxFrame)
            let session = NodeSession(node: self.node, channel: self.channel, frameLimit: self.limit)
            try self.channel.pipeline.syncOperations.addHandler(session)
            try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 7340)).wait()
        }

        /// What TLSHandler tells the session once the peer proved it has the key.
        func tlsUp() {
            self.channel.pipeline.fireUserInboundEventTriggered(TLSHandler.Event.handshakeCompleted(cipher: "TLS_AES_128_GCM_SHA256"))
        }

        func send(_ message: NodeMessage) throws {
            var buffer = ByteBuffer()
            message.write(to: &buffer)
            try self.channel.writeInbound(buffer)
        }

        /// The frames the session wrote since the last call.
        func written() throws -> [NodeMessage] {
            var decoder = NodeMessageDecoder()
            var out: [NodeMessage] = []
            while var buffer = try self.channel.readOutbound(as: ByteBuffer.self) {
                while let message = try decoder.decode(buffer: &buffer) { out.append(message) }
            }
            return out
        }

        func hello() throws {
            self.tlsUp()
            try self.send(.hello(minVersion: 3, maxVersion: 3, maxFrame: 1 << 20, name: "embedded-client"))
        }

        func stop() async throws {
            _ = try? self.channel.finish()
            await self.node.pool.shutdown()
        }
    }

    @Test func handshakeNeedAndOverCredit() async throws {
        let h = try Harness()
        #expect(h.node.state.unauthenticatedTotal == 1 && h.node.state.sessions.count == 1)
        try h.hello()
        let welcome = try h.written()
        guard case .welcome(3, 2, let maxFrame, let info) = welcome.first, welcome.count == 1 else {
            Issue.record("no WELCOME: \(welcome)")
            return try await h.stop()
        }
        #expect(Int(maxFrame) == NodeProtocol.defaultMaxFrame && h.limit.value == NodeProtocol.defaultMaxFrame)
        #expect(String(decoding: info, as: UTF8.self).contains("\"name\":\"embedded\""))
        #expect(h.node.state.unauthenticatedTotal == 0)

        try h.send(.ping(9))
        #expect(try h.written() == [.pong(9)])

        // Two jobs of a bundle the node lacks: one NEED; they wait.
        let digest = SHA256Digest(hashing: Array("missing".utf8))
        let jobs = (1...2).map { WireJob(id: UInt64($0), digest: digest, timeoutMilliseconds: 0, arguments: .none) }
        try h.send(.submit(jobs))
        #expect(try h.written() == [.need(digest)])
        #expect(h.node.state.jobsReceived == 2)

        // A third is past the window of 2: ERROR 6, then the connection closes.
        try h.send(.submit([WireJob(id: 3, digest: digest, timeoutMilliseconds: 0, arguments: .none)]))
        #expect(try h.written() == [.error(code: 6, message: "client sent 1 jobs with 2 in flight, past its window of 2")])
        #expect(!h.channel.isActive)
        #expect(h.node.state.protocolErrors == 1 && h.node.state.sessions.isEmpty)
        try await h.stop()
    }

    @Test func aBadFrameAfterTheHandshakeIsAnsweredWithERROR3() async throws {
        let h = try Harness()
        try h.hello()
        _ = try h.written()
        var buffer = ByteBuffer(bytes: [0, 0, 0, 4, 0x12, 1, 2, 3])  // CANCEL with 3 of its 8 bytes
        try h.channel.writeInbound(buffer.readSlice(length: buffer.readableBytes)!)
        #expect(try h.written() == [.error(code: 3, message: "CANCEL: job id needs 8 bytes, only 3 left in the frame")])
        #expect(!h.channel.isActive && h.node.state.protocolErrors == 1)
        try await h.stop()
    }

    @Test func theHandshakeTimerClosesSilentPeers() async throws {
        // TLS up, no HELLO: ERROR 5 when the timeout passes.
        let withTLS = try Harness()
        withTLS.tlsUp()
        withTLS.channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(withTLS.channel.isActive)
        withTLS.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(try withTLS.written() == [.error(code: 5, message: "no TLS handshake and HELLO within 5.0 seconds; closing")])
        #expect(!withTLS.channel.isActive && withTLS.node.state.unauthenticatedTotal == 0)
        try await withTLS.stop()

        // No TLS: nothing to send it to; the connection just closes.
        let bare = try Harness()
        bare.channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(try bare.written().isEmpty && !bare.channel.isActive)
        try await bare.stop()
    }

    @Test func heartbeatPingsThenClosesASilentClient() async throws {
        let h = try Harness()
        try h.hello()
        _ = try h.written()
        let loop = h.channel.embeddedEventLoop
        loop.advanceTime(by: .seconds(1))
        #expect(try h.written() == [.ping(0)])
        // Any frame is a sign of life: silent from t=2, the client is closed at t=6 (3 s
        // of silence are tolerated, not more), without an ERROR frame.
        try h.send(.pong(0))
        loop.advanceTime(by: .seconds(1))
        try h.send(.pong(0))
        loop.advanceTime(by: .seconds(3))
        #expect(try h.written() == [.ping(0), .ping(0), .ping(0), .ping(0)])
        #expect(h.channel.isActive)
        loop.advanceTime(by: .seconds(1))
        #expect(try h.written().isEmpty)
        #expect(!h.channel.isActive)
        try await h.stop()
    }
}
