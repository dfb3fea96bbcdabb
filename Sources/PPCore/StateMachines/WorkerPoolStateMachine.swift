public import NIOCore
import DequeModule

/// The worker pool's logic as a value: the job queue, the worker slots and their
/// pipes, pipelining, bundle loading, start failures and their backoff, timeouts,
/// stops, deaths, reaping and shutdown. No processes, pipes or timers live here.
///
/// A driver (`PPWorkers`' pool driver) owns the processes and channels and feeds the
/// machine what happens (`workerSpawned`, `received`, `processEnded`, `tick`, ...);
/// each event returns the `Action`s to carry out, in order. A worker is named by its
/// index (1, 2, ... never reused); its pid is known once it has been spawned.
///
/// Jobs end exactly once: every path that takes a job out of the queue or out of a
/// worker's pipe either hands it back to the queue or returns one `complete` action
/// for it (a stopped job that already ended is remembered, so its late result is
/// dropped).
///
/// docs/WORKER-PROTOCOL.md describes the frames, the pipelining, the reaping and the
/// deaths that this machine decides.
public struct WorkerPoolStateMachine: Sendable {
    // MARK: Configuration

    /// What the machine needs to know of the pool's setup.
    public struct Configuration: Sendable {
        /// The pool's label: the executor of its results, and in its log metadata.
        public var name: String
        /// The interpreter, as the pool was told (named in start failure messages).
        public var python: String
        /// The most jobs kept in one worker's pipe when jobs are short (in batches).
        public var maxPipelineDepth: Int
        /// Bytes of bundles each worker keeps loaded before it drops the least
        /// recently used one.
        public var bundleCacheBytes: Int
        /// Bytes of large arguments (blobs) each worker keeps loaded likewise.
        public var blobCacheBytes: Int
        /// How long `shutdown` lets running jobs finish before it kills their workers.
        public var shutdownGrace: TimeAmount

        /// Creates a configuration.
        ///
        /// - Parameters:
        ///   - name: the pool's label.
        ///   - python: the interpreter's name or path.
        ///   - maxPipelineDepth: the most jobs in one worker's pipe.
        ///   - bundleCacheBytes: bytes of loaded bundles per worker.
        ///   - blobCacheBytes: bytes of loaded large arguments per worker.
        ///   - shutdownGrace: the time running jobs get at shutdown.
        public init(
            name: String, python: String, maxPipelineDepth: Int = 1024, bundleCacheBytes: Int = 64 << 20, blobCacheBytes: Int = 256 << 20,
            shutdownGrace: TimeAmount = .seconds(5)
        ) {
            self.name = name
            self.python = python
            self.maxPipelineDepth = maxPipelineDepth
            self.bundleCacheBytes = bundleCacheBytes
            self.blobCacheBytes = blobCacheBytes
            self.shutdownGrace = shutdownGrace
        }
    }

    /// The work a worker's pipe holds: as many jobs as run in this time (at least one).
    public static let pipelineTarget: Duration = .milliseconds(2)
    /// The most argument bytes in one batch frame (`M`); a batch ends at the job that
    /// passes it.
    public static let maxBatchBytes = 1 << 20
    /// Failed starts in a row, with no worker ready, after which queued jobs fail.
    public static let maxStartFailures = 3
    /// The first wait before a failed start is tried again; it doubles each time.
    public static let firstRetryDelay: TimeAmount = .milliseconds(100)
    /// The longest wait between start attempts.
    public static let maxRetryDelay: TimeAmount = .seconds(5)
    /// How long an ended worker's stdout may stay open (held by a process its job
    /// forked) before the pool stops waiting for the results in it.
    public static let pipeDrainGrace: TimeAmount = .milliseconds(300)
    /// A killed process takes a moment to become a zombie: look again this soon (the
    /// 50 ms tick looks anyway).
    public static let killRecheckDelay: TimeAmount = .milliseconds(2)

    // MARK: Actions

    /// A log line's level, named as swift-log's `Logger.Level`: `debug` is routine (a
    /// worker starts, a worker is ready); `notice` worth knowing (starts work again
    /// after failures); `warning` a job was hurt (a worker ended during it); `error`
    /// something is broken (a start failed, a worker broke the protocol).
    public enum LogLevel: String, Sendable, Hashable { case debug, notice, warning, error }

    /// What the driver does, in the order the machine returns them.
    public enum Action: Sendable {
        /// Start worker `index` (on the pool's own thread), then report
        /// `workerSpawned(index:pid:)` or `spawnFailed(index:reason:)`; attach its pipes
        /// and report `workerAttached(index:)`.
        case spawnWorker(index: Int)
        /// Write these frames to the worker's stdin (one write for the batch).
        case write(worker: Int, ByteBuffer)
        /// Close the worker's stdin: it finishes the jobs in its pipe and exits.
        case closeStdin(worker: Int)
        /// Send SIGKILL to the worker's process group.
        case killProcessGroup(worker: Int)
        /// After `after` (at once when zero), look whether the worker's process has
        /// ended, without reaping it (`waitid` with `WNOWAIT`); if so report
        /// `processEnded(worker:now:)`.
        case checkProcess(worker: Int, after: TimeAmount)
        /// Reap the worker (kill its group once more, `waitpid`), report
        /// `workerReaped(worker:status:now:)`, then close its pipes.
        case reap(worker: Int)
        /// Call `retryTimerFired(now:)` after this delay.
        case scheduleRetry(after: TimeAmount)
        /// Cancel the pending retry timer.
        case cancelRetry
        /// End the job with this result: call its completion.
        case complete(Job, JobResult)
        /// Answer every caller waiting for a ready worker (`whenReady()`): `nil` when
        /// one is ready, else the reason none can start.
        case answerReadyWaiters(failure: String?)
        /// Call `shutdownGraceElapsed()` after this delay.
        case scheduleShutdownKill(after: TimeAmount)
        /// Every worker is reaped after `shutdown()`: stop the timers and answer the
        /// callers of shutdown.
        case finishShutdown
        /// Log a line; metadata keys are dotted (`"worker.pid"`).
        case log(LogLevel, String, metadata: [String: String])
    }

