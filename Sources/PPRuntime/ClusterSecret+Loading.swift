public import PPCore
import Foundation

// MARK: Finding, reading and creating the secret file

extension ClusterSecret {
    /// The implicit default secret file: `$XDG_CONFIG_HOME/ppnode/secret`, else
    /// `~/.config/ppnode/secret`. It is the only secret file ever created, and only by
    /// ppnode (`load(..., create: true)`), when no secret is given at all.
    public static var defaultFile: String {
        let env = ProcessInfo.processInfo.environment
        if let x = env["XDG_CONFIG_HOME"], !x.isEmpty { return x + "/ppnode/secret" }
        let home = env["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + "/.config/ppnode/secret"
    }

    /// Whether the environment names a secret: `PP_SECRET` or `PP_SECRET_FILE` is set
    /// and not empty. A secret the user named that cannot be used is an error, not a
    /// reason to run without nodes.
    public static var isNamedByEnvironment: Bool {
        ["PP_SECRET", "PP_SECRET_FILE"].contains { !(ProcessInfo.processInfo.environment[$0] ?? "").isEmpty }
    }

    /// Finds the secret, in this order: `file` (a `--secret-file` flag or config key),
    /// the `PP_SECRET` environment variable, the file `$PP_SECRET_FILE`, the default
    /// file (`defaultFile`).
    ///
    /// An explicit file (`file`, `PP_SECRET_FILE`) must exist: a wrong path is an error,
    /// never a new secret (a new secret is a new cluster). Only the default file is
    /// created, and only when `create` is true.
    ///
    /// - Parameters:
    ///   - file: an explicit secret file, or `nil`.
    ///   - origin: where `file` came from, for messages (`--secret-file`, a config line).
    ///   - create: create the default file (random, mode 0600) when no secret exists.
    /// - Returns: the secret and whether this call created it.
    /// - Throws: `SecretError` when there is none (and `create` is false) or it is
    ///   unusable; the message names the fix.
    public static func load(file: String?, origin: String = "--secret-file", create: Bool) throws -> (secret: ClusterSecret, created: Bool) {
        if let file { return (try Self.read(file, origin: origin), false) }
        let env = ProcessInfo.processInfo.environment
        if let text = env["PP_SECRET"] { return (try ClusterSecret(text: text, origin: "PP_SECRET"), false) }
        if let file = env["PP_SECRET_FILE"], !file.isEmpty { return (try Self.read(file, origin: "PP_SECRET_FILE"), false) }
        let path = Self.defaultFile
        if let secret = try Self.readIfPresent(path) { return (secret, false) }
        guard create else {
            throw SecretError(message: "no cluster secret: give --secret-file, set PP_SECRET or PP_SECRET_FILE, or copy a node's secret file to \(path)")
        }
        return try Self.create(at: path)
    }

    /// Reads an explicit secret file, which must exist.
    ///
    /// - Parameter origin: where the path came from, for the message when it is missing.
    static func read(_ path: String, origin: String = "--secret-file") throws -> ClusterSecret {
        guard let secret = try Self.readIfPresent(path) else {
            throw SecretError(
                message: "the secret file \(path) (from \(origin)) does not exist; fix the path or copy your cluster's secret file there (only the default file \(Self.defaultFile) is created, by ppnode, when no secret is given)"
            )
        }
        return secret
    }

    /// Reads a secret file; `nil` when there is no file at `path`.
    ///
    /// The file (or, for a symbolic link, its target) must be a regular file owned by
    /// this user with no group or other permission bits; it is checked on the open
    /// descriptor, so what is checked is what is read.
    static func readIfPresent(_ path: String) throws -> ClusterSecret? {
        // O_NONBLOCK: a FIFO planted at the path must not hang us before the check.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        guard fd >= 0 else {
            let e = errno
            if e == ENOENT {
                if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path) {
                    throw SecretError(message: "the secret file \(path) is a symbolic link to \(target), which does not exist; point the link at the secret file or remove it")
                }
                return nil
            }
            throw SecretError(message: "cannot read the secret file \(path): \(String(cString: strerror(e))); check the path and its permissions")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw SecretError(message: "cannot read the secret file \(path): \(String(cString: strerror(errno)))")
        }
        // For messages: a link is named with its target (chmod and chown follow links).
        var shown = path, target = path
        if (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) != nil {
            target = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
            shown = "\(path) (a link to \(target))"
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw SecretError(message: "the secret file \(shown) is not a regular file; point the secret file setting at a file holding the secret")
        }
        let mode = Int(st.st_mode & 0o7777)
        guard mode & 0o077 == 0 else {
            throw SecretError(
                message: "the secret file \(shown) has mode \(String(format: "%04o", UInt32(mode))): group or others may read or change it; run chmod 600 \(target)"
            )
        }
        let me = geteuid()
        guard st.st_uid == me else {
            throw SecretError(
                message: "the secret file \(shown) is owned by \(Self.user(st.st_uid)), not by \(Self.user(me)), the user this runs as; run chown \(Self.userName(me) ?? String(me)) \(target), or run as its owner"
            )
        }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = Glibc.read(fd, &buffer, buffer.count)
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                throw SecretError(message: "cannot read the secret file \(shown): \(String(cString: strerror(errno)))")
            }
            data += buffer[0..<n]
            guard data.count <= 65536 else {
                throw SecretError(message: "the secret file \(shown) is larger than 64 KiB; it should hold one line, the secret")
            }
        }
        return try ClusterSecret(text: String(decoding: data, as: UTF8.self), origin: path)
    }

    /// Creates the secret file at `path` with 32 random bytes in hex, mode 0600 (parents
    /// made 0700), or reads the one another process created first.
    ///
    /// The secret is written to a temporary file (mode 0600) in the same directory and
    /// hard-linked to `path`: the name appears only with the whole secret behind it, and
    /// of processes starting together exactly one links its file; the others find the
    /// name taken (EEXIST) and read the winner's. All of them end with one secret.
    ///
    /// - Returns: the secret, and whether this call created it.
    static func create(at path: String) throws -> (secret: ClusterSecret, created: Bool) {
        let text = Hex.encode(randomBytes(32)) + "\n"
        let temporary = try Self.writeTemporary(text, for: path)
        defer { unlink(temporary) }
        if link(temporary, path) == 0 {
            return (try ClusterSecret(text: text, origin: path), true)
        }
        let e = errno
        if e == EEXIST, let winner = try Self.readIfPresent(path) {
            return (winner, false)
        }
        throw SecretError(message: "cannot create the secret file \(path): \(String(cString: strerror(e))); give --secret-file or PP_SECRET")
    }

    /// Installs a secret copied from another machine as the file `path` (mode 0600,
    /// parents made 0700), atomically.
    ///
    /// - Parameters:
    ///   - text: the secret, as `ppnode secret --show` printed it.
    ///   - origin: where the text came from, for messages.
    ///   - replace: replace a different secret already at `path` (a new cluster for
    ///     this machine); without it that is an error.
    /// - Returns: the secret, and whether the file changed (false: it held it already).
    /// - Throws: `SecretError` naming the fix.
    public static func install(_ text: String, origin: String, at path: String, replace: Bool) throws -> (secret: ClusterSecret, changed: Bool) {
        let secret = try ClusterSecret(text: text, origin: origin)
        if let old = try Self.readIfPresent(path) {
            if old.bytes == secret.bytes { return (old, false) }
            guard replace else {
                throw SecretError(message: "\(path) already holds another secret (key id \(old.keyID)); add --force to replace it (this machine then leaves that cluster)")
            }
        }
        let temporary = try Self.writeTemporary(String(decoding: secret.bytes, as: UTF8.self) + "\n", for: path)
        guard rename(temporary, path) == 0 else {
            let e = errno
            unlink(temporary)
            throw SecretError(message: "cannot write the secret file \(path): \(String(cString: strerror(e))); check the permissions of its directory")
        }
        return (try ClusterSecret(text: text, origin: path), true)
    }

    /// Writes `text` to a new temporary file (mode 0600, synced) next to `path`, whose
    /// directory it creates (0700) when missing; returns the temporary file's path.
    private static func writeTemporary(_ text: String, for path: String) throws -> String {
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var template = Array("\(dir)/.secret.XXXXXX".utf8CString)
        let fd = mkstemp(&template)  // mode 0600
        guard fd >= 0 else {
            throw SecretError(message: "cannot create the secret file \(path): \(String(cString: strerror(errno))); give --secret-file or PP_SECRET")
        }
        let temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let written = fchmod(fd, 0o600) == 0 && write(fd, text, text.utf8.count) == text.utf8.count && fsync(fd) == 0
        let writeErrno = errno
        close(fd)
        guard written else {
            unlink(temporary)
            throw SecretError(message: "cannot write the secret file \(path): \(String(cString: strerror(writeErrno))); give --secret-file or PP_SECRET")
        }
        return temporary
    }

    private static func userName(_ uid: uid_t) -> String? {
        guard let pw = getpwuid(uid), let name = pw.pointee.pw_name else { return nil }
        return String(cString: name)
    }

    private static func user(_ uid: uid_t) -> String {
        Self.userName(uid).map { "\($0) (uid \(uid))" } ?? "uid \(uid)"
    }
}
