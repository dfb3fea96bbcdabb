/// How one job ended, as an executor reports it: the result's JSON bytes or an error,
/// plus what the job printed and how long it ran.
public struct JobOutcome: Sendable {
    /// The JSON encoding of the return value, or the error.
    public var result: Result<[UInt8], JobError>
    /// Captured stdout of the job (UTF-8, at most 1 MiB).
    public var stdout: String
    /// Captured stderr of the job (UTF-8, at most 1 MiB).
    public var stderr: String
    /// Time the function itself ran, measured inside the worker.
    public var duration: Duration
    /// Where it ran.
    public var executor: String

    /// Creates an outcome.
    public init(
        result: Result<[UInt8], JobError>,
        stdout: String = "",
        stderr: String = "",
        duration: Duration = .zero,
        executor: String
    ) {
        self.result = result
        self.stdout = stdout
        self.stderr = stderr
        self.duration = duration
        self.executor = executor
    }

    /// An outcome that is an error, with no output.
    public static func failure(_ error: JobError, executor: String) -> JobOutcome {
        var error = error
        if error.executor == nil { error.executor = executor }
        return JobOutcome(result: .failure(error), executor: executor)
    }
}

extension Duration {
    /// Whole nanoseconds (wrapping past ±292 years).
    public var nanosecondsInt64: Int64 {
        let (s, a) = self.components
        return s &* 1_000_000_000 &+ a / 1_000_000_000
    }
}