    // MARK: State

    /// One worker as the machine sees it.
    struct Slot: Sendable {
        enum State: Sendable { case spawning, starting, ready, retiring }
        enum KillReason: Sendable {
            case timeout(Duration), protocolError(String), shutdown, cancelled
            var isCancel: Bool { if case .cancelled = self { true } else { false } }
        }

        let index: Int
        /// 0 until the process exists.
        var pid: Int32 = 0
        var state = State.spawning
        /// Its pipes are attached: frames can be written.
        var attached = false
        /// The jobs in its pipe, in order; the head is running (or, inside a batch,
        /// done with its result not written yet). A cancelled one was stopped and has
        /// ended already: its result, if one comes, is dropped. `last`: the last job of
        /// its frame (a single job's frame, or a batch).
        var inflight = Deque<Piped>()
        /// When the head job started: when it was written to an idle worker, or when
        /// the result before it arrived.
        var headStartedAt = NIODeadline.uptimeNanoseconds(0)
        /// When the process was first seen ended while its stdout was still open.
        var endSeenAt: NIODeadline?
        var killReason: KillReason?
        /// EOF (or an error) on its stdout was seen.
        var stdoutClosed = false
        /// A `reap` action was returned: nothing more happens to it until it is reaped.
        var reaping = false
        /// The bundles it has loaded, bounded in bytes.
        var loaded: BoundedCache<SHA256Digest, Void>
        /// The large arguments it holds, bounded in bytes.
        var blobs: BoundedCache<SHA256Digest, Void>
        /// The bundle of the last job written to it: the next job of the same bundle
        /// needs no look-up (it is the most recently used already).
        var lastBundle: SHA256Digest?
        var jobsDone = 0
        var busyTime = Duration.zero

        func statistics(exit: ExitStatus?) -> WorkerStatistics {
            WorkerStatistics(index: self.index, pid: self.pid, jobsDone: self.jobsDone, busyTime: self.busyTime, exit: exit)
        }
    }

    typealias Piped = (job: Job, cancelled: Bool, last: Bool)

    /// The setup this machine was created with.
    public let configuration: Configuration
    /// The number of workers the pool keeps.
    public private(set) var target = 0
    /// The Python version the first ready worker reported.
    public private(set) var pythonVersion: String?
    /// The Python implementation (`cpython`) the first ready worker reported.
    public private(set) var pythonImplementation: String?
    /// `shutdown()` was called.
    public private(set) var isShuttingDown = false
    /// Jobs waiting for a worker, shared fairly between their owners by use.
    private var queue = FairQueue<Job>()
    private var workers = SlotTable()
    private var gone: [WorkerStatistics] = []
    private var nextIndex = 1
    /// How long jobs take lately, which sets the pipeline depth.
    private var jobTime = JobTimeEstimator()
    /// Jobs handed back from a batch during which their worker died: one of them may
    /// have killed it, so each runs in a frame of its own.
    private var runAlone = Set<UInt64>()
    /// Worker starts that failed in a row (spawn error, or exit before hello).
    private var startFailures = 0
    private var lastStartError = ""
    /// A retry timer is scheduled; `retryDelay` is the wait before the one after it.
    private var retryPending = false
    private var retryDelay = WorkerPoolStateMachine.firstRetryDelay
    /// The actions of the event being handled, in order: every event returns them
    /// (`take()`) and leaves none behind.
    private var actions: [Action] = []

    /// Creates a machine with no workers; `start(target:)` starts them.
    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// The actions of the event being handled, handed over.
    private mutating func take() -> [Action] {
        defer { self.actions = [] }
        return self.actions
    }

    // MARK: Queries

    /// The pool's counters. Its workers: gone ones first (in the order they ended),
    /// then the live ones by index.
    public var statistics: PoolStatistics {
        let live = self.workers.values.filter { $0.state != .spawning }.sorted { $0.index < $1.index }
        return PoolStatistics(
            name: self.configuration.name, targetWorkers: self.target, queued: self.queue.count,
            running: self.workers.values.reduce(0) { $0 + $1.inflight.count },
            workers: self.gone + live.map { $0.statistics(exit: nil) }, pythonVersion: self.pythonVersion,
            pythonImplementation: self.pythonImplementation
        )
    }

    /// Each owner's use of the workers lately, queued and running jobs, least use
    /// first (the fair share's accounts; owners idle long enough are forgotten).
    public func shares(now: NIODeadline) -> [OwnerShare] {
        self.queue.shares(now: now)
    }

    // MARK: Life cycle

    /// The pool starts: keep `target` workers.
    public mutating func start(target: Int) -> [Action] {
        self.target = target
        self.maintain()
        return self.take()
    }

