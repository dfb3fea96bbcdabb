#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A child process started with pipes on its stdin and stdout.
package struct ChildProcess: Sendable {
    /// The child's process id.
    package let pid: Int32
    /// Our end of the child's stdin (we write jobs here).
    package let stdinWrite: CInt
    /// Our end of the child's stdout (we read results here).
    package let stdoutRead: CInt

    /// Starts `arguments[0]` (looked up in `PATH`) with pipes on stdin and stdout; the
    /// child's stderr is ours.
    ///
    /// - Parameter arguments: the program and its arguments.
    /// - Throws: `SpawnError` when the pipes or the process cannot be created.
    package static func spawn(_ arguments: [String]) throws -> ChildProcess {
        var toChild: [CInt] = [-1, -1]
        var fromChild: [CInt] = [-1, -1]
        guard pipe(&toChild) == 0 else { throw SpawnError(program: arguments[0], errno: errno, step: "pipe") }
        guard pipe(&fromChild) == 0 else {
            let e = errno
            close(toChild[0]); close(toChild[1])
            throw SpawnError(program: arguments[0], errno: e, step: "pipe")
        }
        // Our ends must not leak into other children, or a worker would never see EOF.
        for fd in [toChild[0], toChild[1], fromChild[0], fromChild[1]] { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)

        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
        close(toChild[0])
        close(fromChild[1])
        guard rc == 0 else {
            close(toChild[1]); close(fromChild[0])
            throw SpawnError(program: arguments[0], errno: rc, step: "start")
        }
        return ChildProcess(pid: pid, stdinWrite: toChild[1], stdoutRead: fromChild[0])
    }

    /// Sends `signal` to the process.
    package func kill(_ signal: CInt = SIGKILL) {
        _ = Glibc.kill(self.pid, signal)
    }

    /// Waits (blocking) for the process to end and returns how it ended.
    package func wait() -> ExitStatus {
        var status: CInt = 0
        while waitpid(self.pid, &status, 0) < 0 {
            if errno != EINTR { return .exited(-1) }
        }
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }
}

/// How a process ended.
public enum ExitStatus: Sendable, Hashable, CustomStringConvertible {
    /// It exited with this status.
    case exited(CInt)
    /// A signal killed it.
    case signaled(CInt)

    public var description: String {
        switch self {
        case .exited(let code): return "exited with status \(code)"
        case .signaled(let signal): return "was killed by signal \(signal) (\(Self.signalName(signal)))"
        }
    }

    /// The conventional name of a signal number.
    public static func signalName(_ signal: CInt) -> String {
        switch signal {
        case SIGKILL: return "SIGKILL"
        case SIGSEGV: return "SIGSEGV, a crash in native code"
        case SIGABRT: return "SIGABRT"
        case SIGTERM: return "SIGTERM"
        case SIGINT: return "SIGINT"
        case SIGBUS: return "SIGBUS"
        case SIGFPE: return "SIGFPE"
        case SIGILL: return "SIGILL"
        case SIGHUP: return "SIGHUP"
        case SIGPIPE: return "SIGPIPE"
        default: return "signal \(signal)"
        }
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
