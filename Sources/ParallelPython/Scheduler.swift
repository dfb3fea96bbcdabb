import DequeModule
import Logging
import NIOCore
import PPCore
import PPWorkers

/// Something that runs jobs: the local worker pool or a remote node.
protocol Executor: AnyObject {
    /// The name in statistics: `"local"` or `"host:port"`.
    var name: String { get }
    /// How many more jobs it takes now.
    var freeSlots: Int { get }
    /// Hands it jobs (at most `freeSlots`).
    func send(_ jobs: [Job])
    /// Asks it to cancel a job it holds, if that job has not started (best effort; the
    /// job's completion says what happened).
    func cancel(jobID: UInt64)
    /// Asks it to stop a job it holds, queued or running (the worker running it is
    /// killed and replaced); the job's completion says what happened.
    func stop(jobID: UInt64)
}

/// The client's scheduler: one queue, balanced over executors by free capacity.
///
/// Confined to the job server's event loop; `@unchecked Sendable` is safe because
/// `JobServer` reaches it only through `loop.execute`/`loop.submit`, and executors
/// call back on that loop.
final class Scheduler: @unchecked Sendable {
    let loop: any EventLoop
    let logger: Logger
    private var queue = Deque<Job>()
    private(set) var executors: [any Executor] = []
    private var dispatchScheduled = false
    private var noExecutorSince: NIODeadline?
    private let noExecutorTimeout: Duration
    private var sweeper: RepeatedTask?
    private var stopped = false
    /// Why nodes are unavailable, by address, for the no-executor message.
    var nodeProblems: [String: String] = [:]
    static let maxAttempts = 3
    /// A job handed back more often than this ends with an error instead of looping.
    static let maxHandBacks = 16
    private static let maxBatch = 512

    init(loop: any EventLoop, noExecutorTimeout: Duration, logger: Logger) {
        self.loop = loop
        self.noExecutorTimeout = noExecutorTimeout
        self.logger = logger
    }

    func start() {
        self.sweeper = self.loop.scheduleRepeatedTask(initialDelay: .milliseconds(250), delay: .milliseconds(250)) { [self] _ in
            self.sweep()
        }
    }

    func stop() {
        self.stopped = true
        self.sweeper?.cancel()
        let queued = self.queue
        self.queue.removeAll()
        self.failShutdown(queued)
    }

    private func failShutdown(_ jobs: some Sequence<Job>) {
        for job in jobs {
            job.fail(JobError(code: .shutdown, message: "the job server shut down before the job ran"), executor: "none")
        }
    }

    // MARK: Jobs

    func enqueue(_ jobs: some Sequence<Job>) {
        guard !self.stopped else { return self.failShutdown(jobs) }
        self.queue.append(contentsOf: jobs)
        self.dispatch()
    }

    /// Puts jobs back at the front (their executor was lost or is draining).
    func requeue(_ jobs: [Job], lost reason: String?, from executor: String) {
        guard !self.stopped else { return self.failShutdown(jobs) }
        for var job in jobs.reversed() {
            if let reason {
                job.attempts += 1
                if job.attempts >= Self.maxAttempts {
                    job.fail(JobError(code: .nodeLost, message: "lost \(job.attempts) executors while running the job; the last, \(executor): \(reason)"), executor: executor)
                    continue
                }
            } else {
                job.handBacks += 1
                if job.handBacks > Self.maxHandBacks {
                    job.fail(JobError(code: .nodeLost, message: "nodes handed the job back \(job.handBacks) times without running it; the last, \(executor)"), executor: executor)
                    continue
                }
            }
            self.queue.prepend(job)
        }
        self.dispatchSoon()
    }

    func cancel(jobID: UInt64) -> Bool {
        if let i = self.queue.firstIndex(where: { $0.id == jobID }) {
            let job = self.queue.remove(at: i)
            job.fail(JobError(code: .cancelled, message: "the job was cancelled before it ran"), executor: "none")
            return true
        }
        for e in self.executors { e.cancel(jobID: jobID) }
        return false
    }

    /// Stops a job wherever it is: queued here, it ends now with `cancelled`; on an
    /// executor, that executor stops it (running or not) and it ends with `cancelled`.
    func stop(jobID: UInt64) -> Bool {
        if self.cancel(jobID: jobID) { return true }
        for e in self.executors { e.stop(jobID: jobID) }
        return false
    }

