import DequeModule
public import NIOCore

/// The client's scheduler as a value: one queue of jobs, shared out over executors (the
/// local pool, nodes) in proportion to their free slots; jobs whose executor was lost
/// come back to the front a bounded number of times; when nothing at all can run the
/// queue for `noExecutorTimeout`, the queued jobs fail and say why. Placement: an
/// executor that cannot load a function (or whose Python is outside the function's
/// range) is not sent it again; its jobs run on the others, and fail, naming every
/// executor and its reason, only when none present can run them.
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
    /// A job refused more often than this ends (a node that keeps reconnecting, each
    /// time with a clean slate, does not bounce it for ever).
    public static let maxRefusals = 16
    /// The most queued jobs one dispatch looks past that only busy executors can run.
    public static let lookahead = 4096

    /// An executor's id: the driver's choice, unique among the executors present.
    public typealias ExecutorID = Int

    /// What placement knows of one executor.
    private struct Placement {
        var name: String
        var python: String?
        var implementation: String?
        /// The functions it cannot run, and why: its status-3 error, or the Python
        /// version or implementation a function's requirements exclude.
        var unable: [SHA256Digest: JobError] = [:]
        /// The functions whose requirements its Python meets.
        var fits: Set<SHA256Digest> = []
    }

    private var queue = Deque<Job>()
    private var stopped = false
    private var noExecutorSince: NIODeadline?
    private let noExecutorTimeout: TimeAmount
    /// Why nodes are unavailable, by name, for the no-executor message: the driver sets
    /// a node's problem when it cannot be used, and removes it when it can again.
    public var nodeProblems: [String: String] = [:]
    /// The nodes of `nodeProblems` whose problem is that they refused our key (another
    /// cluster's secret): that does not mend by waiting.
    public var keyRefusals: Set<String> = []
    /// How long queued jobs wait when nothing can run them and every node known refused
    /// our key (at most `noExecutorTimeout`): long enough for discovery to find another
    /// node, short enough not to leave a wrong secret waiting 30 s for its message.
    public static let keyRefusedTimeout: TimeAmount = .seconds(5)
    /// Nodes whose first connection is under way, by name: a job that no executor
    /// present can run waits for them instead of failing.
    public var joining: Set<String> = []
    private var placements: [ExecutorID: Placement] = [:]
    /// Whether dispatch must check each job against each executor: an executor refused
    /// a function, or a job needs a Python version or implementation. Until then it
    /// takes the fast path.
    private var placing = false

    /// Creates a scheduler.
    public init(noExecutorTimeout: TimeAmount) {
        self.noExecutorTimeout = noExecutorTimeout
    }

    /// Jobs waiting for an executor.
    public var queued: Int { self.queue.count }

    /// New jobs join the end of the queue (or fail at once after `stop`).
    public mutating func enqueue(_ jobs: [Job]) -> [Failure] {
        guard !self.stopped else { return Self.shutDown(jobs) }
        if !self.placing { self.placing = jobs.contains { $0.bundle.requirements.map { $0.python != nil || $0.implementation != nil } ?? false } }
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
    /// as many jobs as it has slots (at most `maxBatch`). Once placement matters (an
    /// executor refused a function, or a job needs a Python version), each job goes to
    /// the executor with the most free slots among those that can run it (not known
    /// unable, its Python in the job's range); a job that only busy executors can run
    /// waits, looking past at most `lookahead` of them; a job that no executor present
    /// can run fails, naming each and why, unless nodes are still `joining`.
    ///
    /// - Parameter executors: the executors that take jobs now, each with its id and
    ///   free slots, in the order ties go.
    /// - Returns: the batches to send, in order, each with its executor's id; and the
    ///   jobs that failed.
    public mutating func dispatch(_ executors: [(id: ExecutorID, freeSlots: Int)]) -> (batches: [(executor: ExecutorID, jobs: [Job])], failures: [Failure]) {
        var slots = executors.map(\.freeSlots)
        var batches: [(executor: ExecutorID, jobs: [Job])] = []
        guard self.placing else {
            // The first of those with the most slots, while it has any.
            while !self.queue.isEmpty, let best = slots.indices.max(by: { slots[$0] < slots[$1] }), slots[best] > 0 {
                let n = min(slots[best], self.queue.count, Self.maxBatch)
                // Moved out one by one: a copy of the prefix then its removal costs a
                // retain and a release per job.
                var jobs: [Job] = []
                jobs.reserveCapacity(n)
                for _ in 0..<n { jobs.append(self.queue.removeFirst()) }
                batches.append((executors[best].id, jobs))
                slots[best] -= n
            }
            return (batches, [])
        }
        var free = slots.reduce(0, +)
        var assigned = [[Job]](repeating: [], count: executors.count)
        var order: [Int] = []  // executors by their first job
        var waiting: [Job] = []
        var failures: [Failure] = []
        while free > 0, waiting.count < Self.lookahead, let job = self.queue.popFirst() {
            var best: Int?
            var able = false
            for i in executors.indices where self.canRun(job.bundle, on: executors[i].id) {
                able = true
                if slots[i] > 0, best.map({ slots[i] > slots[$0] }) ?? true { best = i }
            }
            if let best {
                if assigned[best].isEmpty { order.append(best) }
                assigned[best].append(job)
                slots[best] -= 1
                free -= 1
            } else if able || !self.joining.isEmpty {
                waiting.append(job)
            } else {
                failures.append(self.unavailable(job, on: executors.map(\.id)))
            }
        }
        self.queue.prepend(contentsOf: waiting)
        for i in order {
            if assigned[i].count <= Self.maxBatch {
                batches.append((executors[i].id, assigned[i]))
                assigned[i] = []
                continue
            }
            for start in stride(from: 0, to: assigned[i].count, by: Self.maxBatch) {
                batches.append((executors[i].id, Array(assigned[i][start..<min(start + Self.maxBatch, assigned[i].count)])))
            }
        }
        return (batches, failures)
    }

    // MARK: Placement

    /// An executor joined: a new connection, so nothing is known against it yet.
    ///
    /// - Parameters:
    ///   - id: its id, unique among the executors present.
    ///   - name: how messages name it (`"local"`, `"b (10.0.0.2:7340)"`).
    ///   - python: its workers' Python version, when known.
    ///   - implementation: its workers' Python implementation (`cpython`), when known.
    public mutating func added(_ id: ExecutorID, name: String, python: String?, implementation: String? = nil) {
        self.placements[id] = Placement(name: name, python: python, implementation: implementation)
    }

    /// An executor left; what was known against it goes with it.
    public mutating func removed(_ id: ExecutorID) {
        self.placements[id] = nil
    }

    /// An executor's Python became known (the local pool's first worker said hello).
    public mutating func learned(python: String, implementation: String? = nil, of id: ExecutorID) {
        self.placements[id]?.python = python
        self.placements[id]?.implementation = implementation
    }

    /// Executor `id` answered that it cannot load `job`'s function (a result with
    /// status 3: `error`). That executor is not sent the function again; the job goes
    /// back to the front of the queue (not counted as an attempt or a hand-back), and
    /// `dispatch` places it on another executor or fails it when none present can run
    /// it. A job refused more than `maxRefusals` times ends with `error`.
    public mutating func refused(_ job: Job, error: JobError, by id: ExecutorID) -> [Failure] {
        guard !self.stopped else { return Self.shutDown([job]) }
        self.placements[id]?.unable[job.bundle.digest] = error
        self.placing = true
        var job = job
        job.refusals += 1
        guard job.refusals <= Self.maxRefusals else { return [Failure(job: job, error: error, executor: error.executor ?? "none")] }
        self.queue.prepend(job)
        return []
    }

    /// Whether `bundle` may go to executor `id`: it did not refuse it, and its Python
    /// (when known) meets the bundle's requirements. A mismatch is remembered as a refusal.
    private mutating func canRun(_ bundle: FunctionBundle, on id: ExecutorID) -> Bool {
        guard let placement = self.placements[id] else { return true }
        if placement.unable[bundle.digest] != nil { return false }
        guard placement.python != nil || placement.implementation != nil, let needs = bundle.requirements, needs.python != nil || needs.implementation != nil,
            !placement.fits.contains(bundle.digest)
        else { return true }
        guard let why = needs.mismatch(pythonVersion: placement.python, implementation: placement.implementation) else {
            self.placements[id]!.fits.insert(bundle.digest)
            return true
        }
        self.placements[id]!.unable[bundle.digest] = JobError(code: .functionUnavailable, message: why, executor: placement.name)
        return false
    }

    /// The failure of a job that none of `ids` can run: one executor's own error, or a
    /// message naming each executor and its reason.
    private func unavailable(_ job: Job, on ids: [ExecutorID]) -> Failure {
        // By name, "local" first: the same message whatever order the executors joined in.
        var refusals: [(name: String, error: JobError)] = ids.compactMap { id in self.placements[id].flatMap { p in p.unable[job.bundle.digest].map { (name: p.name, error: $0) } } }
        refusals.sort { a, b in a.name != b.name && (a.name == "local" || (b.name != "local" && a.name < b.name)) }
        if refusals.count == 1 { return Failure(job: job, error: refusals[0].error, executor: refusals[0].error.executor ?? refusals[0].name) }
        let why = refusals.map { r in
            let type = r.error.pythonType.flatMap { r.error.message.hasPrefix($0) ? nil : "\($0): " } ?? ""
            return "\(r.name): \(type)\(r.error.message)"
        }
        let error = JobError(
            code: .functionUnavailable, message: "no executor can run the function: \(why.joined(separator: "; "))",
            traceback: refusals.first { !$0.error.traceback.isEmpty }?.error.traceback ?? ""
        )
        return Failure(job: job, error: error, executor: "none")
    }

    /// The periodic check: when nothing at all can run jobs (`anyExecutorCanRun` is
    /// false) while jobs wait, for `noExecutorTimeout` (`keyRefusedTimeout` when every
    /// node known refused our key), the queued jobs fail with the reasons known.
    public mutating func tick(now: NIODeadline, anyExecutorCanRun: Bool) -> [Failure] {
        guard !self.queue.isEmpty, !anyExecutorCanRun else {
            self.noExecutorSince = nil
            return []
        }
        guard let since = self.noExecutorSince else {
            self.noExecutorSince = now
            return []
        }
        let refused = !self.nodeProblems.isEmpty && self.nodeProblems.keys.allSatisfy(self.keyRefusals.contains)
        let timeout = refused ? min(self.noExecutorTimeout, Self.keyRefusedTimeout) : self.noExecutorTimeout
        guard now - since >= timeout else { return [] }
        let problems = self.nodeProblems.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
        let why = problems.isEmpty ? "no local workers and no nodes" : "no local workers and no node reachable (\(problems.joined(separator: "; ")))"
        let seconds = Duration.nanoseconds(timeout.nanoseconds)
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
