import Foundation
import PPCore

/// A pyenv shim, and the real interpreter behind it remembered across runs.
///
/// A shim is a bash script that runs `pyenv exec` to pick a Python at every start (about
/// 100 ms more than the interpreter itself on the development machine). Which Python it
/// picks depends only on what `pyenv version-name` reads: `PYENV_VERSION`; else the
/// nearest `.python-version` from `PYENV_DIR` (default: the current directory) up to
/// `/`; else `PYENV_ROOT/version`. So once a worker started through the shim has said
/// which interpreter it is, later pools whose selection reads the same start that
/// interpreter directly: a changed version file, `pyenv local`, `pyenv global` or
/// `pyenv shell` changes the selection, and the next pool goes through the shim again.
/// Other wrappers are not cached: what they depend on is unknown.
struct PyenvShim: Sendable {
    /// The shim's file.
    let path: String
    /// The `PYENV_ROOT` the shim exports.
    let root: String

    /// Reads `path` as a pyenv shim; `nil` for any other file.
    init?(path: String) {
        // At most 4 KiB is read: the configured interpreter is usually a binary of megabytes.
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 4097)
        let count = head.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 2, count < head.count, head[0] == UInt8(ascii: "#"), head[1] == UInt8(ascii: "!") else { return nil }
        let text = String(decoding: head.prefix(count), as: UTF8.self)
        let prefix = "export PYENV_ROOT=\""
        guard text.contains("pyenv\" exec \"$program\""),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) && $0.hasSuffix("\"") && $0.count > prefix.count + 1 })
        else { return nil }
        self.path = path
        self.root = String(line.dropFirst(prefix.count).dropLast())
    }

    /// What makes pyenv pick a version now, as one string: equal strings, same Python.
    ///
    /// - Parameters:
    ///   - environment: the environment the shim would run with.
    ///   - directory: the current directory (`PYENV_DIR`'s default).
    func selection(environment: [String: String], directory: String) -> String {
        var parts = [self.path, self.root]
        for key in ["PYENV_VERSION", "PYENV_DIR", "VIRTUAL_ENV", "PYENV_VIRTUAL_ENV"] {
            parts.append("\(key)=\(environment[key] ?? "")")
        }
        if (environment["PYENV_VERSION"] ?? "").isEmpty {
            let start = environment["PYENV_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? directory
            let file = Self.nearestVersionFile(from: start) ?? "\(self.root)/version"
            parts += [file, (try? String(contentsOfFile: file, encoding: .utf8)) ?? "(none)"]
        }
        return parts.joined(separator: "\u{0}")
    }

    /// The current directory as pyenv's bash sees it: `$PWD` when it names this
    /// directory (a path through a symbolic link may), else the physical path.
    static func currentDirectory(environment: [String: String]) -> String {
        var here = stat(), there = stat()
        if let pwd = environment["PWD"], pwd.hasPrefix("/"), stat(".", &here) == 0, stat(pwd, &there) == 0, here.st_dev == there.st_dev, here.st_ino == there.st_ino {
            return pwd
        }
        return FileManager.default.currentDirectoryPath
    }

    /// The nearest `.python-version` in `directory` or above it.
    static func nearestVersionFile(from directory: String) -> String? {
        var dir = directory
        while true {
            let candidate = (dir == "/" ? "" : dir) + "/.python-version"
            var st = stat()
            if stat(candidate, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { return candidate }
            guard dir != "/", !dir.isEmpty, let slash = dir.lastIndex(of: "/") else { return nil }
            dir = slash == dir.startIndex ? "/" : String(dir[..<slash])
        }
    }
}

/// The interpreters found behind pyenv shims, by selection (`PyenvShim.selection`): one
/// line per selection, its SHA-256 and the interpreter's path, at most 32 lines, the
/// newest last. Written whole and renamed into place, so concurrent runs never read half
/// a file; the last writer wins.
struct InterpreterCache: Sendable {
    /// The cache file.
    let file: String

    /// The file in `$XDG_CACHE_HOME` or `~/.cache`: `parallelpython/interpreters`;
    /// `nil` without a home.
    static var userFile: String? {
        let environment = ProcessInfo.processInfo.environment
        let base = environment["XDG_CACHE_HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? environment["HOME"].flatMap { $0.isEmpty ? nil : $0 + "/.cache" }
        return base.map { $0 + "/parallelpython/interpreters" }
    }

    /// The interpreter recorded for `selection`, if it is still an executable file. A
    /// file or folder that is not ours alone (another owner, writable by group or
    /// others) is not read: the file names the program every worker runs.
    func interpreter(for selection: String) -> String? {
        let key = Self.key(selection)
        guard Self.isOurs(self.file), Self.isOurs((self.file as NSString).deletingLastPathComponent),
            let text = try? String(contentsOfFile: self.file, encoding: .utf8)
        else { return nil }
        for line in text.split(separator: "\n").reversed() {
            let fields = line.split(separator: "\t", maxSplits: 1)
            if fields.count == 2, fields[0] == key, fields[1].hasPrefix("/"), access(String(fields[1]), X_OK) == 0 { return String(fields[1]) }
        }
        return nil
    }

    /// Records `interpreter` for `selection`. Failures are ignored: the cache only saves time.
    func record(_ interpreter: String, for selection: String) {
        guard !interpreter.contains("\n"), !interpreter.contains("\t") else { return }
        let key = Self.key(selection)
        let old = ((try? String(contentsOfFile: self.file, encoding: .utf8)) ?? "").split(separator: "\n").filter {
            // Other selections' well-formed lines only: 64 hex digits, a tab, a path.
            $0.count > 66 && $0.dropFirst(64).hasPrefix("\t/") && !$0.hasPrefix(key + "\t")
        }
        let lines = old.suffix(31) + ["\(key)\t\(interpreter)"]
        let directory = (self.file as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let temporary = "\(self.file).\(getpid()).tmp"
        let text = Data((lines.joined(separator: "\n") + "\n").utf8)
        guard FileManager.default.createFile(atPath: temporary, contents: text, attributes: [.posixPermissions: 0o644]) else { return }
        if rename(temporary, self.file) != 0 { unlink(temporary) }
    }

    /// Whether `path` belongs to this user and only this user may change it.
    private static func isOurs(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && st.st_uid == getuid() && st.st_mode & 0o022 == 0
    }

    private static func key(_ selection: String) -> String {
        SHA256Digest(hashing: Array(selection.utf8)).hex
    }
}
