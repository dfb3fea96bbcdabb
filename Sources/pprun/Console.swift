import Foundation

/// Writes to stdout and stderr without Foundation's buffering surprises.
enum Console {
    static let stderrIsTerminal = isatty(2) == 1

    /// Writes a line (or text) to stderr.
    static func error(_ text: String, newline: Bool = true) {
        var bytes = Array(text.utf8)
        if newline { bytes.append(10) }
        self.writeAll(fd: 2, bytes)
    }

    /// Writes every byte, retrying short writes; stops at an error (the reader is gone).
    static func writeAll(fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return }
            offset += n
        }
    }
}

/// A one-line progress bar on stderr, redrawn at most ten times a second.
final class Progress: @unchecked Sendable {
    // Used from the consumer loop of MapRunner only.
    private let total: Int?
    private let started = ContinuousClock.now
    private var lastDraw = ContinuousClock.now - .seconds(1)
    private var shown = false

    init(total: Int?) {
        self.total = total
    }

    func update(done: Int, failed: Int) {
        let now = ContinuousClock.now
        guard now - self.lastDraw >= .milliseconds(100) || done == self.total else { return }
        self.lastDraw = now
        let elapsed = max((now - self.started) / .seconds(1), 0.001)
        let rate = Double(done) / elapsed
        var line = "\(done) done"
        if let total, total > 0 {
            let width = 30
            let filled = min(width, done * width / total)
            line = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] \(done)/\(total)"
            if rate > 0, done < total { line += String(format: " ETA %.0fs", Double(total - done) / rate) }
        }
        line += String(format: " %.1f jobs/s", rate)
        if failed > 0 { line += " \(failed) failed" }
        Console.error("\r\u{1B}[2K" + line, newline: false)
        self.shown = true
    }

    func clear() {
        if self.shown { Console.error("\r\u{1B}[2K", newline: false) }
        self.lastDraw = ContinuousClock.now - .seconds(1)
    }

    func finish() {
        if self.shown { Console.error("") }
    }
}
