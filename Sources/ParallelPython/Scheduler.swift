import Logging
import NIOCore
import PPCore
import PPWorkers

/// Something that runs jobs: the local worker pool or a remote node.
protocol Executor: AnyObject {
    /// The name in statistics: `"local"` or `"host:port"`.
    var name: String { get }
    /// The name in placement errors: `"local"` or `"NODE (host:port)"`.
    var label: String { get }
    /// Its workers' Python version, when known.
    var python: String? { get }
    /// Its workers' Python implementation (`cpython`), when known.
    var implementation: String? { get }
    /// How many more jobs it takes now.
    var freeSlots: Int { get }
    /// Whether it can run jobs at all now (a pool with workers, a node that is
    /// connected and not draining).
    var canRun: Bool { get }
    /// Hands it jobs (at most `freeSlots`).
    func send(_ jobs: [Job])
    /// Asks it to cancel a job it holds, if that job has not started (best effort), or
    /// with `stop`, queued or running (the worker running it is killed and replaced);
    /// the job's completion says what happened.
    func cancel(jobID: UInt64, stop: Bool)
}

/// The client's scheduler: the driver of `SchedulerStateMachine`. It owns the executors
/// (by id), runs the machine's periodic check, sends the batches the machine chooses and
/// completes the jobs the machine ends. Executors talk back to it through
/// `dispatchSoon`, `requeue` and `nodeProblem`.
///
/// Confined to the job server's event loop; `@unchecked Sendable` is safe because
/// `JobServer` reaches it only through `loop.execute`/`loop.submit`, and executors
/// call back on that loop.
final class Scheduler: @unchecked Sendable {
    let loop: any EventLoop
    let logger: Logger
    private var machine: SchedulerStateMachine
    private(set) var executors: [any Executor] = []
    private var dispatchScheduled = false
    private var sweeper: RepeatedTask?

    init(loop: any EventLoop, noExecutorTimeout: Duration, logger: Logger) {
        self.loop = loop
        self.machine = SchedulerStateMachine(noExecutorTimeout: .nanoseconds(noExecutorTimeout.nanosecondsInt64))
        self.logger = logger
    }

    func start() {
        self.sweeper = self.loop.scheduleRepeatedTask(initialDelay: .milliseconds(250), delay: .milliseconds(250)) { [self] _ in
            let canRun = self.executors.contains { $0.canRun }
            Self.fail(self.machine.tick(now: .now(), anyExecutorCanRun: canRun))
        }
    }

    func stop() {
        self.sweeper?.cancel()
        Self.fail(self.machine.stop())
    }

    private static func fail(_ failures: [SchedulerStateMachine.Failure]) {
        for f in failures { f.job.fail(f.error, executor: f.executor) }
    }

    // MARK: Jobs

    func enqueue(_ jobs: [Job]) {
        Self.fail(self.machine.enqueue(jobs))
        self.dispatch()
    }

    /// Jobs come back: lost with their executor (`lost` says why) or handed back unrun.
    func requeue(_ jobs: [Job], lost reason: String?, from executor: String) {
        Self.fail(self.machine.requeue(jobs, lost: reason, from: executor))
        self.dispatchSoon()
    }

    /// Cancels a job: queued here, it ends now with `cancelled`; on an executor, that
    /// executor cancels it if it has not started, or with `stop` stops it (running or
    /// not) and it ends with `cancelled`. Returns whether it was queued here.
    func cancel(jobID: UInt64, stop: Bool) -> Bool {
        if let f = self.machine.cancelQueued(jobID: jobID) {
            Self.fail([f])
            return true
        }
        for e in self.executors { e.cancel(jobID: jobID, stop: stop) }
        return false
    }

    var queued: Int { self.machine.queued }

    // MARK: Executors

    func add(_ executor: any Executor) {
        self.executors.append(executor)
        self.machine.added(Self.id(executor), name: executor.label, python: executor.python, implementation: executor.implementation)
        self.machine.nodeProblems[executor.name] = nil
        self.machine.keyRefusals.remove(executor.name)
        self.machine.joining.remove(executor.name)
        self.logger.info("executor added", metadata: [LogKey.executor: "\(executor.name)"])
        self.dispatch()
    }

    func remove(_ executor: any Executor) {
        self.executors.removeAll { $0 === executor }
        self.machine.removed(Self.id(executor))
    }

