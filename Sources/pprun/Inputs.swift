import ArgumentParser
import Foundation
import PPCore
import ParallelPython

/// Where `pprun map` reads its inputs.
enum InputSource {
    case arguments([String])
    case range(RangeSpec)
    /// Records (lines, or NUL-separated items) from a file or stdin.
    case records(LineReader, name: String)

    /// The number of inputs, when known before reading them.
    var count: Int? {
        switch self {
        case .arguments(let a): a.count
        case .range(let r): r.count
        case .records: nil
        }
    }

    /// Calls `body` once per input, in order. `beforeBlocking` runs before a read that
    /// may wait (so work already read can start).
    func forEach(_ format: InputFormat, beforeBlocking: () -> Void, _ body: (InputItem) -> Void) {
        var index = 0
        func item(_ display: String, _ json: [UInt8], _ arguments: Result<JobArguments, InputError>) {
            body(InputItem(index: index, display: display, json: json, arguments: arguments))
            index += 1
        }
        switch self {
        case .arguments(let args):
            for text in args {
                let bytes = Array(text.utf8)
                let json = format.kind == .json && JSONCheck.isSingleValue(bytes) ? bytes : InputFormat.quoted(text)
                item(PeerText.cut(text, limit: 100), json, .success(format.arguments(json)))
            }
        case .range(let r):
            for v in r.values {
                let json = Array(String(v).utf8)
                item(String(v), json, .success(JobArguments(jsonArray: [UInt8(ascii: "[")] + json + [UInt8(ascii: "]")])))
            }
        case .records(let reader, let name):
            var number = 0
            var header: [String]?
            var pending = ""
            while var record = reader.next(beforeBlocking: beforeBlocking) {
                number += 1
                if number == 1, record.starts(with: [0xEF, 0xBB, 0xBF]) { record = record.dropFirst(3) }
                if reader.separator == 10, record.last == 13 { record = record.dropLast() }
                let text = String(decoding: record, as: UTF8.self)
                let display = "\(name):\(number): \(PeerText.cut(text.trimmingCharacters(in: .whitespaces), limit: 100))"
                switch format.kind {
                case .json:
                    let bytes = Array(record)
                    if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A }) { continue }
                    if JSONCheck.isSingleValue(bytes) {
                        item(display, bytes, .success(format.arguments(bytes)))
                    } else {
                        let message = "not valid JSON: each input line must be one JSON value, e.g. 42, \"text\" or [1, 2] (--lines: each line is one string)"
                        item(display, InputFormat.quoted(text), .failure(InputError(message: message)))
                    }
                case .string:
                    if !text.isEmpty { item(display, InputFormat.quoted(text), .success(format.arguments(InputFormat.quoted(text)))) }
                case .csv:
                    pending += pending.isEmpty ? text : "\n" + text
                    guard let fields = CSV.fields(pending) else { continue }  // a quoted field goes on
                    pending = ""
                    if fields == [""] { continue }
                    guard let names = header else {
                        header = fields
                        continue
                    }
                    guard fields.count == names.count else {
                        item(display, InputFormat.quoted(text), .failure(InputError(message: "has \(fields.count) fields, the header has \(names.count); quote fields that contain commas, e.g. \"a, b\"")))
                        continue
                    }
                    let object = JSONValue.object(Dictionary(zip(names, fields.map(JSONValue.string)), uniquingKeysWith: { a, _ in a }))
                    let json = Array(object.description.utf8)
                    item(display, json, .success(JobArguments(jsonArray: json)))
                }
            }
            if !pending.isEmpty {
                item("\(name):\(number)", InputFormat.quoted(pending), .failure(InputError(message: "ends inside a quoted CSV field; close the quote with \"")))
            }
        }
    }
}

/// One input: its place, how messages name it, its JSON form (for `--tag` and the
/// joblog), and its arguments or why it has none.
struct InputItem: Sendable {
    var index: Int
    var display: String
    var json: [UInt8]
    var arguments: Result<JobArguments, InputError>
}

