import DequeModule
public import NIOCore

/// The client's scheduler as a value: one queue of jobs, shared out over executors (the
/// local pool, nodes) in proportion to their free slots; jobs whose executor was lost
/// come back to the front a bounded number of times; when nothing at all can run the
/// queue for `noExecutorTimeout`, the queued jobs fail and say why.
///
/// The driver (`Scheduler` in ParallelPython) owns the executors and their I/O; it tells
/// the machine their free slots when it dispatches, and calls the completions of the
/// jobs the machine hands back as failed.
public struct SchedulerStateMachine: Sendable {
    /// A job the machine ended, for the driver to complete.
    public struct Failure: Sendable {
        /// The job.
        public var job: Job
        /// Why it ended.
        public var error: JobError
        /// Where it was last (`"none"` when it never left the queue).
        public var executor: String
    }

    /// A lost executor's jobs run again at most this many times in all.
    public static let maxAttempts = 3
    /// A job handed back (unrun) more often than this ends with an error instead of
    /// going round for ever.
    public static let maxHandBacks = 16
    /// The most jobs handed to one executor in one batch.
    public static let maxBatch = 512

    private var queue = Deque<Job>()
    private var stopped = false
    private var noExecutorSince: NIODeadline?
    private let noExecutorTimeout: TimeAmount
    /// Why nodes are unavailable, by name, for the no-executor message: the driver sets
    /// a node's problem when it cannot be used, and removes it when it can again.
    public var nodeProblems: [String: String] = [:]

    /// Creates a scheduler.
    public init(noExecutorTimeout: TimeAmount) {
        self.noExecutorTimeout = noExecutorTimeout
    }

    /// Jobs waiting for an executor.
    public var queued: Int { self.queue.count }

    /// New jobs join the end of the queue (or fail at once after `stop`).
    public mutating func enqueue(_ jobs: [Job]) -> [Failure] {
        guard !self.stopped else { return Self.shutDown(jobs) }
        self.queue.append(contentsOf: jobs)
        return []
    }

    /// Jobs come back from `executor`: lost with it (`lost` says why: each counts as an
    /// attempt) or handed back unrun (`lost` is nil: each counts as a hand-back). They go
    /// to the front, in their order, unless they used up their attempts or hand-backs.
    public mutating func requeue(_ jobs: [Job], lost reason: String?, from executor: String) -> [Failure] {
        guard !self.stopped else { return Self.shutDown(jobs) }
        var failures: [Failure] = []
        for var job in jobs.reversed() {
            var message: String?
            if let reason {
                job.attempts += 1
                if job.attempts >= Self.maxAttempts { message = "lost \(job.attempts) executors while running the job; the last, \(executor): \(reason)" }
            } else {
                job.handBacks += 1
                if job.handBacks > Self.maxHandBacks { message = "nodes handed the job back \(job.handBacks) times without running it; the last, \(executor)" }
            }
            if let message {
                failures.append(Failure(job: job, error: JobError(code: .nodeLost, message: message), executor: executor))
            } else {
                self.queue.prepend(job)
            }
        }
        return failures.reversed()
    }

    /// Removes a queued job; it ends `cancelled`. Returns nil when the job is not queued
    /// (an executor may hold it).
    public mutating func cancelQueued(jobID: UInt64) -> Failure? {
        guard let i = self.queue.firstIndex(where: { $0.id == jobID }) else { return nil }
        return Failure(job: self.queue.remove(at: i), error: JobError(code: .cancelled, message: "the job was cancelled before it ran"), executor: "none")
    }

    /// Shares queued jobs out: repeatedly, the executor with the most free slots gets
    /// as many jobs as it has slots (at most `maxBatch`).
    ///
    /// - Parameter freeSlots: each executor's free slots now, in the order ties go.
    /// - Returns: the batches to send, in order, each with its executor's index in
    ///   `freeSlots`.
    public mutating func dispatch(freeSlots: [Int]) -> [(executor: Int, jobs: [Job])] {
        var slots = freeSlots
        var batches: [(executor: Int, jobs: [Job])] = []
        // The first of those with the most slots, while it has any.
        while !self.queue.isEmpty, let best = slots.indices.max(by: { slots[$0] < slots[$1] }), slots[best] > 0 {
            let n = min(slots[best], self.queue.count, Self.maxBatch)
            batches.append((best, Array(self.queue.prefix(n))))
            self.queue.removeFirst(n)
            slots[best] -= n
        }
        return batches
    }

    /// The periodic check: when nothing at all can run jobs (`anyExecutorCanRun` is
    /// false) while jobs wait, for `noExecutorTimeout`, the queued jobs fail with the
    /// reasons known.
    public mutating func tick(now: NIODeadline, anyExecutorCanRun: Bool) -> [Failure] {
        guard !self.queue.isEmpty, !anyExecutorCanRun else {
            self.noExecutorSince = nil
            return []
        }
        guard let since = self.noExecutorSince else {
            self.noExecutorSince = now
            return []
        }
        guard now - since >= self.noExecutorTimeout else { return [] }
        let problems = self.nodeProblems.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
        let why = problems.isEmpty ? "no local workers and no nodes" : "no local workers and no node reachable (\(problems.joined(separator: "; ")))"
        let seconds = Duration.nanoseconds(self.noExecutorTimeout.nanoseconds)
        let error = JobError(code: .noExecutor, message: "nothing could run the job for \(seconds): \(why)")
        self.noExecutorSince = nil
        defer { self.queue.removeAll() }
        return self.queue.map { Failure(job: $0, error: error, executor: "none") }
    }

    /// The job server stops: every queued job fails with `shutdown`, and so does every
    /// job that arrives later.
    public mutating func stop() -> [Failure] {
        self.stopped = true
        defer { self.queue.removeAll() }
        return Self.shutDown(self.queue)
    }

    private static func shutDown(_ jobs: some Sequence<Job>) -> [Failure] {
        jobs.map { Failure(job: $0, error: JobError(code: .shutdown, message: "the job server shut down before the job ran"), executor: "none") }
    }
}
