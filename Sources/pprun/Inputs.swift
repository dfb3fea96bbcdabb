import ArgumentParser
import Foundation
import PPCore
import ParallelPython

/// Where `pprun map` reads its inputs.
enum InputSource {
    case arguments([String])
    case range(RangeSpec)
    case lines(LineReader, name: String)

    /// The number of inputs, when known before reading them.
    var count: Int? {
        switch self {
        case .arguments(let a): a.count
        case .range(let r): r.count
        case .lines: nil
        }
    }

    /// Calls `body` once per input, in order, with its index, how to name it in
    /// messages, and its arguments (or why it has none). `beforeBlocking` runs before a
    /// read that may wait (so work already read can start).
    func forEach(beforeBlocking: () -> Void, _ body: (Int, String, Result<JobArguments, InputError>) -> Void) {
        switch self {
        case .arguments(let args):
            for (i, text) in args.enumerated() { body(i, text, .success(Self.argument(text))) }
        case .range(let r):
            for (i, v) in r.values.enumerated() { body(i, String(v), .success(JobArguments(jsonArray: Array("[\(v)]".utf8)))) }
        case .lines(let reader, let name):
            var index = 0
            var lineNumber = 0
            while let line = reader.next(beforeBlocking: beforeBlocking) {
                lineNumber += 1
                let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
                if trimmed.isEmpty { continue }
                body(index, "\(name):\(lineNumber): \(trimmed)", Self.jsonLine(trimmed))
                index += 1
            }
        }
    }

    /// An ARG: its JSON value when it parses as JSON, else the string itself.
    static func argument(_ text: String) -> JobArguments {
        if let data = text.data(using: .utf8), (try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])) != nil {
            return JobArguments(jsonArray: Array("[\(text)]".utf8))
        }
        return JobArguments(jsonArray: Array(JSONValue.array([.string(text)]).description.utf8))
    }

    /// A JSON line: an array is the positional arguments, anything else the single one.
    static func jsonLine(_ text: String) -> Result<JobArguments, InputError> {
        let data = Data(text.utf8)
        do {
            let value = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
            if value is [Any] { return .success(JobArguments(jsonArray: Array(text.utf8))) }
            return .success(JobArguments(jsonArray: Array("[\(text)]".utf8)))
        } catch {
            return .failure(InputError(message: "not valid JSON (\(Self.describe(error))); each input line must be one JSON value, e.g. 42, \"text\" or [1, 2]"))
        }
    }

    private static func describe(_ error: any Error) -> String {
        let ns = error as NSError
        return (ns.userInfo[NSDebugDescriptionErrorKey] as? String) ?? ns.localizedDescription
    }
}

/// An input line that cannot be a job.
struct InputError: Error {
    var message: String
}

/// Reads lines from a file descriptor in large chunks.
final class LineReader: @unchecked Sendable {
    // Used by the one producer thread only.
    private var input: ChunkedInput
    private var eof = false

    init(fd: Int32) {
        self.input = ChunkedInput(fd: fd)
    }

    deinit {
        if self.input.fd > 2 { close(self.input.fd) }
    }

    /// The next line without its newline, or `nil` at the end.
    func next(beforeBlocking: () -> Void) -> String? {
        while true {
            let rest = self.input.buffer[self.input.start...]
            if let nl = rest.firstIndex(of: 10) {
                self.input.start = nl + 1
                return String(decoding: rest[..<nl], as: UTF8.self)
            }
            if self.eof {
                guard !rest.isEmpty else { return nil }
                self.input.start = self.input.buffer.count
                return String(decoding: rest, as: UTF8.self)
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
