/// Why the decoder could not read a frame, naming the frame and the field: "SUBMIT job
/// 3 of 10: argument length 900 is past the end of the frame (12 bytes left)", "HELLO:
/// bad magic 0x47455420 (expected "PPNP")". It reaches handlers inside a
/// `NodeProtocolError` (`frameError`), whose code and message an ERROR frame carries.
public struct NodeFrameError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong with the frame.
    public enum Problem: Sendable, Equatable {
        /// The length prefix is 0: not even a type byte.
        case emptyFrame
        /// The length prefix is above the receiver's limit (checked before reading).
        case tooLarge(length: Int, limit: Int)
        /// The type byte is not a frame type of this version.
        case unknownType(UInt8)
        /// A fixed-size field needs more bytes than the frame has left.
        case truncated(needed: Int, left: Int)
        /// A field's length prefix points past the end of the frame.
        case lengthPastEnd(length: Int, left: Int)
        /// A count of items that cannot all fit in the bytes that follow it.
        case countCannotFit(count: Int, bytes: Int)
        /// HELLO does not start with "PPNP".
        case badMagic([UInt8])
        /// Bytes follow the frame's last field.
        case leftOver(Int)
        /// A field's value breaks a rule of its frame (said how).
        case invalid(String)
    }

    /// The frame type, once known.
    public var frame: NodeProtocol.Kind?
    /// The item of a repeated part that is wrong ("job 3 of 10", "result 1 of 2").
    public var item: String?
    /// The field that is wrong ("argument", "count", "token"), or the last field read
    /// for `leftOver`.
    public var field: String?
    /// What is wrong with it.
    public var problem: Problem

    /// The code an ERROR frame carries for it: 4 for a frame over the limit, else 3.
    public var code: NodeErrorCode {
        if case .tooLarge = self.problem { return .frameTooLarge }
        return .protocolViolation
    }

    public var description: String {
        let field = self.field ?? "the frame"
        let what =
            switch self.problem {
            case .emptyFrame: "empty frame"
            case .tooLarge(let length, let limit): "frame of \(length) bytes is larger than the limit of \(limit)"
            case .unknownType(let type): "unknown frame type 0x\(String(type, radix: 16))"
            case .truncated(let needed, let left): "\(field) needs \(needed) bytes, only \(left) left in the frame"
            case .lengthPastEnd(let length, let left): "\(field) length \(length) is past the end of the frame (\(left) bytes left)"
            case .countCannotFit(let count, let bytes): "\(field) \(count) cannot fit in \(bytes) bytes"
            case .badMagic(let bytes): "bad magic 0x\(Hex.encode(bytes)) (expected \"PPNP\")"
            case .leftOver(let n): "\(n) bytes left over after \(field)"
            case .invalid(let rule): "\(field): \(rule)"
            }
        guard let frame = self.frame else { return what }
        return "\(frame.name)\(self.item.map { " \($0)" } ?? ""): \(what)"
    }
}
