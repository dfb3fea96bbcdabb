/// Why a job ended without a value. Every job ends exactly once, with a value or with
/// one of these.
public struct JobError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// What people read: `"timeout"`, `"python exception"`. Each code has its own.
        private let name: String

        /// The function raised an exception; `pythonType`, `message` and `traceback` say which.
        public static let pythonException = Code(name: "python exception")
        /// The function returned a value JSON cannot encode (a set, an object, NaN).
        public static let resultNotJSON = Code(name: "result not JSON")
        /// The arguments were not a JSON array the worker could decode.
        public static let badArguments = Code(name: "bad arguments")
        /// The function's bundle did not load: a syntax error, a failing import, a missing name.
        public static let functionUnavailable = Code(name: "function unavailable")
        /// The job ran past its timeout; its worker was killed and replaced.
        public static let timeout = Code(name: "timeout")
        /// The worker process died while running the job (exit, signal, crash).
        public static let workerDied = Code(name: "worker died")
        /// The caller cancelled the job before it ran.
        public static let cancelled = Code(name: "cancelled")
        /// The job server shut down before the job ran.
        public static let shutdown = Code(name: "shut down")
        /// A worker or a node broke its protocol.
        public static let protocolError = Code(name: "protocol error")
        /// The nodes that ran the job were lost, and its retries are used up.
        public static let nodeLost = Code(name: "node lost")
        /// No local worker and no node could take the job for too long.
        public static let noExecutor = Code(name: "no executor")
        /// The job's result (value, output and error text together) is larger than the
        /// receiver's frame limit; only this job fails.
        public static let resultTooLarge = Code(name: "result too large")

        public var description: String { self.name }
    }

    /// The kind of failure.
    public var code: Code
    /// The Python exception type (`"ZeroDivisionError"`, `"mymodule.MyError"`), if any.
    public var pythonType: String?
    /// A one-line human description.
    public var message: String
    /// The formatted Python traceback, empty when there is none.
    public var traceback: String
    /// What the job printed to stdout before it failed.
    public var stdout: String
    /// What the job printed to stderr before it failed.
    public var stderr: String
    /// Where the job ran (`"local"`, a node address), when known.
    public var executor: String?

    /// Creates an error.
    public init(
        code: Code,
        message: String,
        pythonType: String? = nil,
        traceback: String = "",
        stdout: String = "",
        stderr: String = "",
        executor: String? = nil
    ) {
        self.code = code
        self.message = message
        self.pythonType = pythonType
        self.traceback = traceback
        self.stdout = stdout
        self.stderr = stderr
        self.executor = executor
    }

    public var description: String {
        if let pythonType, !pythonType.isEmpty, !self.message.hasPrefix(pythonType) {
            return "\(self.code): \(pythonType): \(self.message)"
        }
        return "\(self.code): \(self.message)"
    }
}
