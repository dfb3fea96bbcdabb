import CPPSpawn
import Glibc
package import PPCore

/// A worker process: the leader of its own process group, with pipes on its stdin and
/// stdout.
///
/// Started by `pp_spawn` (Sources/CPPSpawn): own process group, SIGKILL when its parent
/// dies (PR_SET_PDEATHSIG), default signal handlers and an empty signal mask, no
/// descriptor of ours past stdio, and no `PP_SECRET` in its environment.
package struct ChildProcess: Sendable {
    /// The child's process id, also the id of its process group.
    package let pid: Int32
    /// Our end of the child's stdin (we write jobs here).
    package let stdinWrite: CInt
    /// Our end of the child's stdout (we read results here).
    package let stdoutRead: CInt

    /// Starts `arguments[0]` (looked up in `PATH` here, before the fork) with pipes on
    /// stdin and stdout; the child's stderr is ours.
    ///
    /// PR_SET_PDEATHSIG fires when the *thread* that forked exits, not only the
    /// process: call this only on a thread that outlives the child (the pool spawns on
    /// its event loop's thread, which lives until the pool has shut down and every
    /// worker was reaped).
    ///
    /// - Parameters:
    ///   - arguments: the program and its arguments.
    ///   - name: the child's `argv[0]` (what ps shows) in place of the program, a Python
    ///     interpreter's: `PYTHONEXECUTABLE` tells it the file it runs from (for
    ///     `sys.executable` and its venv), and it should drop that variable.
    /// - Throws: `SpawnError` when the pipes or the process cannot be created, or the
    ///   program cannot be executed (its errno comes back from the child).
    package static func spawn(_ arguments: [String], name: String? = nil) throws -> ChildProcess {
        let program = arguments[0]
        guard let path = Self.resolve(program) else { throw SpawnError(program: program, errno: ENOENT, step: "start") }
        let argv: [UnsafeMutablePointer<CChar>?] = ([name ?? program] + arguments.dropFirst()).map { strdup($0) } + [nil]
        let executable = name == nil ? nil : strdup("PYTHONEXECUTABLE=" + path)
        defer {
            for p in argv { free(p) }
            free(executable)
        }
        // The workers' environment is ours without the cluster secret: user code runs there.
        var envp: [UnsafeMutablePointer<CChar>?] = executable == nil ? [] : [executable]
        if var entry = Optional(environ) {
            while let variable = entry.pointee {
                if strncmp(variable, "PP_SECRET=", 10) != 0, executable == nil || strncmp(variable, "PYTHONEXECUTABLE=", 17) != 0 { envp.append(variable) }
                entry += 1
            }
        }
        envp.append(nil)
        var pid: pid_t = 0
        var stdinWrite: CInt = -1
        var stdoutRead: CInt = -1
        var step: CInt = 0
        let rc = path.withCString { p in
            argv.withUnsafeBufferPointer { a in
                envp.withUnsafeBufferPointer { e in
                    pp_spawn(p, a.baseAddress, e.baseAddress, &pid, &stdinWrite, &stdoutRead, &step)
                }
            }
        }
        guard rc == 0 else {
            throw SpawnError(program: program, errno: rc, step: step == PP_SPAWN_STEP_PIPE ? "pipe" : "start")
        }
        WorkerProcesses.register(pid)
        return ChildProcess(pid: pid, stdinWrite: stdinWrite, stdoutRead: stdoutRead)
    }

    /// The file `program` names: itself when it has a slash, else the first executable
    /// file of that name in `$PATH` (like execvp, but before the fork).
    static func resolve(_ program: String) -> String? {
        if program.contains("/") { return program }
        let path = getenv("PATH").flatMap { String(validatingCString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (dir.isEmpty ? "." : String(dir)) + "/" + program
            var st = stat()
            if stat(candidate, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// Sends SIGKILL to the child's whole process group (the worker and whatever its
    /// jobs started and left in the group). Safe until the child is reaped: while it is
    /// a zombie, neither its pid nor its group id can be reused.
    package func killGroup() {
        _ = Glibc.kill(-self.pid, SIGKILL)
    }

    /// Whether bytes wait in the child's stdout pipe, not read yet (`FIONREAD`; the
    /// descriptor stays open until the pool reaps the child).
    package func hasUnreadOutput() -> Bool {
        var waiting: CInt = 0
        return ioctl(self.stdoutRead, UInt(FIONREAD), &waiting) == 0 && waiting > 0
    }

    /// Whether the child has ended, without reaping it.
    package func hasEnded() -> Bool {
        // -1 (ECHILD) means it is not waitable any more: treat it as ended.
        pp_child_ended(self.pid) != 0
    }

    /// Kills what is left of its process group, forgets it in `WorkerProcesses` and
    /// reaps it. Call exactly once per child, after `hasEnded()` returned true.
    package func reap() -> ExitStatus {
        self.killGroup()
        WorkerProcesses.unregister(self.pid)
        let status = pp_reap(self.pid)
        if status < 0 { return .exited(-1) }
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }
}

/// A worker process could not be started.
public struct SpawnError: Error, Sendable, CustomStringConvertible {
    /// The program we tried to start.
    public var program: String
    /// The system error number.
    public var errno: CInt
    /// What failed: "pipe" or "start".
    public var step: String

    public var description: String {
        let reason = String(cString: strerror(self.errno))
        if self.step == "start" {
            return "cannot start '\(self.program)': \(reason); install Python 3 or point PP_PYTHON (or --python) at it"
        }
        return "cannot create a pipe for '\(self.program)': \(reason)"
    }
}