    /// Keep `n` workers from now on: extra ones are retired, least busy first
    /// (starting workers, then those with the fewest jobs in their pipes); they finish
    /// the jobs in their pipes and exit. Missing ones start.
    public mutating func resize(to n: Int, now: NIODeadline) -> [Action] {
        guard !self.isShuttingDown else { return [] }
        self.target = n
        let live = self.workers.values.filter { $0.state != .retiring }
        if live.count > n {
            func busyness(_ slot: Slot) -> Int { slot.state == .spawning || slot.state == .starting ? -1 : slot.inflight.count }
            let retired = live.sorted { (busyness($0), $0.index) < (busyness($1), $1.index) }.prefix(live.count - n)
            for slot in retired { self.retire(slot.index) }
        }
        self.maintain()
        self.dispatch(now: now)
        return self.take()
    }

    /// Stop the pool: queued jobs end with `shutdown`, workers are retired (they finish
    /// the jobs in their pipes), and after the grace period the survivors are killed.
    /// `finishShutdown` comes once every worker is reaped; calling again after that
    /// returns it again.
    public mutating func shutdown() -> [Action] {
        guard !self.isShuttingDown else { return self.workers.isEmpty ? [.finishShutdown] : [] }
        self.isShuttingDown = true
        self.target = 0
        self.actions.append(.answerReadyWaiters(failure: "the worker pool shut down"))
        self.failQueue(JobError(code: .shutdown, message: "the worker pool shut down before the job ran"))
        self.cancelRetry()
        for index in self.workers.keys.sorted() { self.retire(index) }
        if !self.workers.isEmpty { self.actions.append(.scheduleShutdownKill(after: self.configuration.shutdownGrace)) }
        self.finishShutdownIfDone()
        return self.take()
    }

    /// The shutdown grace period is over: kill the workers that are still running.
    public mutating func shutdownGraceElapsed() -> [Action] {
        for index in self.workers.keys.sorted() { self.kill(index, reason: .shutdown) }
        return self.take()
    }

    /// A caller waits for a ready worker. It is answered now (`answerReadyWaiters`)
    /// when a worker is ready (at once for a pool of 0 workers), when the start failures
    /// reached their limit with no worker ready, or when the pool is shutting down;
    /// else by a later event.
    public func whenReady() -> [Action] {
        if self.isShuttingDown { return [.answerReadyWaiters(failure: "the worker pool shut down")] }
        if self.target == 0 || self.hasReadyWorker { return [.answerReadyWaiters(failure: nil)] }
        return self.startsFailedForGood ? [.answerReadyWaiters(failure: self.lastStartError)] : []
    }

    private var hasReadyWorker: Bool { self.workers.values.contains { $0.state == .ready } }

    /// Starts failed `maxStartFailures` times in a row and no worker is ready: queued
    /// jobs and callers waiting for a worker are told so.
    private var startsFailedForGood: Bool { self.startFailures >= Self.maxStartFailures && !self.hasReadyWorker }

    // MARK: Starting workers

    /// Worker `index` was spawned as process `pid`.
    public mutating func workerSpawned(index: Int, pid: Int32) -> [Action] {
        guard self.workers[index]?.pid == 0 else { return [] }
        self.workers[index]!.pid = pid
        if self.workers[index]!.state == .spawning { self.workers[index]!.state = .starting }
        self.actions.append(.log(.debug, "worker starting", metadata: [LogKey.pool: self.configuration.name, LogKey.workerPID: "\(pid)"]))
        self.maintain()  // the next one, if more are missing
        return self.take()
    }

    /// Worker `index` could not be spawned (the interpreter is missing, no pipes).
    public mutating func spawnFailed(index: Int, reason: String) -> [Action] {
        guard self.workers[index]?.pid == 0 else { return [] }
        self.workers.removeValue(forKey: index)
        self.startFailed(reason)
        return self.take()
    }

    /// Worker `index`'s pipes are attached: frames can be written to it.
    public mutating func workerAttached(index: Int) -> [Action] {
        guard self.workers[index] != nil else { return [] }
        self.workers[index]!.attached = true
        // Retired before its pipes were ready: let it exit as soon as it can.
        return self.workers[index]!.state == .retiring ? [.closeStdin(worker: index)] : []
    }

    /// The retry timer fired: try again to reach the target.
    public mutating func retryTimerFired(now: NIODeadline) -> [Action] {
        guard self.retryPending else { return [] }
        self.retryPending = false
        self.maintain()
        self.dispatch(now: now)
        return self.take()
    }

    /// Starts workers until `target` are alive, one at a time: the next is asked for
    /// when this one has spawned (`workerSpawned`), so a failed start ends the round and
    /// the next attempt waits for the backoff.
    private mutating func maintain() {
        guard !self.isShuttingDown else { return }
        self.failQueueIfNoWorkerCanStart()
        let live = self.workers.values.filter { $0.state != .retiring }.count
        guard live < self.target, !self.retryPending else { return }
        let index = self.nextIndex
        self.nextIndex += 1
        // The slot exists before the process does, so that a `maintain` between this
        // action and its `workerSpawned` does not start a second worker for it.
        self.workers[index] = Slot(
            index: index, loaded: BoundedCache(capacity: self.configuration.bundleCacheBytes), blobs: BoundedCache(capacity: self.configuration.blobCacheBytes)
        )
        self.actions.append(.spawnWorker(index: index))
    }

    /// Queued jobs cannot run when no worker is ready and starts keep failing: they end
    /// with the reason (new jobs start the attempts over, see `submit`).
    private mutating func failQueueIfNoWorkerCanStart() {
        guard self.startsFailedForGood else { return }
        self.actions.append(.answerReadyWaiters(failure: self.lastStartError))
        self.failQueue(JobError(code: .workerDied, message: "no Python worker could start: \(self.lastStartError)"))
    }