/// How an input's JSON becomes a job's arguments (`--lines`, `--strings`, `--csv`,
/// `--spread`, `--kwargs`).
struct InputFormat: Sendable {
    enum Kind: Sendable { case json, string, csv }
    var kind = Kind.json
    /// A JSON array is the positional arguments (else it is the one argument).
    var spread = true
    /// A JSON object is the keyword arguments (else it is the one argument).
    var kwargs = false

    /// The arguments for one input's JSON (already checked).
    func arguments(_ json: [UInt8]) -> JobArguments {
        let first = json.first { $0 != 0x20 && $0 != 0x09 && $0 != 0x0A && $0 != 0x0D }
        if (self.spread && first == UInt8(ascii: "[")) || (self.kwargs && first == UInt8(ascii: "{")) {
            return JobArguments(jsonArray: json)
        }
        return JobArguments(jsonArray: [UInt8(ascii: "[")] + json + [UInt8(ascii: "]")])
    }

    /// `text` as a JSON string.
    static func quoted(_ text: String) -> [UInt8] {
        var w = JSONWriter(capacity: text.utf8.count + 2)
        w.string(text)
        return w.bytes
    }
}

/// RFC 4180 fields: commas separate, double quotes enclose, `""` is a quote.
enum CSV {
    /// The fields of one record, or `nil` when it ends inside quotes (the record goes on
    /// on the next line).
    static func fields(_ text: String) -> [String]? {
        var fields: [String] = [], field = "", quoted = false, wasQuoted = false
        var chars = text.makeIterator()
        while let c = chars.next() {
            if quoted {
                if c == "\"" { quoted = false } else { field.append(c) }
            } else if c == "\"" {
                if wasQuoted { field.append("\"") }  // "" inside a quoted field
                quoted = true
                wasQuoted = true
            } else if c == "," {
                fields.append(field)
                (field, wasQuoted) = ("", false)
            } else {
                field.append(c)
            }
        }
        guard !quoted else { return nil }
        fields.append(field)
        return fields
    }
}

/// An input that cannot be a job.
struct InputError: Error {
    var message: String
}

/// Reads records (lines, or NUL-separated items) from a file descriptor in large chunks.
final class LineReader: @unchecked Sendable {
    // Used by the one producer thread only.
    private var input: ChunkedInput
    private var eof = false
    /// Where the search for the next separator goes on (bytes before it hold none).
    private var scanned = 0
    /// The byte that ends a record: newline, or NUL for `-0`.
    let separator: UInt8

    init(fd: Int32, separator: UInt8 = 10) {
        self.input = ChunkedInput(fd: fd)
        self.separator = separator
    }

    deinit {
        if self.input.fd > 2 { close(self.input.fd) }
    }

    /// The next record without its separator, or `nil` at the end.
    func next(beforeBlocking: () -> Void) -> ArraySlice<UInt8>? {
        while true {
            let from = self.input.start + self.scanned
            if let end = self.input.buffer[from...].firstIndex(of: self.separator) {
                defer { (self.input.start, self.scanned) = (end + 1, 0) }
                return self.input.buffer[self.input.start..<end]
            }
            self.scanned = self.input.buffer.count - self.input.start
            if self.eof {
                guard self.scanned > 0 else { return nil }
                defer { (self.input.start, self.scanned) = (self.input.buffer.count, 0) }
                return self.input.buffer[self.input.start...]
            }
            beforeBlocking()
            self.eof = !self.input.fill()
        }
    }
}

/// Bytes read from a file descriptor in large chunks (blocking reads), and how many of
/// them were consumed: what `LineReader` and `EngineFrameReader` parse.
struct ChunkedInput {
    let fd: Int32
    var buffer: [UInt8] = []
    /// Where the bytes not consumed yet start.
    var start = 0

    /// How many bytes are buffered and not consumed.
    var available: Int { self.buffer.count - self.start }

    /// Drops the consumed bytes and reads more; `false` at the end of the input (or at
    /// an error: the writer is gone).
    mutating func fill() -> Bool {
        self.buffer.removeFirst(self.start)
        self.start = 0
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = read(self.fd, &chunk, chunk.count)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return false }
            self.buffer += chunk[0..<n]
            return true
        }
    }
}
