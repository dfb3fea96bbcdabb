/// The native wire protocol between clients and `ppnode`, described byte by byte in
/// docs/PROTOCOL.md. It runs inside TLS 1.3 keyed by the cluster secret (PPTLS): the
/// first frame is sent only after both sides proved they hold the key. Every frame:
/// u32 length N (of type + body), u8 type, body.
///
/// The pieces, one per file in this folder: the constants and frame types (here), the
/// messages (`NodeMessage`, one file per frame type with its layout both ways), the
/// encoder (`NodeMessage+Encoding.swift`) and the decoder (`NodeMessageDecoder`), whose
/// errors (`NodeFrameError`) name the frame and the field that is wrong.
public enum NodeProtocol {
    /// The protocol version this build speaks. Version 3 sends large arguments by
    /// digest (BLOB, NEED_BLOB); version 2 (without them) and version 1 (plaintext,
    /// HMAC challenge) are no longer spoken.
    public static let version: UInt16 = 3
    /// The lowest version this build accepts.
    public static let minimumVersion: UInt16 = 3
    /// The four bytes that open every HELLO.
    public static let magic: [UInt8] = Array("PPNP".utf8)
    /// The default maximum frame size: 64 MiB.
    public static let defaultMaxFrame = 64 << 20
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
        case blob = 0x18, needBlob = 0x24

        /// The frame's name as docs/PROTOCOL.md spells it: the case's name in upper
        /// snake case (`SUBMIT`, `STATS_REQUEST`).
        public var name: String {
            String(describing: self).reduce(into: "") { name, c in name += c.isUppercase ? "_\(c)" : c.uppercased() }
        }
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

/// A frame that breaks the native protocol: what the decoder throws and what a session
/// sends in its ERROR frame before it closes.
public struct NodeProtocolError: Error, Sendable, CustomStringConvertible {
    /// The error code an ERROR frame would carry.
    public var code: NodeErrorCode
    /// What was wrong.
    public var message: String
    /// The frame and field the decoder could not read, when the error came from it.
    public var frameError: NodeFrameError?

    /// Creates an error.
    public init(_ code: NodeErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The error for a frame the decoder could not read; its message names the frame
    /// and the field.
    public init(_ frameError: NodeFrameError) {
        self.code = frameError.code
        self.message = frameError.description
        self.frameError = frameError
    }

    public var description: String { self.message }
}
