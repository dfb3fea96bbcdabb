// Helpers shared by the test targets: temporary directories, running real processes,
// and finding the built commands.

import Foundation

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
        try text.write(toFile: file, atomically: true, encoding: .utf8)
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

/// Runs a program to completion, feeding `stdin`, and collects its output.
///
/// - Parameters:
///   - executable: the program's path.
///   - arguments: its arguments.
///   - stdin: bytes for its stdin (closed after).
///   - environment: extra environment variables.
///   - directory: its working directory.
public func runProcess(
    _ executable: String,
    _ arguments: [String],
    stdin: String? = nil,
    environment: [String: String] = [:],
    directory: String? = nil
) throws -> ProcessResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env["PP_BROADCAST"] = env["PP_BROADCAST"] ?? "off"
    for (k, v) in environment { env[k] = v }
    p.environment = env
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let out = Pipe(), err = Pipe(), inp = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = inp
    try p.run()
    if let stdin { inp.fileHandleForWriting.write(Data(stdin.utf8)) }
    try inp.fileHandleForWriting.close()
    // Read both pipes concurrently so neither fills up and blocks the child.
    let errBox = DataBox()
    let done = DispatchSemaphore(value: 0)
    Thread {
        errBox.data = err.fileHandleForReading.readDataToEndOfFile()
        done.signal()
    }.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    done.wait()
    let errData = errBox.data
    p.waitUntilExit()
    let status = p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
    return ProcessResult(
        status: status,
        stdout: String(decoding: outData, as: UTF8.self),
        stderr: String(decoding: errData, as: UTF8.self)
    )
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

/// Carries the stderr bytes out of the reader thread.
private final class DataBox: @unchecked Sendable {
    // Written by the reader thread before it signals; read after the wait.
    var data = Data()
}