    /// Counts a failed start, logs a reason not seen before in this run of failures,
    /// ends the queue when nothing can run it, and schedules the next attempt.
    private mutating func startFailed(_ reason: String) {
        self.startFailures += 1
        if self.lastStartError != reason {  // once per distinct reason, not per retry
            self.actions.append(.log(.error, "cannot start worker", metadata: [LogKey.pool: self.configuration.name, LogKey.error: reason]))
            self.lastStartError = reason
        }
        self.failQueueIfNoWorkerCanStart()
        // Try again to reach `target` workers after the backoff delay (100 ms, doubling
        // up to 5 s).
        guard !self.retryPending, !self.isShuttingDown else { return }
        let delay = self.retryDelay
        self.retryDelay = min(.nanoseconds(delay.nanoseconds * 2), Self.maxRetryDelay)
        self.retryPending = true
        self.actions.append(.scheduleRetry(after: delay))
    }

    private mutating func cancelRetry() {
        guard self.retryPending else { return }
        self.retryPending = false
        self.actions.append(.cancelRetry)
    }

    private mutating func retire(_ index: Int) {
        guard let slot = self.workers[index], slot.state != .retiring else { return }
        self.workers[index]!.state = .retiring
        // Closing the worker's stdin lets it finish the jobs already in its pipe, then exit.
        if slot.attached { self.actions.append(.closeStdin(worker: index)) }
    }

    // MARK: Killing and reaping
    //
    // A worker's end is learnt from its process (`processEnded`, after `checkProcess`),
    // not from EOF on its stdout: a process its job forked may hold the pipes long
    // after the worker is gone. The tick looks at every worker every 50 ms, and a kill
    // or an EOF makes the driver look at once and shortly after.

    /// Kills the worker's process group for `reason` (once) and looks for its end soon.
    private mutating func kill(_ index: Int, reason: Slot.KillReason) {
        guard let slot = self.workers[index], slot.killReason == nil else { return }
        self.workers[index]!.killReason = reason
        self.actions.append(.killProcessGroup(worker: index))
        self.actions.append(.checkProcess(worker: index, after: Self.killRecheckDelay))
    }

    /// The worker's stdout closed (EOF or an error): it is exiting or broken. SIGKILL
    /// does not change the status of a process already exiting, and ends one that is
    /// stuck.
    public mutating func stdoutClosed(worker index: Int) -> [Action] {
        guard let slot = self.workers[index], !slot.stdoutClosed else { return [] }
        self.workers[index]!.stdoutClosed = true
        return [.killProcessGroup(worker: index), .checkProcess(worker: index, after: .zero), .checkProcess(worker: index, after: Self.killRecheckDelay)]
    }

    /// The worker's process has ended (it is not reaped yet). It is reaped now when its
    /// stdout has closed; else results it wrote just before it ended may still be in
    /// the pipe, ahead of the EOF: wait for the EOF, or, when something else holds the
    /// pipe open (a process its job forked), for `pipeDrainGrace`.
    ///
    /// `unreadOutput`: the driver saw bytes waiting in the worker's stdout pipe. They are
    /// read first, however late: a process stalled by the machine runs its overdue
    /// timers back to back, and the grace could end before the loop read the results the
    /// worker wrote before it exited (a MemoryError's result and its retiring frame were
    /// lost so, under load). A pipe that never empties (a process the job forked keeps
    /// writing) is given up after ten graces.
    public mutating func processEnded(worker index: Int, now: NIODeadline, unreadOutput: Bool = false) -> [Action] {
        guard let slot = self.workers[index], slot.pid != 0, !slot.reaping else { return [] }
        if !slot.stdoutClosed {
            guard let seen = slot.endSeenAt else {
                self.workers[index]!.endSeenAt = now
                return [.checkProcess(worker: index, after: Self.pipeDrainGrace)]
            }
            guard now - seen >= Self.pipeDrainGrace else { return [] }
            if unreadOutput, now - seen < Self.pipeDrainGrace * 10 { return [.checkProcess(worker: index, after: Self.killRecheckDelay)] }
        }
        self.workers[index]!.reaping = true
        return [.reap(worker: index)]
    }

    /// The worker was reaped with `status`: its running job ends (how depends on why
    /// it ended), the jobs behind it go back to the front of the queue, and a
    /// replacement starts.
    public mutating func workerReaped(worker index: Int, status: ExitStatus, now: NIODeadline) -> [Action] {
        guard let slot = self.workers.removeValue(forKey: index) else { return [] }
        self.gone.append(slot.statistics(exit: status))
        if slot.state == .starting, slot.killReason == nil, !self.isShuttingDown {
            self.startFailed("'\(self.configuration.python)' \(status) before it was ready")
        }
        var inflight = slot.inflight
        // The running frame: the head's batch, up to its job marked `last`. With two or
        // more of its jobs unanswered, which one ran is unknown: the worker writes a
        // batch's results at its end (or every millisecond).
        let frameEnd = inflight.firstIndex { $0.last } ?? inflight.count - 1
        var unknown = false
        if frameEnd > 0, slot.killReason == nil || slot.killReason?.isCancel == true {
            unknown = true
            // Killed to stop one job of the batch (which has ended already): the others
            // go back to the queue. Died by itself: they go back too, each to run alone,
            // so that a job that kills its worker ends `workerDied` by itself. Either way
            // a job that had finished, its result not yet written, runs again.
            if slot.killReason == nil {
                for item in inflight.prefix(through: frameEnd) where !item.cancelled { self.runAlone.insert(item.job.id) }
            }
        } else if let head = inflight.popFirst(), !head.cancelled {
            let error = self.deathError(of: slot, status: status)
            let metadata = [LogKey.pool: self.configuration.name, LogKey.workerPID: "\(slot.pid)", LogKey.jobID: "\(head.job.id)", LogKey.reason: error.message]
            // The job's error tells its owner (pprun prints one line per failure): debug,
            // not a second report of the same failure.
            self.actions.append(.log(.debug, "worker ended during a job", metadata: metadata))
            self.actions.append(self.completion(head.job, error))
        }
        // Jobs behind the head never started: run them elsewhere (stopped ones ended).
        if !unknown, let head = slot.inflight.first { self.queue.charge(head.job.owner, seconds: (now - slot.headStartedAt).secondsDouble, now: now) }
        self.handBack(inflight, now: now)
        if self.isShuttingDown { self.failQueue(JobError(code: .shutdown, message: "the worker pool shut down before the job ran")) }
        self.maintain()
        self.dispatch(now: now)
        self.finishShutdownIfDone()
        return self.take()
    }

