/// Any JSON value. Use it for arguments and results whose shape is not known in advance.
public enum JSONValue: Sendable, Hashable, Codable, CustomStringConvertible {
    /// `null`.
    case null
    /// `true` or `false`.
    case bool(Bool)
    /// A number without fraction or exponent that fits `Int`.
    case int(Int)
    /// Any other number.
    case double(Double)
    /// A string.
    case string(String)
    /// An array.
    case array([JSONValue])
    /// An object.
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? c.decode(Int.self) {
            self = .int(i)
        } else if let d = try? c.decode(Double.self) {
            self = .double(d)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Writes this value with a fast serializer (object keys sorted).
    public func write(to w: inout JSONWriter) {
        switch self {
        case .null: w.raw("null")
        case .bool(let b): w.bool(b)
        case .int(let i): w.int(i)
        case .double(let d): w.double(d)
        case .string(let s): w.string(s)
        case .array(let a): w.array(a) { $1.write(to: &$0) }
        case .object(let o): w.object(o.keys.sorted().map { ($0, o[$0]!) }) { $1.write(to: &$0) }
        }
    }

    /// The compact JSON text of this value.
    public var description: String {
        var w = JSONWriter()
        self.write(to: &w)
        return String(decoding: w.bytes, as: UTF8.self)
    }
}

/// A value kept as its JSON text: no decoding, no re-encoding. `pprun` passes inputs
/// and prints results this way.
public struct RawJSON: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The UTF-8 bytes of one JSON value.
    public let bytes: [UInt8]

    /// Wraps bytes that hold one valid JSON value (not checked here).
    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// Wraps text that holds one valid JSON value (not checked here).
    public init(_ text: String) { self.bytes = Array(text.utf8) }

    public init(from decoder: any Decoder) throws {
        self.bytes = Array(try JSONValue(from: decoder).description.utf8)
    }

    public func encode(to encoder: any Encoder) throws {
        throw EncodingError.invalidValue(
            self,
            .init(codingPath: encoder.codingPath, debugDescription: "RawJSON is written verbatim by JobArguments")
        )
    }

    public var description: String { String(decoding: self.bytes, as: UTF8.self) }
}
