import NIOCore
import NIOEmbedded
import PPCore
import PPTLS
import Testing

/// The TLS handler between two embedded channels: bytes are moved by hand, so every
/// step is deterministic.
@Suite("TLS 1.3 keyed by the cluster secret")
struct TLSTests {
    static let keys = ClusterKeys(secret: Array(String(repeating: "5a", count: 32).utf8))
    static let otherKeys = ClusterKeys(secret: Array(String(repeating: "a5", count: 32).utf8))

    /// Records the handshake event and errors that reach the end of the pipeline.
    final class Events: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        var completed: TLSHandler.Event?
        var errors: [any Error] = []
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            self.completed = event as? TLSHandler.Event
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            self.errors.append(error)
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.fireChannelRead(data)
        }
    }

    struct Pair {
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let clientEvents = Events()
        let serverEvents = Events()

        init(client clientKeys: ClusterKeys, server serverKeys: ClusterKeys) throws {
            self.client = EmbeddedChannel()
            self.server = EmbeddedChannel()
            try self.client.pipeline.syncOperations.addHandlers(TLSHandler(context: TLSContext(keys: clientKeys, role: .client)), self.clientEvents)
            try self.server.pipeline.syncOperations.addHandlers(TLSHandler(context: TLSContext(keys: serverKeys, role: .server)), self.serverEvents)
            try self.server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try self.client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        }

        /// Moves bytes both ways until neither side has anything to send.
        func shuttle(tamper: ((inout ByteBuffer) -> Void)? = nil) {
            var moved = true
            var rounds = 0
            while moved, rounds < 20 {
                moved = false
                rounds += 1
                while let out = try? self.client.readOutbound(as: ByteBuffer.self) {
                    var bytes = out
                    tamper?(&bytes)
                    if self.server.isActive { _ = try? self.server.writeInbound(bytes) }
                    moved = true
                }
                while let out = try? self.server.readOutbound(as: ByteBuffer.self) {
                    if self.client.isActive { _ = try? self.client.writeInbound(out) }
                    moved = true
                }
            }
        }

        func finish() {
            _ = try? self.client.finish()
            _ = try? self.server.finish()
        }
    }

    @Test func handshakeAndDataBothWays() throws {
        let pair = try Pair(client: Self.keys, server: Self.keys)
        defer { pair.finish() }
        // Written before the handshake: held, then sent encrypted.
        pair.client.writeAndFlush(ByteBuffer(string: "HELLO from the client"), promise: nil)
        pair.shuttle()
        guard case .handshakeCompleted(let cipher) = pair.clientEvents.completed else {
            Issue.record("client handshake did not complete: \(pair.clientEvents.errors)")
            return
        }
        #expect(cipher == "TLS_AES_128_GCM_SHA256" || cipher == "TLS_CHACHA20_POLY1305_SHA256")
        #expect(pair.serverEvents.completed != nil)
        let received = try pair.server.readInbound(as: ByteBuffer.self)
        #expect(received.map { String(buffer: $0) } == "HELLO from the client")
        pair.server.writeAndFlush(ByteBuffer(string: "WELCOME"), promise: nil)
        pair.shuttle()
        #expect(try pair.client.readInbound(as: ByteBuffer.self).map { String(buffer: $0) } == "WELCOME")
    }

    @Test func ciphertextHidesThePlaintext() throws {
        let pair = try Pair(client: Self.keys, server: Self.keys)
        defer { pair.finish() }
        pair.shuttle()
        pair.client.writeAndFlush(ByteBuffer(string: "def secret_function(): return 42"), promise: nil)
        let wire = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        #expect(!String(decoding: Array(wire.readableBytesView), as: UTF8.self).contains("secret_function"))
        try pair.server.writeInbound(wire)
        #expect(try pair.server.readInbound(as: ByteBuffer.self).map { String(buffer: $0) } == "def secret_function(): return 42")
    }

    @Test func anotherKeyFailsOnBothSidesAndNamesTheKeyIDs() throws {
        let pair = try Pair(client: Self.otherKeys, server: Self.keys)
        defer { pair.finish() }
        pair.client.writeAndFlush(ByteBuffer(string: "HELLO"), promise: nil)
        pair.shuttle()
        #expect(pair.clientEvents.completed == nil && pair.serverEvents.completed == nil)
        #expect(try pair.server.readInbound(as: ByteBuffer.self) == nil)
        let serverError = try #require(pair.serverEvents.errors.first as? TLSError)
        #expect(serverError.code == .handshakeFailed)
        #expect(serverError.message.contains(Self.otherKeys.keyID) && serverError.message.contains(Self.keys.keyID))
        let clientError = try #require(pair.clientEvents.errors.first as? TLSError)
        #expect(clientError.code == .handshakeFailed)
        #expect(clientError.message.contains("does not accept our key"))
    }

    @Test func aChangedRecordIsRefused() throws {
        let pair = try Pair(client: Self.keys, server: Self.keys)
        defer { pair.finish() }
        pair.shuttle()
        #expect(pair.serverEvents.completed != nil)
        pair.client.writeAndFlush(ByteBuffer(string: "SUBMIT job 1"), promise: nil)
        pair.shuttle { bytes in
            // Flip one bit of the ciphertext, past the 5-byte record header.
            let i = bytes.readerIndex + 7
            bytes.setInteger(bytes.getInteger(at: i, as: UInt8.self)! ^ 1, at: i)
        }
        #expect(try pair.server.readInbound(as: ByteBuffer.self) == nil)
        let error = try #require(pair.serverEvents.errors.first as? TLSError)
        #expect(error.code == .recordFailed)
        #expect(!pair.server.isActive)
    }

    @Test func plaintextFramesAreNotTLS() throws {
        let server = EmbeddedChannel()
        let events = Events()
        try server.pipeline.syncOperations.addHandlers(TLSHandler(context: TLSContext(keys: Self.keys, role: .server)), events)
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        // A plaintext frame announcing 64 MiB, then junk: refused at the first record.
        var junk = ByteBuffer(bytes: [0x04, 0x00, 0x00, 0x00, 0x10])
        junk.writeRepeatingByte(0x41, count: 60_000)
        _ = try? server.writeInbound(junk)
        #expect((events.errors.first as? TLSError)?.code == .handshakeFailed)
        #expect(!server.isActive)
        _ = try? server.finish()
    }
}