    private func deathError(of slot: Slot, status: ExitStatus) -> JobError {
        let pid = slot.pid
        switch slot.killReason {
        case .timeout(let limit):
            return JobError(code: .timeout, message: "the job ran longer than its timeout of \(limit.shortSeconds) s; its worker (pid \(pid)) was killed and replaced")
        case .protocolError(let message):
            return JobError(code: .protocolError, message: "worker (pid \(pid)) broke the worker protocol: \(message)")
        case .shutdown:
            return JobError(code: .shutdown, message: "the worker pool shut down and killed the worker (pid \(pid)) after the grace period")
        case .cancelled:
            return Self.cancelledWhileRunning(pid: pid)
        case nil:
            return JobError(code: .workerDied, message: "the worker process (pid \(pid)) \(status) while running this job; it was replaced")
        }
    }

    /// Once the last worker is reaped (no new one starts once shutting down).
    private mutating func finishShutdownIfDone() {
        if self.isShuttingDown, self.workers.isEmpty { self.actions.append(.finishShutdown) }
    }

    /// Every 50 ms: kills workers whose running job passed its timeout, and asks the
    /// driver to look at every worker's process (reaping those that ended, even when
    /// something else still holds their pipes).
    public mutating func tick(now: NIODeadline) -> [Action] {
        for index in self.workers.keys.sorted() {
            let slot = self.workers[index]!
            if slot.killReason == nil, let limit = slot.inflight.first?.job.timeout, now - slot.headStartedAt > .nanoseconds(limit.nanosecondsInt64) {
                self.kill(index, reason: .timeout(limit))
            }
            if slot.pid != 0 { self.actions.append(.checkProcess(worker: index, after: .zero)) }
        }
        return self.take()
    }

    // MARK: Messages from workers

    /// A frame arrived from worker `index`. Queued jobs are handed out at
    /// `readComplete`, once per batch of reads.
    public mutating func received(_ message: WorkerMessage, from index: Int, now: NIODeadline) -> [Action] {
        self.handle(message, from: index, now: now)
        return self.take()
    }

    /// The messages of one read from worker `index`, in order: as `received` one by
    /// one, with one list of actions for them all (a read holds hundreds of results
    /// when jobs are tiny). Messages after one that breaks the protocol are ignored.
    public mutating func received(_ messages: [WorkerMessage], from index: Int, now: NIODeadline) -> [Action] {
        for message in messages {
            guard self.handle(message, from: index, now: now) else { break }
        }
        return self.take()
    }

    /// Handles one message; `false` when it broke the protocol (the worker is killed).
    @discardableResult
    private mutating func handle(_ message: WorkerMessage, from index: Int, now: NIODeadline) -> Bool {
        // No copy of the slot is held here: the in-place changes to its pipe below
        // would copy the whole pipe for every result.
        guard let state = self.workers[index]?.state else { return true }
        switch message {
        case .hello(let body):
            guard state == .starting else { return true }
            self.workers[index]!.state = .ready
            // Starts go well again: reset the backoff.
            if !self.lastStartError.isEmpty { self.actions.append(.log(.notice, "workers start again", metadata: [LogKey.pool: self.configuration.name])) }
            self.startFailures = 0
            self.lastStartError = ""
            self.retryDelay = Self.firstRetryDelay
            if self.pythonVersion == nil {
                self.pythonVersion = Self.helloString("python", body)
                self.pythonImplementation = Self.helloString("implementation", body)
            }
            self.actions.append(.log(.debug, "worker ready", metadata: [LogKey.pool: self.configuration.name, LogKey.workerPID: "\(self.workers[index]!.pid)"]))
            self.actions.append(.answerReadyWaiters(failure: nil))
        case .result(var result):
            result.executor = self.configuration.name
            guard self.finishHead(of: index, with: result, kind: .call, now: now) else {
                self.breakProtocol("result for job \(result.id) it was not running", worker: index)
                return false
            }
            self.workers.update(index) { slot in
                slot.jobsDone += 1
                slot.busyTime += .nanoseconds(Int64(clamping: result.nanoseconds))
            }
            self.jobTime.add(nanoseconds: result.nanoseconds)
        case .checkReply(let id, let error):
            let payload = error.map { Array($0.readableBytesView) } ?? []
            let result = JobResult(id: id, code: error == nil ? nil : .functionUnavailable, payload: payload, executor: self.configuration.name)
            guard self.finishHead(of: index, with: result, kind: .check, now: now) else {
                self.breakProtocol("check reply \(id) it was not asked for", worker: index)
                return false
            }
        case .retiring:
            // The worker exits after this (it hit a MemoryError). Nothing behind the job
            // it just answered has started: run those elsewhere.
            self.retire(index)
            let behind = self.workers[index]!.inflight
            self.workers[index]!.inflight.removeAll()
            self.handBack(behind, now: now)
            self.maintain()
        }
        return true
    }

