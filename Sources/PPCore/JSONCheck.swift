/// Checks that bytes are exactly one JSON value (RFC 8259), without building it.
///
/// Results from a node are written to pprun's output as they are; a node must not be
/// able to add lines or break the JSON stream, so every value is checked first. The
/// scan allocates nothing and stops at `maxDepth` nested arrays and objects.
public enum JSONCheck {
    /// The deepest nesting accepted.
    public static let maxDepth = 512

    /// Whether `bytes` hold one JSON value, with only JSON whitespace around it.
    public static func isSingleValue(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBufferPointer { b in
            var i = 0
            skipSpace(b, &i)
            guard value(b, &i, depth: 0) else { return false }
            skipSpace(b, &i)
            return i == b.count
        }
    }

    /// The byte ranges of the elements of a JSON array, or `nil` when `bytes` is not
    /// exactly one array.
    public static func arrayElements(_ bytes: [UInt8]) -> [Range<Int>]? {
        bytes.withUnsafeBufferPointer { b -> [Range<Int>]? in
            var i = 0
            var elements: [Range<Int>]? = []
            skipSpace(b, &i)
            guard i < b.count, b[i] == UInt8(ascii: "["), container(b, &i, depth: 0, elements: &elements) else { return nil }
            skipSpace(b, &i)
            return i == b.count ? elements : nil
        }
    }

    private static func skipSpace(_ b: UnsafeBufferPointer<UInt8>, _ i: inout Int) {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0a || b[i] == 0x0d || b[i] == 0x09 { i += 1 }
    }

    private static func value(_ b: UnsafeBufferPointer<UInt8>, _ i: inout Int, depth: Int) -> Bool {
        guard i < b.count else { return false }
        switch b[i] {
        case UInt8(ascii: "\""): return string(b, &i)
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var elements: [Range<Int>]?
            return container(b, &i, depth: depth, elements: &elements)
        case UInt8(ascii: "t"): return literal(b, &i, "true")
        case UInt8(ascii: "f"): return literal(b, &i, "false")
        case UInt8(ascii: "n"): return literal(b, &i, "null")
        default: return number(b, &i)
        }
    }

    /// The object or array whose opening bracket is at `i`: members or elements,
    /// separated by commas. With `elements` (not nil), the byte range of each element
    /// is appended there.
    private static func container(_ b: UnsafeBufferPointer<UInt8>, _ i: inout Int, depth: Int, elements: inout [Range<Int>]?) -> Bool {
        let isObject = b[i] == UInt8(ascii: "{")
        let close = isObject ? UInt8(ascii: "}") : UInt8(ascii: "]")
        guard depth < maxDepth else { return false }
        i += 1
        skipSpace(b, &i)
        if i < b.count, b[i] == close { i += 1; return true }
        while true {
            skipSpace(b, &i)
            if isObject {
                guard i < b.count, b[i] == UInt8(ascii: "\""), string(b, &i) else { return false }
                skipSpace(b, &i)
                guard i < b.count, b[i] == UInt8(ascii: ":") else { return false }
                i += 1
                skipSpace(b, &i)
            }
            let start = i
            guard value(b, &i, depth: depth + 1) else { return false }
            elements?.append(start..<i)
            skipSpace(b, &i)
            guard i < b.count else { return false }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == close { i += 1; return true }
            return false
        }
    }

    private static func literal(_ b: UnsafeBufferPointer<UInt8>, _ i: inout Int, _ word: StaticString) -> Bool {
        let n = word.utf8CodeUnitCount
        guard i + n <= b.count else { return false }
        let w = word.utf8Start
        for k in 0..<n where b[i + k] != w[k] { return false }
        i += n
        return true
    }

    private static func digits(_ b: UnsafeBufferPointer<UInt8>, _ i: inout Int) -> Bool {
        let start = i
        while i < b.count, (0x30...0x39).contains(b[i]) { i += 1 }
        return i > start
    }

    private static func number(_ b: UnsafeBufferPointer<UInt8>, _ i: inout Int) -> Bool {
        if i < b.count, b[i] == UInt8(ascii: "-") { i += 1 }
        guard i < b.count else { return false }
        if b[i] == UInt8(ascii: "0") {
            i += 1
        } else {
            guard digits(b, &i) else { return false }
        }
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            guard digits(b, &i) else { return false }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard digits(b, &i) else { return false }
        }
        return true
    }

    private static func string(_ b: UnsafeBufferPointer<UInt8>, _ i: inout Int) -> Bool {
        i += 1  // the opening quote
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; return true }
            if c < 0x20 { return false }  // raw control characters (a newline) are not JSON
            if c == UInt8(ascii: "\\") {
                i += 1
                guard i < b.count else { return false }
                switch b[i] {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                    UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    i += 1
                case UInt8(ascii: "u"):
                    guard i + 4 < b.count else { return false }
                    let hex = b[(i + 1)...(i + 4)]
                    guard hex.allSatisfy({ (0x30...0x39).contains($0) || (0x41...0x46).contains($0) || (0x61...0x66).contains($0) }) else { return false }
                    i += 5
                default:
                    return false
                }
                continue
            }
            i += 1
        }
        return false
    }
}
