// Helpers shared by the test targets: temporary directories, running real processes,
// and finding the built commands.

public import Foundation

/// A directory under the system temp folder, removed by `remove()`.
public struct TemporaryDirectory: Sendable {
    /// The directory's path.
    public let path: String

    /// Creates a fresh directory.
    public init(_ prefix: String = "pptest") throws {
        var template = Array((NSTemporaryDirectory() + "/\(prefix).XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw CocoaError(.fileWriteUnknown) }
        self.path = String(cString: made)
    }

    /// Writes `text` to `name` in the directory and returns its path.
    @discardableResult
    public func write(_ name: String, _ text: String) throws -> String {
        let file = self.path + "/" + name
        // Not atomically: Foundation on Linux leaves a /tmp/TemporaryDirectory.* behind
        // for every atomic write (thousands over a day of test runs).
        try text.write(toFile: file, atomically: false, encoding: .utf8)
        return file
    }

    /// Deletes the directory and everything in it.
    public func remove() {
        try? FileManager.default.removeItem(atPath: self.path)
    }
}

/// What a finished process left behind.
public struct ProcessResult: Sendable {
    /// Its exit status (or 128 + signal).
    public var status: Int32
    /// Everything it wrote to stdout.
    public var stdout: String
    /// Everything it wrote to stderr.
    public var stderr: String

    /// stdout split into lines, without empty ones.
    public var lines: [String] { self.stdout.split(separator: "\n").map(String.init) }
}

/// A process for `executable ARGUMENTS` (not started), with this environment plus
/// `environment` and `PP_BROADCAST=off` unless either sets it.
public func makeProcess(_ executable: String, _ arguments: [String], environment: [String: String] = [:], directory: String? = nil) -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env["PP_BROADCAST"] = env["PP_BROADCAST"] ?? "off"
    for (k, v) in environment { env[k] = v }
    p.environment = env
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    return p
}

/// Runs a program to completion (a `BackgroundProcess` waited for), feeding `stdin`,
/// and collects its output.
///
/// - Parameters:
///   - executable: the program's path.
///   - arguments: its arguments.
///   - stdin: the text of its stdin (empty when `nil`).
///   - environment: extra environment variables.
///   - directory: its working directory.
public func runProcess(
    _ executable: String,
    _ arguments: [String],
    stdin: String? = nil,
    environment: [String: String] = [:],
    directory: String? = nil
) throws -> ProcessResult {
    let run = try BackgroundProcess(executable, arguments, stdin: stdin ?? "", environment: environment, directory: directory)
    defer { run.stop() }
    return ProcessResult(status: run.wait(), stdout: run.stdout, stderr: run.stderr)
}

/// Runs a Python snippet with `python3` and returns its stdout lines.
public func runPython(_ code: String) throws -> [String] {
    try runProcess("/usr/bin/env", ["python3", "-c", code]).lines
}

/// The directory holding the built products (the test binary's own directory).
public var productsDirectory: String {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    var url = URL(fileURLWithPath: exe).deletingLastPathComponent()
    // On Linux the test binary is `<products>/<Package>PackageTests.xctest`.
    if url.pathExtension == "xctest" { url = url.deletingLastPathComponent() }
    return url.path
}

/// The path of a built command such as `pprun`.
public func builtCommand(_ name: String) -> String {
    productsDirectory + "/" + name
}

/// The repository's root directory.
public let repositoryRoot: String = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A `ppnode` process started for a test, on a free port chosen by the kernel.
public final class NodeProcess: @unchecked Sendable {
    // `log` is written by the reader thread and read by the test under `lock`.
    /// The process.
    public let process: Process
    /// The port it listens on.
    public private(set) var port: Int = 0
    private var log = ""
    private let lock = NSLock()

    /// Starts `ppnode --port 0 ARGS` and waits (at most 20 s) until it is ready. Its
    /// pp-compatible listener is closed (ppnode's default) unless `arguments` open it:
    /// on loopback give `--pp-port 0`, so concurrent tests do not race for port 60000.
    ///
    /// - Parameters:
    ///   - arguments: extra flags.
    ///   - secret: the value of `PP_SECRET` for it.
    ///   - launcher: a command line that execs ppnode (such as `netlab exec LAB 1`), so
    ///     the process's pid is still the node's; with a launcher the node listens on
    ///     every address of its host and the default port unless `arguments` say otherwise.
    public init(_ arguments: [String] = [], secret: String?, environment: [String: String] = [:], launcher: [String] = []) throws {
        let defaults = launcher.isEmpty ? ["--port", "0", "--host", "127.0.0.1"] : []
        let command = launcher + [builtCommand("ppnode")] + defaults + ["--log-level", "debug"] + arguments
        let p = makeProcess(command[0], Array(command.dropFirst()), environment: environment)
        if environment["PP_SECRET"] == nil { p.environment?["PP_SECRET"] = secret }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        self.process = p
        try p.run()
        let ready = DispatchSemaphore(value: 0)
        Thread { [self] in
            let handle = err.fileHandleForReading
            var signalled = false
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                self.lock.lock()
                self.log += String(decoding: data, as: UTF8.self)
                let text = self.log
                self.lock.unlock()
                if !signalled, let line = text.split(separator: "\n").first(where: { $0.contains("ppnode ready") }),
                    let address = line.split(separator: " ").first(where: { $0.hasPrefix("address=") }),
                    let port = Int(address.split(separator: ":").last ?? "")
                {
                    self.port = port
                    signalled = true
                    ready.signal()
                }
            }
            if !signalled { ready.signal() }
        }.start()
        guard ready.wait(timeout: .now() + 20) == .success, self.port > 0 else {
            p.terminate()
            throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "ppnode did not start: \(self.logText)"])
        }
    }

    /// `127.0.0.1:PORT`.
    public var address: String { "127.0.0.1:\(self.port)" }

    /// Everything it logged so far.
    public var logText: String {
        self.lock.withLock { self.log }
    }

    /// The port of its pp-compatible listener, from its `pp.address=` log field; nil
    /// while (or when) that listener is not open.
    public var ppPort: Int? {
        guard let field = self.logText.split(whereSeparator: { $0 == " " || $0 == "\n" }).first(where: { $0.hasPrefix("pp.address=") }) else { return nil }
        return Int(field.split(separator: ":").last ?? "")
    }

    /// Sends a signal.
    public func signal(_ number: Int32) {
        kill(self.process.processIdentifier, number)
    }

    /// Kills it (SIGKILL) if it still runs and waits for it.
    public func stop() {
        if self.process.isRunning { self.signal(SIGKILL) }
        self.process.waitUntilExit()
    }

    /// Waits for it to exit and returns its status.
    public func wait() -> Int32 {
        self.process.waitUntilExit()
        return self.process.terminationStatus
    }
}