    /// Takes worker `index`'s running job off its pipe when it is job `result.id` of
    /// `kind` (what a result or a check reply must answer) and completes it with
    /// `result` unless it was stopped; the next job starts `now`.
    ///
    /// - Returns: `false` when the worker was not running that job.
    private mutating func finishHead(of index: Int, with result: JobResult, kind: Job.Kind, now: NIODeadline) -> Bool {
        // In place: reading the slot through `workers[index]!` copied it whole, pipe
        // included, for every result.
        let taken = self.workers.update(index) { slot -> (head: Piped, startedAt: NIODeadline)? in
            guard let first = slot.inflight.first, first.job.id == result.id, first.job.kind == kind else { return nil }
            defer { slot.headStartedAt = now }
            return (slot.inflight.removeFirst(), slot.headStartedAt)
        }
        guard let (head, startedAt) = taken ?? nil else { return false }
        let ran = result.nanoseconds > 0 ? Double(result.nanoseconds) / 1e9 : (now - startedAt).secondsDouble
        self.queue.charge(head.job.owner, seconds: ran, now: now)
        if !head.cancelled { self.actions.append(.complete(head.job, result)) }
        return true
    }

    /// The reads of one batch are done: refill workers' pipes, one write each.
    public mutating func readComplete(now: NIODeadline) -> [Action] {
        self.dispatch(now: now)
        return self.take()
    }

    /// Worker `index` broke the worker protocol (a bad frame, an unexpected reply): it
    /// is killed, and its running job ends with `protocolError`.
    public mutating func protocolError(_ message: String, worker index: Int) -> [Action] {
        self.breakProtocol(message, worker: index)
        return self.take()
    }

    private mutating func breakProtocol(_ message: String, worker index: Int) {
        guard let slot = self.workers[index], slot.killReason == nil else { return }
        self.actions.append(.log(.error, "worker protocol error", metadata: [LogKey.workerPID: "\(slot.pid)", LogKey.error: message]))
        self.kill(index, reason: .protocolError(message))
    }

    /// A string field of a hello body without escapes (nil if absent or escaped): a
    /// tiny scan, which avoids a JSON parser here.
    public static func helloString(_ name: String, _ body: ByteBuffer) -> String? {
        let bytes = body.readableBytesView
        guard let key = bytes.firstRange(of: Array("\"\(name)\":\"".utf8)),
            let end = bytes[key.upperBound...].firstIndex(where: { $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }),
            bytes[end] == UInt8(ascii: "\"")
        else { return nil }
        return String(decoding: bytes[key.upperBound..<end], as: UTF8.self)
    }

    // MARK: Jobs

    /// Queues jobs and hands them to ready workers. When starts had failed for good,
    /// new work tries again at once (the interpreter may have been installed
    /// meanwhile); the jobs fail if the next attempts fail too.
    public mutating func submit(_ jobs: [Job], now: NIODeadline) -> [Action] {
        if self.isShuttingDown {
            return jobs.map { self.completion($0, JobError(code: .shutdown, message: "the worker pool is shutting down")) }
        }
        for job in jobs { self.queue.append(job, owner: job.owner, weight: job.ownerWeight, now: now) }
        if self.startsFailedForGood {
            self.startFailures = 0
            self.retryDelay = Self.firstRetryDelay
            self.cancelRetry()
        }
        self.maintain()
        self.dispatch(now: now)
        return self.take()
    }

    /// Cancels a job that is still queued: it ends with `cancelled`.
    ///
    /// - Returns: its completion; none when the job was not queued.
    public mutating func cancel(jobID: UInt64) -> [Action] {
        guard let job = self.queue.remove(where: { $0.id == jobID }) else { return [] }
        self.runAlone.remove(jobID)
        return [self.completion(job, JobError(code: .cancelled, message: "the job was cancelled before it ran"))]
    }

    /// Stops a job wherever it is: queued, it is removed; in a worker's pipe behind the
    /// running frame, it ends now and its later result is dropped; running (or in the
    /// running batch), it ends now and its worker's process group is killed (the worker
    /// is replaced, the jobs behind it run elsewhere). The job ends `cancelled`, once.
    ///
    /// - Returns: the actions, which end the job; none when the pool did not hold it.
    public mutating func stop(jobID: UInt64) -> [Action] {
        let queued = self.cancel(jobID: jobID)
        if !queued.isEmpty { return queued }
        for index in self.workers.keys.sorted() {
            guard let i = self.workers[index]!.inflight.firstIndex(where: { $0.job.id == jobID && !$0.cancelled }) else { continue }
            self.workers[index]!.inflight[i].cancelled = true
            let job = self.workers[index]!.inflight[i].job
            // In the running frame (the head, or a job of the head's batch, which the
            // worker may have reached): only killing the worker stops it.
            let frameEnd = self.workers[index]!.inflight.firstIndex { $0.last } ?? 0
            if i <= frameEnd {
                let pid = self.workers[index]!.pid
                self.actions.append(self.completion(job, i == 0 ? Self.cancelledWhileRunning(pid: pid) : JobError(code: .cancelled, message: "the job was cancelled in its worker's batch; the worker (pid \(pid)) was killed and replaced")))
                self.kill(index, reason: .cancelled)
            } else {
                self.actions.append(self.completion(job, JobError(code: .cancelled, message: "the job was cancelled before it ran")))
            }
            return self.take()
        }
        return []
    }

