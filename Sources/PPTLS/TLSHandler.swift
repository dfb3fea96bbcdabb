internal import COpenSSL
public import NIOCore

/// TLS 1.3 with the cluster key, as a channel handler: ciphertext below, plaintext
/// above. OpenSSL never sees the socket; the handler moves bytes between the channel
/// and two memory BIOs.
///
/// Above it, nothing arrives before the handshake has succeeded, so the protocol
/// handlers see only an authenticated peer. Writes made before then wait (in order)
/// and go out encrypted once it completes. When the handshake succeeds the handler
/// fires `TLSHandler.Event.handshakeCompleted` inbound; when it or a later record
/// fails it fires a `TLSError` and closes the channel, sending a TLS alert first.
///
/// Not `Sendable`: it lives on its channel's event loop like every handler.
public final class TLSHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    /// Inbound user events the handler fires.
    public enum Event: Sendable, Equatable {
        /// The peer proved it has the cluster key; `cipher` is the TLS 1.3 suite.
        case handshakeCompleted(cipher: String)
    }

    private enum State {
        case idle, handshaking, open, closed
    }

    private let tls: TLSContext
    /// The connection; its read BIO takes ciphertext in, its write BIO holds ciphertext to send.
    private var ssl: OpaquePointer?
    private let conn: UnsafeMutablePointer<pp_tls_conn>
    private var state = State.idle
    private var waitingWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var encryptedPromises: [EventLoopPromise<Void>] = []
    private var plaintext: ByteBuffer?

    /// Creates a handler for one connection.
    ///
    /// - Parameter context: the process's context for this role (server or client).
    public init(context: TLSContext) {
        self.tls = context
        self.conn = .allocate(capacity: 1)
        self.conn.initialize(to: pp_tls_conn())
    }

    deinit {
        if let ssl = self.ssl { SSL_free(ssl) }  // frees both BIOs too
        self.conn.deinitialize(count: 1)
        self.conn.deallocate()
    }

    // MARK: Life cycle

    public func handlerAdded(context: ChannelHandlerContext) {
        var input: OpaquePointer?
        var output: OpaquePointer?
        self.ssl = pp_tls_new(self.tls.ctx, self.tls.role == .server ? 1 : 0, self.conn, &input, &output)
        if self.ssl == nil {
            return self.fail(context: context, TLSError(code: .internalError, message: "cannot create a TLS connection: \(TLSError.openSSLText())"))
        }
        if context.channel.isActive { self.begin(context: context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.tearDown()
    }

    public func channelActive(context: ChannelHandlerContext) {
        self.begin(context: context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.tearDown()
        context.fireChannelInactive()
    }

    /// Fails what waits and frees the connection (its BIOs with it).
    private func tearDown() {
        self.state = .closed
        self.failWaiting(ChannelError.ioOnClosedChannel)
        if let ssl = self.ssl { SSL_free(ssl) }
        self.ssl = nil
    }

    private func begin(context: ChannelHandlerContext) {
        guard case .idle = self.state else { return }
        self.state = .handshaking
        if self.tls.role == .client { self.handshake(context: context) }
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = Self.unwrapInboundIn(data)
        while bytes.readableBytes > 0 {
            guard let input = self.ssl.flatMap(SSL_get_rbio) else { return }
            let fed = bytes.withUnsafeReadableBytes { raw in
                Int(BIO_write(input, raw.baseAddress, Int32(clamping: raw.count)))
            }
            guard fed > 0 else {
                return self.fail(context: context, TLSError(code: .internalError, message: "cannot buffer TLS input: \(TLSError.openSSLText())"))
            }
            bytes.moveReaderIndex(forwardBy: fed)
            if case .handshaking = self.state { self.handshake(context: context) }
            if case .open = self.state { self.readPlaintext(context: context) }
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        if let plaintext = self.plaintext, plaintext.readableBytes > 0 {
            self.plaintext = nil
            context.fireChannelRead(Self.wrapInboundOut(plaintext))
        }
        context.fireChannelReadComplete()
    }

    private func handshake(context: ChannelHandlerContext) {
        guard let ssl = self.ssl else { return }
        let rc = SSL_do_handshake(ssl)
        guard rc == 1 else {
            let error = SSL_get_error(ssl, rc)
            // Whatever OpenSSL queued (its next flight, or the alert before it gives up) goes out.
            self.sendCiphertext(context: context)
            if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { return }
            return self.fail(context: context, TLSError(code: .handshakeFailed, message: self.handshakeFailure(reason: TLSError.openSSLText())))
        }
        self.state = .open
        self.sendCiphertext(context: context)
        context.fireUserInboundEventTriggered(Event.handshakeCompleted(cipher: String(cString: pp_tls_cipher_name(ssl))))
        let waiting = self.waitingWrites
        self.waitingWrites = []
        guard !waiting.isEmpty else { return }
        for (buffer, promise) in waiting { self.encrypt(buffer, promise: promise, context: context) }
        self.sendCiphertext(context: context)
    }

    /// Explains a failed handshake for the log of this side.
    private func handshakeFailure(reason: String) -> String {
        switch self.tls.role {
        case .server:
            let offered = withUnsafeBytes(of: self.conn.pointee.offered_identity) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if offered.isEmpty {
                return "TLS handshake failed (\(reason)): the peer offered no cluster key; it is not a ppnode client of protocol 2 or later"
            }
            if offered != self.tls.identity {
                let theirs = offered.hasPrefix("ppnode2:") ? "key id \(offered.dropFirst(8))" : "identity '\(offered.prefix(64))'"
                return "TLS handshake failed: the client has \(theirs), this node has key id \(self.tls.keyID) (another cluster?); give the client this node's secret file"
            }
            return "TLS handshake failed (\(reason))"
        case .client:
            if ["alert handshake failure", "alert decrypt", "alert illegal parameter"].contains(where: reason.contains) {
                return "TLS handshake failed: the node does not accept our key (key id \(self.tls.keyID)); it belongs to another cluster or has another secret: use that node's secret file"
            }
            if ["wrong version number", "packet length too long", "record layer failure"].contains(where: reason.contains) {
                return "TLS handshake failed (\(reason)): the peer does not speak TLS 1.3; is it a ppnode of protocol 2 or later?"
            }
            return "TLS handshake failed (\(reason))"
        }
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        guard let ssl = self.ssl else { return }
        var buffer = self.plaintext ?? context.channel.allocator.buffer(capacity: 16_384)
        self.plaintext = nil
        while true {
            var rc: Int32 = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 16_384) { raw in
                rc = SSL_read(ssl, raw.baseAddress, Int32(clamping: raw.count))
                return rc > 0 ? Int(rc) : 0
            }
            if rc > 0 { continue }
            let error = SSL_get_error(ssl, rc)
            if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { break }
            if buffer.readableBytes > 0 { context.fireChannelRead(Self.wrapInboundOut(buffer)) }
            if error == SSL_ERROR_ZERO_RETURN {
                // The peer sent close_notify: a clean end.
                self.sendCiphertext(context: context)
                self.state = .closed
                context.close(promise: nil)
                return
            }
            return self.fail(
                context: context,
                TLSError(code: .recordFailed, message: "TLS record failed (\(TLSError.openSSLText())): bytes were changed or injected on the way, or the peer broke TLS")
            )
        }
        // Post-handshake messages (key updates) may have produced output.
        self.sendCiphertext(context: context)
        if buffer.readableBytes > 0 { self.plaintext = buffer }
    }

    // MARK: Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = Self.unwrapOutboundIn(data)
        switch self.state {
        case .open:
            self.encrypt(buffer, promise: promise, context: context)
        case .idle, .handshaking:
            self.waitingWrites.append((buffer, promise))
        case .closed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        if case .open = self.state { self.sendCiphertext(context: context) }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if case .open = self.state, mode != .input, let ssl = self.ssl {
            _ = SSL_shutdown(ssl)  // queues close_notify
            self.sendCiphertext(context: context)
            self.state = .closed
        }
        context.close(mode: mode, promise: promise)
    }

    private func encrypt(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        guard let ssl = self.ssl else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        var rest = buffer
        while rest.readableBytes > 0 {
            let written = rest.withUnsafeReadableBytes { raw in
                SSL_write(ssl, raw.baseAddress, Int32(clamping: raw.count))
            }
            guard written > 0 else {
                promise?.fail(TLSError(code: .internalError, message: "TLS write failed: \(TLSError.openSSLText())"))
                return
            }
            rest.moveReaderIndex(forwardBy: Int(written))
        }
        if let promise { self.encryptedPromises.append(promise) }
    }

    /// Moves every ciphertext byte OpenSSL has queued to the channel, in one write.
    private func sendCiphertext(context: ChannelHandlerContext) {
        guard let output = self.ssl.flatMap(SSL_get_wbio) else { return }
        let pending = pp_bio_pending(output)
        let promises = self.encryptedPromises
        self.encryptedPromises = []
        guard pending > 0 else {
            for p in promises { p.succeed() }
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: pending)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: pending) { raw in
            max(0, Int(BIO_read(output, raw.baseAddress, Int32(clamping: pending))))
        }
        let promise = promises.isEmpty ? nil : context.eventLoop.makePromise(of: Void.self)
        for p in promises { promise?.futureResult.cascade(to: p) }
        context.writeAndFlush(Self.wrapOutboundOut(buffer), promise: promise)
    }

    private func fail(context: ChannelHandlerContext, _ error: TLSError) {
        guard self.state != .closed else { return }
        self.state = .closed
        self.failWaiting(error)
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    private func failWaiting(_ error: any Error) {
        let promises = self.waitingWrites.compactMap(\.1) + self.encryptedPromises
        self.waitingWrites = []
        self.encryptedPromises = []
        for p in promises { p.fail(error) }
    }
}
