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

    /// Calls `body` once per input, in order. `beforeBlocking` runs before a read that
    /// may wait (so work already read can start).
    func forEach(beforeBlocking: () -> Void, _ body: (Input) -> Void) {
        switch self {
        case .arguments(let args):
            for (i, text) in args.enumerated() {
                body(Input(index: i, display: text, arguments: .success(Self.argument(text))))
            }
        case .range(let r):
            for (i, v) in r.values.enumerated() {
                body(Input(index: i, display: String(v), arguments: .success(JobArguments(jsonArray: Array("[\(v)]".utf8)))))
            }
        case .lines(let reader, let name):
            var index = 0
            var lineNumber = 0
            while let line = reader.next(beforeBlocking: beforeBlocking) {
                lineNumber += 1
                let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
                if trimmed.isEmpty { continue }
                body(Input(index: index, display: "\(name):\(lineNumber): \(trimmed)", arguments: Self.jsonLine(trimmed)))
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

/// One input of `pprun map`.
struct Input {
    var index: Int
    var display: String
    var arguments: Result<JobArguments, InputError>
}

/// An input line that cannot be a job.
struct InputError: Error {
    var message: String
}

/// Reads lines from a file descriptor in large chunks.
final class LineReader: @unchecked Sendable {
    // Used by the one producer thread only.
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    private var eof = false

    init(fd: Int32) {
        self.fd = fd
    }

    deinit {
        if self.fd > 2 { close(self.fd) }
    }

    /// The next line without its newline, or `nil` at the end.
    func next(beforeBlocking: () -> Void) -> String? {
        while true {
            if let nl = self.buffer[self.start...].firstIndex(of: 10) {
                let line = String(decoding: self.buffer[self.start..<nl], as: UTF8.self)
                self.start = nl + 1
                return line
            }
            if self.eof {
                guard self.start < self.buffer.count else { return nil }
                let line = String(decoding: self.buffer[self.start...], as: UTF8.self)
                self.start = self.buffer.count
                return line
            }
            beforeBlocking()
            self.buffer.removeFirst(self.start)
            self.start = 0
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let n = chunk.withUnsafeMutableBytes { read(self.fd, $0.baseAddress, $0.count) }
            if n <= 0 {
                if n < 0, errno == EINTR { continue }
                self.eof = true
            } else {
                self.buffer.append(contentsOf: chunk[0..<n])
            }
        }
    }
}
