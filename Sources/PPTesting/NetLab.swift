// Simulated hosts for tests that need several machines: network namespaces on one
// bridge (scripts/netlab; ../shared/NETLAB.md), and processes watched while they run.
// Needs root.

public import Foundation

/// One simulated LAN, deleted by `down()`.
public final class Lab: Sendable {
    public let name: String
    public let script = repositoryRoot + "/scripts/netlab"

    /// Brings up `hosts` hosts (scripts/netlab up).
    public init(hosts: Int) throws {
        let letters = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        self.name = "pp" + String((0..<5).map { _ in letters.randomElement()! })
        let r = try runProcess(self.script, ["up", self.name, String(hosts)])
        guard r.status == 0 else {
            _ = try? runProcess(self.script, ["down", self.name])
            throw LabError(text: "netlab up failed (status \(r.status)): \(r.stderr)")
        }
    }

    /// The command prefix that runs a program on host `i`.
    public func launcher(_ i: Int) -> [String] { [self.script, "exec", self.name, String(i)] }

    /// Runs a program on host `i` to completion.
    public func run(_ i: Int, _ command: String, _ arguments: [String], environment: [String: String] = [:]) throws -> ProcessResult {
        try runProcess(self.script, ["exec", self.name, String(i), builtCommand(command)] + arguments, environment: environment)
    }

    /// Starts a ppnode on host `i` (listening on 0.0.0.0:7340).
    public func node(_ i: Int, _ arguments: [String] = [], secret: String) throws -> NodeProcess {
        try NodeProcess(arguments, secret: secret, launcher: self.launcher(i))
    }

    public func avahi(_ i: Int, _ action: String) throws {
        let r = try runProcess(self.script, ["avahi", self.name, String(i), action])
        guard r.status == 0 else { throw LabError(text: "netlab avahi \(action) failed: \(r.stderr)") }
    }

    public func down() {
        _ = try? runProcess(self.script, ["down", self.name])
    }
}

public struct LabError: Error, CustomStringConvertible {
    public var text: String
    public var description: String { self.text }
}

/// A process whose stdout lines are collected while it runs (a pprun run watched by a test).
public final class WatchedProcess: @unchecked Sendable {
    // `out` and `err` are appended by reader threads under `lock`.
    public let process = Process()
    private let lock = NSLock()
    private var out = ""
    private var err = ""
    private let finished = DispatchGroup()

    public init(_ command: [String], environment: [String: String]) throws {
        self.process.executableURL = URL(fileURLWithPath: command[0])
        self.process.arguments = Array(command.dropFirst())
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        self.process.environment = env
        let o = Pipe(), e = Pipe()
        self.process.standardOutput = o
        self.process.standardError = e
        self.process.standardInput = FileHandle.nullDevice
        try self.process.run()
        for (pipe, isOut) in [(o, true), (e, false)] {
            self.finished.enter()
            Thread { [self] in
                while true {
                    let data = pipe.fileHandleForReading.availableData
                    if data.isEmpty { break }
                    self.lock.withLock { if isOut { self.out += String(decoding: data, as: UTF8.self) } else { self.err += String(decoding: data, as: UTF8.self) } }
                }
                self.finished.leave()
            }.start()
        }
    }

    public var lines: [String] {
        self.lock.withLock { self.out }.split(separator: "\n").map(String.init)
    }

    public var stderr: String {
        self.lock.withLock { self.err }
    }

    /// Waits (bounded) until `condition` holds; false on timeout, or when the process
    /// ended without it holding.
    @discardableResult
    public func wait(seconds: Double, until condition: ([String]) -> Bool) -> Bool {
        waitFor(seconds: seconds) { condition(self.lines) || !self.process.isRunning } && condition(self.lines)
    }

    /// Waits (at most `seconds`) for the exit; kills it after that. Returns the status.
    public func finish(seconds: Double) -> Int32 {
        let deadline = Date().addingTimeInterval(seconds)
        while self.process.isRunning, Date() < deadline { usleep(20_000) }
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
        self.process.waitUntilExit()
        _ = self.finished.wait(timeout: .now() + 5)
        return self.process.terminationStatus
    }
}

/// Polls `condition` every 20 ms for at most `seconds`.
public func waitFor(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

