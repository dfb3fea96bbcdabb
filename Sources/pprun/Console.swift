import Foundation
import PPWorkers
import Synchronization

/// Writes to stdout and stderr without Foundation's buffering surprises.
enum Console {
    static let stderrIsTerminal = isatty(2) == 1
    static let stdoutIsTerminal = isatty(1) == 1

    /// Writes a line (or text) to stderr.
    static func error(_ text: String, newline: Bool = true) {
        var bytes = Array(text.utf8)
        if newline { bytes.append(10) }
        self.writeAll(fd: 2, bytes)
    }

    /// Writes every byte, retrying short writes; stops at an error (the reader is gone).
    /// Returns whether every byte was written.
    @discardableResult
    static func writeAll(fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return false }
            offset += n
        }
        return true
    }

    /// The width of the terminal on stderr, in columns (80 when it does not say).
    static var stderrColumns: Int {
        var size = winsize()
        guard ioctl(2, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return 80 }
        return Int(size.ws_col)
    }
}

/// Ends a run at once: kills the workers (their queued and running jobs with them;
/// nodes drop the jobs of a connection that closes) and exits.
enum Stop {
    /// Set once every result is written: the watcher then lets the reader go.
    static let outputComplete = Atomic<Bool>(false)

    static func now(status: Int32) -> Never {
        WorkerProcesses.killAll()
        // Everything printed went out with write(2): leave without running other
        // threads' exit-time code under their feet.
        _exit(status)
    }

    /// The reader of stdout is gone (`pprun ... | head`): stop as GNU parallel does,
    /// with status 141 (128 + SIGPIPE), silently.
    static func outputClosed() -> Never {
        self.now(status: 128 + SIGPIPE)
    }

    /// When stdout is a pipe, watches it on a thread of its own and stops the run as
    /// soon as its reader closes it, even while no result is being written.
    static func watchOutput() {
        var info = stat()
        guard fstat(1, &info) == 0, info.st_mode & S_IFMT == S_IFIFO else { return }
        let watcher = Thread {
            var fd = pollfd(fd: 1, events: 0, revents: 0)
            while true {
                // A pipe's write end reports POLLERR once no reader is left.
                if poll(&fd, 1, -1) > 0, fd.revents & Int16(POLLERR | POLLHUP) != 0 {
                    if Self.outputComplete.load(ordering: .relaxed) { return }
                    Self.outputClosed()
                }
            }
        }
        watcher.stackSize = 1 << 16
        watcher.start()
    }
}

/// A one-line progress bar on stderr, cut to the terminal's width and redrawn at most
/// ten times a second; at the end, a summary line.
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
        var counts = "\(done) done"
        var eta = ""
        if let total, total > 0 {
            counts = "\(done)/\(total)"
            if rate > 0, done < total { eta = " ETA " + Self.clock(Double(total - done) / rate) }
        }
        var tail = " \(counts) \(Self.clock(elapsed))\(eta) " + String(format: "%.1f/s", rate)
        if failed > 0 { tail += " \(failed) failed" }
        // One column short of the width: writing the last column would wrap the line
        // on some terminals, and each redraw would leave a line behind.
        let width = Console.stderrColumns - 1
        var line = String(tail.dropFirst().prefix(width))
        if let total, total > 0, width - tail.count >= 7 {
            let bar = min(40, width - tail.count - 2)
            let filled = min(bar, done * bar / total)
            line = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: bar - filled) + "]" + tail
        }
        Console.error("\r\u{1B}[2K" + line, newline: false)
        self.shown = true
    }

    func clear() {
        if self.shown { Console.error("\r\u{1B}[2K", newline: false) }
        self.lastDraw = ContinuousClock.now - .seconds(1)
    }

    /// Replaces the bar with a summary line.
    func finish(done: Int, failed: Int) {
        let elapsed = (ContinuousClock.now - self.started) / .seconds(1)
        self.clear()
        Console.error("pprun: \(done) \(done == 1 ? "job" : "jobs") in \(Self.clock(elapsed))" + (failed > 0 ? ", \(failed) failed" : ""))
    }

    /// `12.3s`, `4m05s`, `2h03m`.
    static func clock(_ seconds: Double) -> String {
        let s = Int(seconds)
        if s < 60 { return String(format: "%.1fs", seconds) }
        if s < 3600 { return String(format: "%dm%02ds", s / 60, s % 60) }
        return String(format: "%dh%02dm", s / 3600, s % 3600 / 60)
    }
}
