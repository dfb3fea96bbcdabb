/// How long the jobs of one executor take lately: an exponentially weighted moving
/// average of their run times, in which the first real run time replaces the initial
/// guess (so a client of tiny jobs gets a deep window from its first result). The single estimator behind every decision that depends
/// on job length: a worker's pipeline depth, the local executor's window and the window
/// a node gives a client.
public struct JobTimeEstimator: Sendable {
    /// The weight of each new sample.
    public static let weight = 0.2
    /// Jobs shorter than this are "short": they are pipelined deeply.
    public static let shortJob: Duration = .milliseconds(2)

    /// The current estimate, in nanoseconds.
    public private(set) var meanNanoseconds: Double
    /// Whether a run time was added (until then the estimate is the initial guess).
    private var measured = false

    /// Creates an estimator that starts at `initial` (the guess before any job ended).
    public init(initial: Duration = .milliseconds(10)) {
        self.meanNanoseconds = Double(initial.nanosecondsInt64)
    }

    /// Adds a job's run time.
    public mutating func add(nanoseconds: UInt64) {
        self.meanNanoseconds += (Double(nanoseconds) - self.meanNanoseconds) * (self.measured ? Self.weight : 1)
        self.measured = true
    }

    /// Whether jobs are short lately (below `shortJob`).
    public var jobsAreShort: Bool { self.meanNanoseconds < Double(Self.shortJob.nanosecondsInt64) }

    /// How many jobs of the current length fit in `target` (at least 1, at most `limit`).
    public func jobs(fittingIn target: Duration, limit: Int) -> Int {
        max(1, min(limit, Int(Double(target.nanosecondsInt64) / max(self.meanNanoseconds, 1))))
    }
}
