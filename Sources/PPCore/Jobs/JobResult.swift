/// How one job ended, as bytes: what a worker writes, a node sends in RESULTS and the
/// client's executors pass up. It is turned into a `JobOutcome` (text, a parsed
/// `JobError`) once, at the edge, by `outcome`.
public struct JobResult: Sendable {
    /// The job's id in its holder's id space.
    public var id: UInt64
    /// `nil` when the function returned; else why it failed.
    public var code: JobError.Code?
    /// Nanoseconds the function ran (0 when it did not run).
    public var nanoseconds: UInt64
    /// Captured stdout.
    public var stdout: [UInt8]
    /// Captured stderr.
    public var stderr: [UInt8]
    /// The value (JSON, or opaque bytes for an opaque job), or the error JSON
    /// `{"type","message","traceback"}`.
    public var payload: [UInt8]
    /// Where it ran (`"local"`, a node address). Not on the wire: the receiver sets it.
    public var executor: String

    /// Creates a result.
    public init(id: UInt64, code: JobError.Code?, nanoseconds: UInt64 = 0, stdout: [UInt8] = [], stderr: [UInt8] = [], payload: [UInt8], executor: String) {
        self.id = id
        self.code = code
        self.nanoseconds = nanoseconds
        self.stdout = stdout
        self.stderr = stderr
        self.payload = payload
        self.executor = executor
    }

    /// A result that is `error` (its message, Python type and traceback travel as error
    /// JSON; its captured output as `stdout` and `stderr`).
    public init(id: UInt64, error: JobError, executor: String) {
        self.init(
            id: id, code: error.code, stdout: Array(error.stdout.utf8), stderr: Array(error.stderr.utf8),
            payload: error.wireJSON, executor: error.executor ?? executor
        )
    }

    /// Whether the function returned a value.
    public var succeeded: Bool { self.code == nil }

    /// How long the function ran.
    public var duration: Duration { .nanoseconds(Int64(clamping: self.nanoseconds)) }

    /// The bytes this result takes inside a RESULTS body.
    public var encodedSize: Int { 29 + self.stdout.count + self.stderr.count + self.payload.count }

    /// The result for people and programs: text output and, for a failure, the error
    /// JSON parsed into a `JobError` that carries the output and the executor.
    public var outcome: JobOutcome {
        let stdout = String(decoding: self.stdout, as: UTF8.self)
        let stderr = String(decoding: self.stderr, as: UTF8.self)
        guard let code = self.code else {
            return JobOutcome(result: .success(self.payload), stdout: stdout, stderr: stderr, duration: self.duration, executor: self.executor)
        }
        var error = JobError(code: code, wireJSON: self.payload)
        error.stdout = stdout
        error.stderr = stderr
        error.executor = self.executor
        return JobOutcome(result: .failure(error), stdout: stdout, stderr: stderr, duration: self.duration, executor: self.executor)
    }
}