    var queued: Int { self.queue.count }

    // MARK: Executors

    func add(_ executor: any Executor) {
        self.executors.append(executor)
        self.nodeProblems[executor.name] = nil
        self.logger.info("executor added", metadata: ["executor": "\(executor.name)"])
        self.dispatch()
    }

    func remove(_ executor: any Executor) {
        self.executors.removeAll { $0 === executor }
    }

    /// Runs a dispatch after the current batch of events (coalesces many completions).
    func dispatchSoon() {
        guard !self.dispatchScheduled else { return }
        self.dispatchScheduled = true
        self.loop.execute { [self] in
            self.dispatchScheduled = false
            self.dispatch()
        }
    }

    /// Hands queued jobs to the executors with the most free slots.
    func dispatch() {
        while !self.queue.isEmpty {
            var best: (any Executor)?
            var bestFree = 0
            for e in self.executors {
                let free = e.freeSlots
                if free > bestFree {
                    best = e
                    bestFree = free
                }
            }
            guard let executor = best else { return }
            // Share the queue among executors in proportion to their free slots.
            let n = min(bestFree, self.queue.count, Self.maxBatch)
            var batch: [Job] = []
            batch.reserveCapacity(n)
            for _ in 0..<n { batch.append(self.queue.removeFirst()) }
            executor.send(batch)
        }
    }

    /// Fails queued jobs when nothing at all can run them for `noExecutorTimeout`.
    private func sweep() {
        let canRun = self.executors.contains { e in
            if let local = e as? LocalExecutor { return local.size > 0 }
            if let remote = e as? RemoteExecutor { return remote.isUsable }
            return true
        }
        guard !self.queue.isEmpty, !canRun else {
            self.noExecutorSince = nil
            return
        }
        let now = NIODeadline.now()
        guard let since = self.noExecutorSince else {
            self.noExecutorSince = now
            return
        }
        guard now - since >= .nanoseconds(self.noExecutorTimeout.nanosecondsInt64) else { return }
        var why = "no local workers"
        if !self.nodeProblems.isEmpty {
            why += " and no node reachable (" + self.nodeProblems.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "; ") + ")"
        } else {
            why += " and no nodes"
        }
        let error = JobError(code: .noExecutor, message: "nothing could run the job for \(self.noExecutorTimeout): \(why)")
        let queued = self.queue
        self.queue.removeAll()
        for job in queued { job.fail(error, executor: "none") }
        self.noExecutorSince = nil
    }
}

// MARK: - Local executor

/// The local worker pool as an executor. Its window is one job per worker for long
/// jobs and a deep pipeline for short ones.
///
/// `@unchecked Sendable`: confined to the job server's loop, where the pool (sharing
/// that loop) calls its completions.
final class LocalExecutor: Executor, @unchecked Sendable {
    let name = "local"
    let pool: WorkerPool
    private unowned let scheduler: Scheduler
    private var inflight: Set<UInt64> = []
    private var jobTime = JobTimeEstimator()
    /// The pool's size as last set.
    var size: Int

    init(pool: WorkerPool, size: Int, scheduler: Scheduler) {
        self.pool = pool
        self.size = size
        self.scheduler = scheduler
    }

    var freeSlots: Int {
        let window = self.jobTime.jobsAreShort ? self.size * 64 : self.size
        return max(0, window - self.inflight.count)
    }

    func send(_ jobs: [Job]) {
        var poolJobs: [Job] = []
        poolJobs.reserveCapacity(jobs.count)
        for var job in jobs {
            self.inflight.insert(job.id)
            let completion = job.completion
            let id = job.id
            job.completion = { [self] result in
                self.inflight.remove(id)
                self.jobTime.add(nanoseconds: result.nanoseconds)
                completion(result)
                self.scheduler.dispatchSoon()
            }
            poolJobs.append(job)
        }
        self.pool.submit(contentsOf: poolJobs)
    }

    func cancel(jobID: UInt64) {
        if self.inflight.contains(jobID) { self.pool.cancel(jobIDs: [jobID]) }
    }

    func stop(jobID: UInt64) {
        if self.inflight.contains(jobID) { self.pool.stop(jobIDs: [jobID]) }
    }
}
