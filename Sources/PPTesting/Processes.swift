// Helpers for tests about process life cycles: children from /proc, liveness that
// survives pid reuse, and commands run in the background with their output in files.

public import Foundation

/// One process, told apart from a later one with the same pid by its start time.
public struct ProcessIdentity: Hashable, Sendable, CustomStringConvertible {
    /// Its pid.
    public var pid: Int32
    /// Its start time in clock ticks since boot (/proc/PID/stat, field 22).
    public var startTime: UInt64

    /// The process `pid` now, or nil when there is none.
    public init?(pid: Int32) {
        guard let fields = procStatFields(pid), fields.count > 19, let start = UInt64(fields[19]) else { return nil }
        self.pid = pid
        self.startTime = start
    }

    /// The process `pid` that started at `startTime` (clock ticks since boot), whether
    /// or not it still runs.
    public init(pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// Whether this very process still runs (a zombie does not).
    public var isRunning: Bool {
        guard let fields = procStatFields(self.pid), fields.count > 19, UInt64(fields[19]) == self.startTime else { return false }
        return fields[0] != "Z" && fields[0] != "X"
    }

    /// Sends SIGKILL to it if it still runs (test clean-up).
    public func killIfRunning() {
        if self.isRunning { kill(self.pid, SIGKILL) }
    }

    public var description: String { "pid \(self.pid)" }
}

/// The fields of /proc/PID/stat after the command name: state first.
private func procStatFields(_ pid: Int32) -> [Substring]? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = text.lastIndex(of: ")")
    else { return nil }
    return text[text.index(after: close)...].split(separator: " ")
}

/// The children of process `pid`, from /proc/PID/task/*/children.
public func childProcesses(of pid: Int32) -> [ProcessIdentity] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    var out: [ProcessIdentity] = []
    for task in tasks {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8) else { continue }
        out += text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }.compactMap { ProcessIdentity(pid: $0) }
    }
    return out
}

/// A command running in the background, its stdin, stdout and stderr files (so that a
/// process it leaves behind cannot block the test on a pipe).
public final class BackgroundProcess: @unchecked Sendable {
    // Immutable after init; Process is thread-safe for these uses.
    /// The process.
    public let process: Process
    private let directory: TemporaryDirectory

    /// Starts `executable ARGUMENTS` reading `stdin`, with `PP_BROADCAST=off` unless
    /// `environment` says otherwise.
    public init(_ executable: String, _ arguments: [String], stdin: String = "", environment: [String: String] = [:], directory: String? = nil) throws {
        self.directory = try TemporaryDirectory("ppbg")
        let p = makeProcess(executable, arguments, environment: environment, directory: directory)
        p.standardInput = FileHandle(forReadingAtPath: try self.directory.write("in", stdin))
        p.standardOutput = FileHandle(forWritingAtPath: try self.directory.write("out", ""))
        p.standardError = FileHandle(forWritingAtPath: try self.directory.write("err", ""))
        self.process = p
        try p.run()
    }

    /// Its pid.
    public var pid: Int32 { self.process.processIdentifier }

    /// What it wrote to stdout so far (bytes that are not UTF-8 replaced).
    public var stdout: String { String(decoding: FileManager.default.contents(atPath: self.directory.path + "/out") ?? Data(), as: UTF8.self) }
    /// What it wrote to stderr so far (bytes that are not UTF-8 replaced).
    public var stderr: String { String(decoding: FileManager.default.contents(atPath: self.directory.path + "/err") ?? Data(), as: UTF8.self) }

    /// Sends a signal.
    public func signal(_ number: Int32) {
        kill(self.pid, number)
    }

    /// Waits for it to exit; returns its exit status, or 128 + the signal that killed it.
    public func wait() -> Int32 {
        self.process.waitUntilExit()
        return self.process.terminationReason == .uncaughtSignal ? 128 + self.process.terminationStatus : self.process.terminationStatus
    }

    /// Kills it (SIGKILL) if it still runs, waits for it and removes its output files.
    public func stop() {
        if self.process.isRunning { kill(self.pid, SIGKILL) }
        self.process.waitUntilExit()
        self.directory.remove()
    }
}
