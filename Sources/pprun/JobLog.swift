import ArgumentParser
import Foundation
import PPCore

/// `--joblog FILE`: one JSON line per input that ended, in the order they ended:
/// `{"seq","input","status","attempts","seconds","ended","node","error"?}`. `seq`
/// counts inputs from 1; `status` is `ok`, `failed` or `bad input`; `seconds` is how
/// long the function ran; `ended` is Unix time. `--resume` reads it back.
final class JobLog: Sendable {
    private let fd: Int32

    /// Opens `path` for appending (`resume`) or from empty.
    init(path: String, resume: Bool) throws {
        self.fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (resume ? 0 : O_TRUNC), 0o644)
        guard self.fd >= 0 else { throw ValidationError("cannot open --joblog \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(self.fd) }

    /// Writes the record of one input that ended (nothing for one skipped by `--resume`).
    func record(_ item: InputItem, _ ending: MapRunner.Ending, attempts: Int) {
        var fields: [String: JSONValue] = ["seq": .int(item.index + 1), "attempts": .int(attempts), "ended": .double((Date().timeIntervalSince1970 * 1000).rounded() / 1000)]
        switch ending {
        case .skipped:
            return
        case .input(let error):
            fields["status"] = .string("bad input")
            fields["error"] = .string(error.message)
        case .job(let outcome):
            fields["node"] = .string(outcome.executor)
            fields["seconds"] = .double(Double(outcome.duration.nanosecondsInt64) / 1e9)
            if case .failure(let error) = outcome.result {
                fields["status"] = .string("failed")
                fields["error"] = .string(error.description)
            } else {
                fields["status"] = .string("ok")
            }
        }
        var w = JSONWriter(capacity: 128 + item.json.count)
        let text = JSONValue.object(fields).description
        w.raw(bytes: text.utf8.dropLast())
        w.raw(",\"input\":")
        w.raw(bytes: item.json)
        w.raw("}\n")
        Console.writeAll(fd: self.fd, w.bytes)
    }

    /// The inputs a joblog records as done: `seq - 1` → the input.
    static func succeeded(in path: String) throws -> [Int: JSONValue] {
        guard let data = FileManager.default.contents(atPath: path) else { return [:] }
        var done: [Int: JSONValue] = [:]
        for (n, line) in data.split(separator: 10).enumerated() {
            guard case .object(let o)? = try? JSONDecoder().decode(JSONValue.self, from: Data(line)), case .int(let seq)? = o["seq"], let input = o["input"] else {
                throw ValidationError("--resume: \(path):\(n + 1) is not a joblog record; give the --joblog file of the run to resume")
            }
            if o["status"] == .string("ok") { done[seq - 1] = input }
        }
        return done
    }
}
