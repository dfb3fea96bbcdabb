public import NIOCore

/// Decodes native-protocol frames. It checks the length prefix against `maxFrame`
/// before reading (or allocating) the body, returns `nil` on a partial frame, and
/// throws a `NodeProtocolError` whose `frameError` names the frame and the field of a
/// frame that does not parse exactly (short, a length past its end, bytes left over).
public struct NodeMessageDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = NodeMessage

    /// The limit, shared with the handler that raises it once the peer's first frame
    /// has been read (until then it is `NodeProtocol.preambleMaxFrame`).
    public let limit: FrameLimit

    /// Creates a decoder with a fixed limit.
    public init(maxFrame: Int = NodeProtocol.defaultMaxFrame) {
        self.limit = FrameLimit(maxFrame)
    }

    /// Creates a decoder whose limit `limit`'s owner may change.
    public init(limit: FrameLimit) {
        self.limit = limit
    }

    /// Decodes one frame.
    ///
    /// - Returns: the message, or `nil` when the frame is not all there yet.
    /// - Throws: `NodeProtocolError` (code 4 for a frame over the limit, 3 otherwise).
    public mutating func decode(buffer: inout ByteBuffer) throws(NodeProtocolError) -> NodeMessage? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= 1 else { throw NodeProtocolError(NodeFrameError(frame: nil, problem: .emptyFrame)) }
        guard Int(length) <= self.limit.value else {
            throw NodeProtocolError(NodeFrameError(frame: nil, problem: .tooLarge(length: Int(length), limit: self.limit.value)))
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        var body = buffer.readSlice(length: Int(length))!
        let type = body.readInteger(as: UInt8.self)!
        guard let kind = NodeProtocol.Kind(rawValue: type) else {
            throw NodeProtocolError(NodeFrameError(frame: nil, problem: .unknownType(type)))
        }
        var reader = NodeFrameReader(frame: kind, body: body)
        do {
            return try Self.read(kind, &reader)
        } catch {
            throw NodeProtocolError(error)
        }
    }

    /// Decodes what is left when the stream ends: a partial frame is dropped.
    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(NodeProtocolError) -> NodeMessage? {
        try self.decode(buffer: &buffer)
    }

    /// Reads the body of a frame of type `kind` (each type's file has its reader).
    static func read(_ kind: NodeProtocol.Kind, _ reader: inout NodeFrameReader) throws(NodeFrameError) -> NodeMessage {
        switch kind {
        case .hello: try NodeMessage.readHello(&reader)
        case .welcome: try NodeMessage.readWelcome(&reader)
        case .error: try NodeMessage.readError(&reader)
        case .submit: try NodeMessage.readSubmit(&reader)
        case .bundle: try NodeMessage.readBundle(&reader)
        case .cancel: .cancel(id: try NodeMessage.readJobID(&reader))
        case .stop: .stop(id: try NodeMessage.readJobID(&reader))
        case .ping: .ping(try NodeMessage.readToken(&reader))
        case .pong: .pong(try NodeMessage.readToken(&reader))
        case .statsRequest: .statsRequest(try NodeMessage.readToken(&reader))
        case .goodbye: NodeMessage.readGoodbye(&reader)
        case .results: try NodeMessage.readResults(&reader)
        case .need: try NodeMessage.readNeed(&reader)
        case .window: try NodeMessage.readWindow(&reader)
        case .stats: try NodeMessage.readStats(&reader)
        case .blob: try NodeMessage.readBlob(&reader)
        case .needBlob: try NodeMessage.readNeedBlob(&reader)
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