    /// A node became usable (`problem` nil) or could not be used, and why; `keyRefused`
    /// when it refused our key.
    func nodeProblem(_ problem: String?, node: String, keyRefused: Bool = false) {
        self.machine.nodeProblems[node] = problem
        if problem != nil && keyRefused { self.machine.keyRefusals.insert(node) } else { self.machine.keyRefusals.remove(node) }
        if self.machine.joining.remove(node) != nil { self.dispatchSoon() }
    }

    /// A node's first connection starts: jobs no executor present can run wait for it.
    func joining(node: String) {
        self.machine.joining.insert(node)
    }

    /// Runs a dispatch after the current batch of events (coalesces many completions):
    /// what executors call when they have room again (jobs ended, a window grew).
    func dispatchSoon() {
        guard !self.dispatchScheduled else { return }
        self.dispatchScheduled = true
        self.loop.execute { [self] in
            self.dispatchScheduled = false
            self.dispatch()
        }
    }

    /// Hands queued jobs to the executors with the most free slots (that can run them).
    func dispatch() {
        guard self.machine.queued > 0 else { return }
        // Batches go by id into this list (sending may remove an executor from
        // `executors`; one removed takes its batch and hands it back).
        let executors = self.executors.filter(\.canRun)
        let (batches, failures) = self.machine.dispatch(executors.map { (Self.id($0), $0.freeSlots) })
        Self.fail(failures)
        for (id, jobs) in batches {
            executors.first { Self.id($0) == id }!.send(jobs)
        }
    }

    // MARK: Placement

    /// An executor's id for the machine: its object's identity (unique while present;
    /// the machine forgets it on `remove`).
    private static func id(_ executor: any Executor) -> SchedulerStateMachine.ExecutorID {
        Int(bitPattern: UInt(bitPattern: ObjectIdentifier(executor)))
    }

    /// `executor` answered that it cannot load `job`'s function (`result` has status 3):
    /// the job is placed elsewhere, or fails when no executor present can run it.
    func refused(_ job: Job, _ result: JobResult, by executor: any Executor) {
        guard case .failure(let error) = result.outcome.result else { return }
        self.logger.debug("function unavailable on an executor", metadata: [LogKey.executor: "\(executor.name)", LogKey.reason: "\(error.message)"])
        Self.fail(self.machine.refused(job, error: error, by: Self.id(executor)))
        self.dispatchSoon()
    }

    /// The executor's Python became known (the local pool's first worker).
    func learned(python: String, implementation: String?, of executor: any Executor) {
        self.machine.learned(python: python, implementation: implementation, of: Self.id(executor))
        self.dispatch()
    }
}

// MARK: - Local executor

/// The local worker pool as an executor. Its window is one job per worker for long
/// jobs and about 4 ms of work per worker for short ones.
///
/// `@unchecked Sendable`: confined to the job server's loop, where the pool (sharing
/// that loop) calls its completions.
final class LocalExecutor: Executor, @unchecked Sendable {
    let name = "local"
    var label: String { self.name }
    // The scheduler learns these from the pool's first worker.
    let python: String? = nil
    let implementation: String? = nil
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
        pool.interceptResults { [weak self] job, result in self?.ended(job, result) ?? false }
    }

    var freeSlots: Int {
        // Short jobs: about 4 ms of them per worker (at most 1,024), so that the pool
        // sends its workers frames of many jobs; long ones: one per worker.
        let window = self.jobTime.jobsAreShort ? self.size * self.jobTime.jobs(fittingIn: JobTimeEstimator.windowOfWork, limit: 1024) : self.size
        return max(0, window - self.inflight.count)
    }

    var canRun: Bool { self.size > 0 }

    func send(_ jobs: [Job]) {
        for i in jobs.indices { self.inflight.insert(jobs[i].id) }
        self.pool.submit(contentsOf: jobs)
    }

    /// One of the pool's jobs ended: if it is one of ours, its slot is freed here and
    /// its run time learnt, and a job whose function does not load here goes back to
    /// the scheduler to be placed elsewhere. (The pool's own check jobs are not ours.)
    private func ended(_ job: Job, _ result: JobResult) -> Bool {
        guard job.kind == .call, self.inflight.remove(job.id) != nil else { return false }
        self.jobTime.add(nanoseconds: result.nanoseconds)
        if result.code == .functionUnavailable {
            self.scheduler.refused(job, result, by: self)
        } else {
            job.completion(result)
            self.scheduler.dispatchSoon()
        }
        return true
    }

    func cancel(jobID: UInt64, stop: Bool) {
        guard self.inflight.contains(jobID) else { return }
        if stop { self.pool.stop(jobIDs: [jobID]) } else { self.pool.cancel(jobIDs: [jobID]) }
    }
}
