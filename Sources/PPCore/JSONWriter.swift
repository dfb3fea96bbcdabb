/// A small, fast JSON serializer for the hot path (job arguments, bundle specs).
///
/// It writes UTF-8 bytes directly, escaping strings as RFC 8259 requires.
public struct JSONWriter: Sendable {
    /// The bytes written so far.
    public private(set) var bytes: [UInt8]

    /// Creates an empty writer.
    public init(capacity: Int = 64) {
        self.bytes = []
        self.bytes.reserveCapacity(capacity)
    }

    /// Appends text verbatim (it must already be valid JSON syntax).
    public mutating func raw(_ s: StaticString) {
        s.withUTF8Buffer { self.bytes.append(contentsOf: $0) }
    }

    /// Appends bytes verbatim (they must already be valid JSON).
    public mutating func raw(bytes: some Sequence<UInt8>) {
        self.bytes.append(contentsOf: bytes)
    }

    /// Appends an integer.
    public mutating func int(_ v: Int) {
        self.bytes.append(contentsOf: String(v).utf8)
    }

    /// Appends a finite double; NaN and infinities have no JSON form and become `null`.
    public mutating func double(_ v: Double) {
        guard v.isFinite else { return self.raw("null") }
        if v == v.rounded(), abs(v) < 1e15 {
            self.bytes.append(contentsOf: String(Int(v)).utf8)
            self.bytes.append(contentsOf: ".0".utf8)
        } else {
            self.bytes.append(contentsOf: "\(v)".utf8)
        }
    }

    /// Appends a boolean.
    public mutating func bool(_ v: Bool) {
        if v { self.raw("true") } else { self.raw("false") }
    }

    /// Appends a quoted, escaped string.
    public mutating func string(_ s: String) {
        self.bytes.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): self.bytes.append(contentsOf: [92, 34])
            case UInt8(ascii: "\\"): self.bytes.append(contentsOf: [92, 92])
            case 0x0a: self.bytes.append(contentsOf: [92, UInt8(ascii: "n")])
            case 0x0d: self.bytes.append(contentsOf: [92, UInt8(ascii: "r")])
            case 0x09: self.bytes.append(contentsOf: [92, UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                self.bytes.append(contentsOf: [92, UInt8(ascii: "u"), 48, 48, hex[Int(b >> 4)], hex[Int(b & 15)]])
            default: self.bytes.append(b)
            }
        }
        self.bytes.append(UInt8(ascii: "\""))
    }

    /// Appends `,"key":` and `value` as a string (an object's member after its first);
    /// nothing when `value` is `nil`.
    public mutating func member(_ key: String, _ value: String?) {
        guard let value else { return }
        self.bytes.append(UInt8(ascii: ","))
        self.string(key)
        self.bytes.append(UInt8(ascii: ":"))
        self.string(value)
    }

    /// Appends a JSON object of `members` in the order given, writing each value with
    /// `value`.
    public mutating func object<T>(_ members: [(String, T)], _ value: (inout JSONWriter, T) -> Void) {
        self.bytes.append(UInt8(ascii: "{"))
        for (i, (key, item)) in members.enumerated() {
            if i > 0 { self.bytes.append(UInt8(ascii: ",")) }
            self.string(key)
            self.bytes.append(UInt8(ascii: ":"))
            value(&self, item)
        }
        self.bytes.append(UInt8(ascii: "}"))
    }

    /// Appends a JSON array, writing each element with `element`.
    public mutating func array<T>(_ items: [T], _ element: (inout JSONWriter, T) -> Void) {
        self.bytes.append(UInt8(ascii: "["))
        for (i, item) in items.enumerated() {
            if i > 0 { self.bytes.append(UInt8(ascii: ",")) }
            element(&self, item)
        }
        self.bytes.append(UInt8(ascii: "]"))
    }
}