    private static func cancelledWhileRunning(pid: Int32) -> JobError {
        JobError(code: .cancelled, message: "the job was cancelled while it ran; its worker (pid \(pid)) was killed and replaced")
    }

    /// Jobs taken off a worker's pipe before they started go back to the front of
    /// their owners' queues (stopped ones have ended already).
    private mutating func handBack(_ items: some BidirectionalCollection<Piped>, now: NIODeadline) {
        for item in items.reversed() {
            if item.cancelled {
                self.queue.charge(item.job.owner, seconds: 0, now: now)
            } else {
                self.queue.prepend(item.job, owner: item.job.owner, now: now)
            }
        }
    }

    private func completion(_ job: Job, _ error: JobError) -> Action {
        .complete(job, JobResult(id: job.id, error: error, executor: self.configuration.name))
    }

    private mutating func failQueue(_ error: JobError) {
        for job in self.queue.removeAll() { self.actions.append(self.completion(job, error)) }
        self.runAlone.removeAll()  // it names queued jobs only
    }

    /// Hands queued jobs to ready workers, least loaded first, one write per worker.
    /// A worker's pipe holds up to as many jobs as run in `pipelineTarget` by the
    /// moving average of job times (at least one, at most `maxPipelineDepth`). Each round
    /// gives each worker one frame of at most its share of the queue: a batch (`M`) of
    /// one owner's consecutive jobs of one bundle, or a single job.
    private mutating func dispatch(now: NIODeadline) {
        guard !self.queue.isEmpty else { return }
        let depth = self.jobTime.jobs(fittingIn: Self.pipelineTarget, limit: self.configuration.maxPipelineDepth)
        // A pipe is refilled once it is half empty (or empty): frames of many jobs, not a
        // trickle of small ones after each burst of results.
        var ready = self.workers.indices {
            $0.state == .ready && $0.attached && $0.killReason == nil && !$0.stdoutClosed && ($0.inflight.isEmpty || $0.inflight.count <= depth / 2)
        }
        if ready.count > 1 { ready.sort { (self.workers[$0]!.inflight.count, $0) < (self.workers[$1]!.inflight.count, $1) } }
        guard !ready.isEmpty else { return }
        let share = (self.queue.count + ready.count - 1) / ready.count
        let alone = self.runAlone
        var buffers = [ByteBuffer](repeating: ByteBuffer(), count: ready.count)
        var progress = true
        while progress, !self.queue.isEmpty {
            progress = false
            for (i, index) in ready.enumerated() {
                let room = min(share, depth - self.workers[index]!.inflight.count)
                guard room > 0 else { continue }
                var bytes = 0
                let jobs = self.queue.popBatch(limit: room, now: now) { first, next in
                    bytes += next.arguments.json.count
                    return Self.batchable(first, alone) && Self.batchable(next, alone) && next.bundle.digest == first.bundle.digest
                        && next.arguments.isOpaque == first.arguments.isOpaque && bytes <= Self.maxBatchBytes
                }
                guard let job = jobs.first else { break }
                if buffers[i].capacity == 0 { buffers[i] = ByteBufferAllocator().buffer(capacity: 4096) }
                let bundle = job.bundle
                self.load(bundle, on: index, into: &buffers[i])
                for blob in job.arguments.blobs { self.load(blob, of: job, on: index, into: &buffers[i]) }
                switch job.kind {
                case .call where jobs.count > 1: WorkerFrame.writeBatch(jobs, bundle: bundle.digest, opaque: job.arguments.isOpaque, to: &buffers[i])
                case .call: WorkerFrame.writeJob(id: job.id, bundle: bundle.digest, arguments: job.arguments, to: &buffers[i])
                case .check: WorkerFrame.writeCheck(id: job.id, bundle: bundle.digest, to: &buffers[i])
                }
                if self.workers[index]!.inflight.isEmpty { self.workers[index]!.headStartedAt = now }
                for (k, job) in jobs.enumerated() { self.workers[index]!.inflight.append((job, false, k == jobs.count - 1)) }
                if !alone.isEmpty { self.runAlone.remove(job.id) }
                progress = true
            }
        }
        for (i, index) in ready.enumerated() where buffers[i].readableBytes > 0 {
            self.actions.append(.write(worker: index, buffers[i]))
        }
    }

    /// Whether a job may travel in a batch: a call with no timeout (a timeout measures
    /// from the previous result, which a batch writes late), no blobs, and not under
    /// suspicion of killing its worker.
    private static func batchable(_ job: Job, _ alone: Set<UInt64>) -> Bool {
        job.kind == .call && job.timeout == nil && job.arguments.blobs.isEmpty && (alone.isEmpty || !alone.contains(job.id))
    }

    /// Writes a bundle frame unless the worker has the bundle, dropping least recently
    /// used bundles past the cache limit (never one a job in its pipe still needs).
    private mutating func load(_ bundle: FunctionBundle, on index: Int, into buffer: inout ByteBuffer) {
        if self.workers[index]!.lastBundle == bundle.digest { return }
        self.workers[index]!.lastBundle = bundle.digest
        if self.workers[index]!.loaded.get(bundle.digest) != nil { return }
        let needed = Set(self.workers[index]!.inflight.map(\.job.bundle.digest))
        let evicted = self.workers[index]!.loaded.insert(bundle.digest, (), cost: bundle.spec.count) { needed.contains($0) }
        for (digest, _) in evicted { WorkerFrame.writeDrop(digest, to: &buffer) }
        WorkerFrame.writeBundle(bundle, to: &buffer)
    }

