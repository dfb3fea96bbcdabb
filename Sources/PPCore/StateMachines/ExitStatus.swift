internal import Foundation  // SIGKILL and the other signal numbers

/// How a process ended: what `waitpid` said, as a value. The worker pool's driver
/// reads it from the system; the pool's state machine turns it into the text of a
/// `workerDied` error ("exited with status 3", "was killed by signal 11 (SIGSEGV, a
/// crash in native code)").
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
        Self.signalNames[signal] ?? "signal \(signal)"
    }

    private static let signalNames: [CInt: String] = [
        SIGKILL: "SIGKILL", SIGSEGV: "SIGSEGV, a crash in native code", SIGABRT: "SIGABRT", SIGTERM: "SIGTERM", SIGINT: "SIGINT",
        SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGILL: "SIGILL", SIGHUP: "SIGHUP", SIGPIPE: "SIGPIPE",
    ]
}
