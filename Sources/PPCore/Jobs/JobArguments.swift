internal import Foundation

/// The positional arguments of one call: the JSON array the worker decodes, or opaque
/// bytes that the worker hands to the function as one `bytes` argument (the Python
/// package's pickles: the engine, the wire and the pool never look inside them).
public struct JobArguments: Sendable, Hashable {
    /// The JSON array's bytes, or the opaque bytes.
    public let json: [UInt8]
    /// Whether `json` holds opaque bytes: the function gets them as one `bytes`
    /// argument and must return `bytes`, which come back as they are (not JSON).
    public let isOpaque: Bool

    /// Arguments already encoded as one JSON array (not checked here).
    public init(jsonArray: [UInt8]) {
        self.json = jsonArray
        self.isOpaque = false
    }

    /// Opaque bytes, passed to the function as its one `bytes` argument.
    public init(opaque bytes: [UInt8]) {
        self.json = bytes
        self.isOpaque = true
    }

    /// No arguments.
    public static let none = JobArguments(jsonArray: Array("[]".utf8))

    /// Encodes each value as one positional argument.
    ///
    /// Common types (integers, doubles, strings, booleans, `JSONValue`, `RawJSON`, and
    /// arrays of them) take a fast path; anything else goes through `JSONEncoder`.
    ///
    /// - Parameter values: the arguments, in order.
    /// - Throws: `EncodingError` when a value cannot be encoded as JSON.
    public init(_ values: [any Encodable & Sendable]) throws {
        var w = JSONWriter(capacity: 16)
        w.raw("[")
        for (i, v) in values.enumerated() {
            if i > 0 { w.raw(",") }
            try Self.write(v, to: &w)
        }
        w.raw("]")
        self.json = w.bytes
        self.isOpaque = false
    }

    /// Encodes one value as the single positional argument.
    public init(single value: any Encodable & Sendable) throws {
        try self.init([value])
    }

    static func write(_ v: any Encodable, to w: inout JSONWriter) throws {
        switch v {
        case let x as Int: w.int(x)
        case let x as String: w.string(x)
        case let x as Double: w.double(x)
        case let x as Bool: w.bool(x)
        case let x as JSONValue: x.write(to: &w)
        case let x as RawJSON: w.raw(bytes: x.bytes)
        case let x as [Int]: w.array(x) { $0.int($1) }
        case let x as [String]: w.array(x) { $0.string($1) }
        case let x as [Double]: w.array(x) { $0.double($1) }
        default:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            w.raw(bytes: try encoder.encode(v))
        }
    }
}