    /// Writes a blob frame unless the worker holds the blob, dropping least recently
    /// used blobs past the cache limit (never one `job` or a job in its pipe needs).
    private mutating func load(_ blob: ArgumentBlob, of job: Job, on index: Int, into buffer: inout ByteBuffer) {
        if self.workers[index]!.blobs.get(blob.digest) != nil { return }
        let needed = Set((self.workers[index]!.inflight.map(\.job) + [job]).flatMap { $0.arguments.blobs.map(\.digest) })
        let evicted = self.workers[index]!.blobs.insert(blob.digest, (), cost: blob.bytes.count) { needed.contains($0) }
        for (digest, _) in evicted { WorkerFrame.writeDropBlob(digest, to: &buffer) }
        WorkerFrame.writeBlob(blob, to: &buffer)
    }
}

/// The pool's workers by index, in an array: a pool has a few, so a scan finds one
/// faster than hashing, and `_read`/`_modify` reach a slot in place (a dictionary's
/// getter copies the whole slot, pipe and cache included, on every read).
struct SlotTable: Sendable {
    private var slots: [WorkerPoolStateMachine.Slot?] = []
    /// The slots' indices, position for position: a search reads these, not the slots
    /// (each of which a search would copy).
    private var order: [Int] = []

    private func position(_ index: Int) -> Int? {
        self.order.firstIndex(of: index)
    }

    subscript(index: Int) -> WorkerPoolStateMachine.Slot? {
        _read {
            if let p = self.position(index) { yield self.slots[p] } else { yield nil }
        }
        _modify {
            if let p = self.position(index) {
                yield &self.slots[p]
                if self.slots[p] == nil {
                    self.slots.remove(at: p)
                    self.order.remove(at: p)
                }
            } else {
                var new: WorkerPoolStateMachine.Slot?
                yield &new
                if let new {
                    self.slots.append(new)
                    self.order.append(index)
                }
            }
        }
    }

    var isEmpty: Bool { self.slots.isEmpty }
    /// The slots, by index (they are added in index order).
    var values: [WorkerPoolStateMachine.Slot] { self.slots.compactMap { $0 } }
    /// The indices, in order.
    var keys: [Int] { self.order }

    /// The indices of the slots that match, in order.
    func indices(where matches: (borrowing WorkerPoolStateMachine.Slot) -> Bool) -> [Int] {
        var out: [Int] = []
        for p in self.slots.indices where matches(self.slots[p]!) { out.append(self.order[p]) }
        return out
    }

    /// Runs `body` on slot `index` in place; `nil` when there is no such slot.
    @discardableResult
    mutating func update<R>(_ index: Int, _ body: (inout WorkerPoolStateMachine.Slot) -> R) -> R? {
        guard let p = self.position(index) else { return nil }
        return body(&self.slots[p]!)
    }

    @discardableResult
    mutating func removeValue(forKey index: Int) -> WorkerPoolStateMachine.Slot? {
        guard let p = self.position(index) else { return nil }
        self.order.remove(at: p)
        return self.slots.remove(at: p)
    }
}

extension TimeAmount {
    /// In seconds.
    var secondsDouble: Double { Double(self.nanoseconds) / 1e9 }
}

extension Duration {
    /// Seconds as a short decimal text ("2", "0.3").
    var shortSeconds: String {
        let s = Double(self.nanosecondsInt64) / 1e9
        return s == s.rounded() ? String(Int(s)) : String(s)
    }
}

/// Counters of one pool.
public struct PoolStatistics: Sendable {
    /// The pool's label.
    public var name: String
    /// The number of workers the pool keeps.
    public var targetWorkers = 0
    /// Jobs waiting for a worker.
    public var queued = 0
    /// Jobs in workers' pipes or running.
    public var running = 0
    /// Every worker the pool has run, live or gone.
    public var workers: [WorkerStatistics] = []
    /// The workers' Python version, once one has started.
    public var pythonVersion: String?
    /// The workers' Python implementation (`cpython`), once one has started.
    public var pythonImplementation: String?
    /// The fair share: each owner's recent use, queued and running jobs.
    public var owners: [OwnerShare] = []

    /// Jobs finished by all workers.
    public var jobsDone: Int { self.workers.reduce(0) { $0 + $1.jobsDone } }
    /// Time all workers spent running functions.
    public var busyTime: Duration { self.workers.reduce(.zero) { $0 + $1.busyTime } }
    /// Workers running now.
    public var liveWorkers: Int { self.workers.filter(\.alive).count }
}

extension PoolStatistics {
    /// The counters of a pool with nothing in it.
    public init(name: String) { self.name = name }
}

/// Counters of one worker process.
public struct WorkerStatistics: Sendable {
    /// The worker's number in its pool, from 1.
    public var index: Int
    /// Its process id.
    public var pid: Int32
    /// Jobs it finished (with a value or a Python error).
    public var jobsDone: Int
    /// Time it spent running functions.
    public var busyTime: Duration
    /// How it ended, when it has.
    public var exit: ExitStatus?

    /// Whether it is running.
    public var alive: Bool { self.exit == nil }
}
