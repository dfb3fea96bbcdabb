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
    /// Large arguments that travel by digest (`movingLarge(above:digester:)`): the
    /// worker inserts each into the decoded array at its position. For opaque
    /// arguments the list is `json` as one `bytes` argument (none when empty) with each
    /// blob's bytes inserted at its position.
    public internal(set) var blobs: [ArgumentBlob] = []
    /// Where each element of the JSON array ends in `json`, when the arguments were
    /// encoded from values: large ones are then found without a scan.
    private var elementEnds: [Int]?

    init(json: [UInt8], isOpaque: Bool, blobs: [ArgumentBlob]) {
        self.json = json
        self.isOpaque = isOpaque
        self.blobs = blobs
    }

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

    /// Opaque arguments in parts: the function gets `inline` (when not empty) and each
    /// blob's bytes as `bytes` arguments, every blob at its position. The blobs travel
    /// by digest, once per node and per worker, so a large part shared by many jobs
    /// (the Python package's large arguments and functions) moves once.
    ///
    /// - Parameters:
    ///   - inline: bytes that travel with the job.
    ///   - parts: the large parts, positions strictly rising; their bytes must hash to
    ///     their digests.
    public init(opaque inline: [UInt8], parts: [ArgumentBlob]) {
        self.init(json: inline, isOpaque: true, blobs: parts)
    }

    /// Arguments are equal when their bytes, kind and blobs are.
    public static func == (a: JobArguments, b: JobArguments) -> Bool {
        a.json == b.json && a.isOpaque == b.isOpaque && a.blobs == b.blobs
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.json)
        hasher.combine(self.isOpaque)
        hasher.combine(self.blobs)
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
        var ends: [Int] = []
        for (i, v) in values.enumerated() {
            if i > 0 { w.raw(",") }
            try Self.write(v, to: &w)
            ends.append(w.bytes.count)
        }
        w.raw("]")
        self.json = w.bytes
        self.isOpaque = false
        self.elementEnds = ends
    }

    /// Encodes one value as the single positional argument.
    public init(single value: any Encodable & Sendable) throws {
        try self.init([value])
    }

    /// These arguments with every argument larger than `threshold` bytes moved into
    /// `blobs`, to travel by digest: opaque bytes as a whole, or each such element of
    /// the JSON array (the array keeps the others).
    ///
    /// - Parameters:
    ///   - threshold: the largest argument that stays inline.
    ///   - digester: hashes the large arguments (and remembers the last one).
    /// - Returns: the arguments, unchanged when none is that large.
    public func movingLarge(above threshold: Int, digester: inout BlobDigester) -> JobArguments {
        guard self.blobs.isEmpty, self.json.count > threshold else { return self }
        if self.isOpaque {
            let (bytes, digest) = digester.digest(self.json)
            return JobArguments(json: [], isOpaque: true, blobs: [ArgumentBlob(position: 0, digest: digest, bytes: bytes)])
        }
        let ranges = self.elementEnds.map { ends in ends.indices.map { i in (i == 0 ? 1 : ends[i - 1] + 1)..<ends[i] } } ?? JSONCheck.arrayElements(self.json)
        guard let ranges, ranges.contains(where: { $0.count > threshold }) else { return self }
        var kept: [UInt8] = [UInt8(ascii: "[")], blobs: [ArgumentBlob] = []
        for (i, r) in ranges.enumerated() {
            if r.count > threshold {
                let (bytes, digest) = digester.digest(Array(self.json[r]))
                blobs.append(ArgumentBlob(position: i, digest: digest, bytes: bytes))
                continue
            }
            if kept.count > 1 { kept.append(UInt8(ascii: ",")) }
            kept += self.json[r]
        }
        kept.append(UInt8(ascii: "]"))
        return JobArguments(json: kept, isOpaque: false, blobs: blobs)
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
