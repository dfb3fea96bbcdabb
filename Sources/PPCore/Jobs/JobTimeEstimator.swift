/// How long the jobs of one executor take lately: an exponentially weighted moving
/// average of their run times. The single estimator behind every decision that depends
/// on job length: a worker's pipeline depth, the local executor's window and the window
/// a node gives a client.
public struct JobTimeEstimator: Sendable {
    /// The weight of each new sample.
    public static let weight = 0.2
    /// Jobs shorter than this are "short": they are pipelined deeply.
    public static let shortJob: Duration = .milliseconds(2)
    /// The work per worker a window of short jobs holds (the local executor's, a node's
    /// for a client): enough for a worker's pipe to take them in batches of hundreds.
    public static let windowOfWork: Duration = .milliseconds(4)

    /// The current estimate, in nanoseconds.
    public private(set) var meanNanoseconds: Double
    /// Whether a run time was added (until then the estimate is the initial guess).
    private var measured = false
    /// Whether the first run time replaces the initial guess instead of moving it by
    /// `weight`.
    private let trustsFirstSample: Bool

    /// Creates an estimator that starts at `initial` (the guess before any job ended).
    /// With `trustsFirstSample`, the first run time replaces the guess: a node's window
    /// for a client of tiny jobs then deepens with its first result. (A pool keeps the
    /// cautious start: it would pipeline jobs deeply behind the first long one.)
    public init(initial: Duration = .milliseconds(10), trustsFirstSample: Bool = false) {
        self.meanNanoseconds = Double(initial.nanosecondsInt64)
        self.trustsFirstSample = trustsFirstSample
    }

    /// Adds a job's run time.
    public mutating func add(nanoseconds: UInt64) {
        self.meanNanoseconds += (Double(nanoseconds) - self.meanNanoseconds) * (self.measured || !self.trustsFirstSample ? Self.weight : 1)
        self.measured = true
    }

    /// Whether jobs are short lately (below `shortJob`).
    public var jobsAreShort: Bool { self.meanNanoseconds < Double(Self.shortJob.nanosecondsInt64) }

    /// How many jobs of the current length fit in `target` (at least 1, at most `limit`).
    public func jobs(fittingIn target: Duration, limit: Int) -> Int {
        max(1, min(limit, Int(Double(target.nanosecondsInt64) / max(self.meanNanoseconds, 1))))
    }
}
