internal import NIOCore

/// A decoded frame of the native protocol. The files beside this one give each frame's
/// layout; `write(to:)` encodes a message, `NodeMessageDecoder` decodes one.
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
    /// Client → node: a large argument the node asked for.
    case blob(digest: SHA256Digest, bytes: [UInt8])
    /// Node → client: send the large argument with this digest.
    case needBlob(SHA256Digest)
    /// Node → client: the new job window.
    case window(UInt32)
    /// Node → client: the counters asked for by `statsRequest`.
    case stats(token: UInt64, json: [UInt8])

    /// The frame type that carries this message.
    public var kind: NodeProtocol.Kind {
        switch self {
        case .hello: .hello
        case .welcome: .welcome
        case .error: .error
        case .submit: .submit
        case .bundle: .bundle
        case .cancel: .cancel
        case .stop: .stop
        case .ping: .ping
        case .pong: .pong
        case .statsRequest: .statsRequest
        case .goodbye: .goodbye
        case .results: .results
        case .need: .need
        case .window: .window
        case .stats: .stats
        case .blob: .blob
        case .needBlob: .needBlob
        }
    }
}

extension NodeMessage: Equatable {
    /// Two messages are equal when they are the same frame, byte for byte. (A result's
    /// `executor` is not on the wire, so it is not compared.)
    public static func == (a: NodeMessage, b: NodeMessage) -> Bool {
        var left = ByteBuffer()
        var right = ByteBuffer()
        a.write(to: &left)
        b.write(to: &right)
        return left == right
    }
}
