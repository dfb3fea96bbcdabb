import NIOCore

/// The body of one frame, read field by field. Every read names its field, so a body
/// that does not parse throws a `NodeFrameError` that says which field of which frame
/// (and which job or result in it) is wrong. Sizes are checked before anything is
/// allocated.
struct NodeFrameReader {
    /// The frame type being read.
    let frame: NodeProtocol.Kind
    /// The bytes of the body not read yet.
    private(set) var body: ByteBuffer
    /// The item of a repeated part being read (job 3 of 10), for errors: put into
    /// words only when there is an error (not once per job).
    private var item: (name: String, index: Int, count: Int)?
    /// The last field read: a body with bytes after it names it.
    private var lastField = "the frame type"

    /// Creates a reader of `body` (the bytes after the type byte).
    init(frame: NodeProtocol.Kind, body: ByteBuffer) {
        self.frame = frame
        self.body = body
    }

    /// Bytes not read yet.
    var bytesLeft: Int { self.body.readableBytes }

    /// The error `problem` of `field`, at the current item.
    func error(_ field: String?, _ problem: NodeFrameError.Problem) -> NodeFrameError {
        NodeFrameError(frame: self.frame, item: self.item.map { "\($0.name) \($0.index) of \($0.count)" }, field: field, problem: problem)
    }

    /// Reads a big-endian integer.
    mutating func integer<T: FixedWidthInteger>(_ field: String, as: T.Type = T.self) throws(NodeFrameError) -> T {
        try self.read(field, size: MemoryLayout<T>.size) { $0.readInteger(as: T.self) }
    }

    /// Reads `count` bytes.
    mutating func bytes(_ field: String, count: Int) throws(NodeFrameError) -> [UInt8] {
        try self.read(field, size: count) { $0.readBytes(length: count) }
    }

    /// Reads `field`, `size` bytes, with `read`; a body too short for it is an error.
    private mutating func read<T>(_ field: String, size: Int, _ read: (inout ByteBuffer) -> T?) throws(NodeFrameError) -> T {
        guard let value = read(&self.body) else { throw self.error(field, .truncated(needed: size, left: self.bytesLeft)) }
        self.lastField = field
        return value
    }

    /// Reads a 32-byte SHA-256 digest.
    mutating func digest(_ field: String = "digest") throws(NodeFrameError) -> SHA256Digest {
        SHA256Digest(bytes: try self.bytes(field, count: 32))!
    }

    /// Reads a length (a u32, or the u8 of a *short* string) and that many bytes; the
    /// length is checked against the bytes left before anything is read.
    mutating func lengthPrefixed<Length: FixedWidthInteger>(_ field: String, length: Length.Type = UInt32.self) throws(NodeFrameError) -> [UInt8] {
        guard let prefix = self.body.readInteger(as: Length.self) else {
            throw self.error("\(field) length", .truncated(needed: MemoryLayout<Length>.size, left: self.bytesLeft))
        }
        let length = Int(prefix)
        guard length <= self.bytesLeft else {
            throw self.error(field, .lengthPastEnd(length: length, left: self.bytesLeft))
        }
        return try self.bytes(field, count: length)
    }

    /// Reads the rest of a body that is a u32 count and that many items, each read by
    /// `read` and named in errors ("job 3 of 10"). Items take at least
    /// `minimumItemSize` bytes each: a count that cannot fit in the bytes left is
    /// refused before anything is reserved for it.
    mutating func items<Item>(
        _ name: String,
        minimumItemSize: Int,
        _ read: (inout Self) throws(NodeFrameError) -> Item
    ) throws(NodeFrameError) -> [Item] {
        let count = Int(try self.integer("count", as: UInt32.self))
        guard count <= self.bytesLeft / minimumItemSize else {
            throw self.error("count", .countCannotFit(count: count, bytes: self.bytesLeft))
        }
        var items = [Item]()
        items.reserveCapacity(count)
        for index in 0..<count {
            self.item = (name, index + 1, count)
            items.append(try read(&self))
        }
        self.item = nil
        try self.end()
        return items
    }

    /// Reads the rest of the body.
    mutating func rest() -> [UInt8] {
        self.lastField = "the frame"
        return self.body.readBytes(length: self.bytesLeft)!
    }

    /// Reads the rest of the body as UTF-8 text (invalid bytes are replaced).
    mutating func restText() -> String {
        String(decoding: self.rest(), as: UTF8.self)
    }

    /// Checks that the body has been read exactly: no bytes left over.
    func end() throws(NodeFrameError) {
        guard self.bytesLeft == 0 else { throw self.error(self.lastField, .leftOver(self.bytesLeft)) }
    }
}
