import DequeModule
import Logging
import NIOCore
import NIOPosix
import PPCore

#if canImport(Glibc)
import Glibc
#endif

/// The pool's state and logic. Confined to the pool's event loop.
///
/// `@unchecked Sendable` is safe because every method runs on `eventLoop`: the public
/// `WorkerPool` hops there first, and channel handlers, timers and the reaper's
/// callbacks run there too. Closures capture the core only to hop back to the loop.
final class PoolCore: @unchecked Sendable {
    let configuration: WorkerPool.Configuration
    let eventLoop: any EventLoop
    var logger: Logger { self.configuration.logger }

    private(set) var target: Int = 0
    private var queue = Deque<Job>()
    private var workers: [Int: WorkerSlot] = [:]
    private var gone: [WorkerStatistics] = []
    private var nextIndex = 1
    /// How long jobs take lately, which sets the pipeline depth.
    private var jobTime = JobTimeEstimator()
    /// Worker starts that failed in a row (spawn error, or exit before hello).
    private var startFailures = 0
    private var lastStartError = ""
    /// The pending retry of a failed start, and the delay before the next one.
    private var retryTask: Scheduled<Void>?
    private var retryDelay = PoolCore.firstRetryDelay
    private var pythonVersion: String?
    private var sweeper: RepeatedTask?
    private var shuttingDown = false
    private var shutdownWaiters: [() -> Void] = []
    /// Callers of `whenReady`, answered once a worker is ready or none can start.
    private var readyWaiters: [(WorkerStartError?) -> Void] = []

    /// The work a worker's pipe holds: as many jobs as run in this time (at least one).
    private static let pipelineTarget: Duration = .milliseconds(1)
    private static let maxStartFailures = 3
    /// How long an ended worker's pipe may stay open (held by a process its job forked)
    /// before the pool stops waiting for the results in it.
    private static let pipeDrainGrace: TimeAmount = .milliseconds(300)
    private static let firstRetryDelay = TimeAmount.milliseconds(100)
    private static let maxRetryDelay = TimeAmount.seconds(5)

    init(configuration: WorkerPool.Configuration, eventLoop: any EventLoop) {
        self.configuration = configuration
        self.eventLoop = eventLoop
    }

    // MARK: Life cycle

    func start(target: Int) {
        self.target = target
        self.sweeper = self.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(50), delay: .milliseconds(50)) {
            [self] _ in self.sweep()
        }
        self.maintain()
    }

    func resize(to n: Int) {
        guard !self.shuttingDown else { return }
        self.target = n
        var live = self.workers.values.filter { $0.state != .retiring }
        if live.count > n {
            // Retire the least busy first: starting workers, then idle ones.
            live.sort { ($0.state == .starting ? -1 : $0.inflight.count) < ($1.state == .starting ? -1 : $1.inflight.count) }
            for slot in live.prefix(live.count - n) { self.retire(slot) }
        }
        self.maintain()
        self.dispatch()
    }

    func shutdown(_ done: @escaping () -> Void) {
        self.shutdownWaiters.append(done)
        guard !self.shuttingDown else { return }
        self.shuttingDown = true
        self.target = 0
        self.answerReadyWaiters(WorkerStartError(reason: "the worker pool shut down"))
        let queued = self.queue
        self.queue.removeAll()
        for job in queued {
            job.fail(JobError(code: .shutdown, message: "the worker pool shut down before the job ran"), executor: self.configuration.name)
        }
        self.retryTask?.cancel()
        self.retryTask = nil
        for slot in self.workers.values { self.retire(slot) }
        self.eventLoop.scheduleTask(in: .nanoseconds(Int64(self.configuration.shutdownGrace.nanosecondsInt64))) { [self] in
            for slot in Array(self.workers.values) { self.kill(slot, reason: .shutdown) }
        }
        self.finishShutdownIfDone()
    }

    private func finishShutdownIfDone() {
        guard self.shuttingDown, self.workers.isEmpty else { return }
        self.sweeper?.cancel()
        self.sweeper = nil
        let waiters = self.shutdownWaiters
        self.shutdownWaiters = []
        for w in waiters { w() }
    }

    /// Calls `done` once a worker is ready (`nil`), or with the reason when none can
    /// start (the start failures reached their limit with no worker ready) or the pool
    /// is shutting down. A pool of 0 workers is ready at once.
    func whenReady(_ done: @escaping (WorkerStartError?) -> Void) {
        if self.shuttingDown {
            done(WorkerStartError(reason: "the worker pool shut down"))
        } else if self.target == 0 || self.workers.values.contains(where: { $0.state == .ready }) {
            done(nil)
        } else if self.startFailures >= Self.maxStartFailures {
            done(WorkerStartError(reason: self.lastStartError))
        } else {
            self.readyWaiters.append(done)
        }
    }

    private func answerReadyWaiters(_ error: WorkerStartError?) {
        let waiters = self.readyWaiters
        self.readyWaiters = []
        for w in waiters { w(error) }
    }

    // MARK: Workers

    /// Starts workers until `target` are alive. After a failed start it waits for the
    /// backoff (`retryStart`) before it tries again.
    private func maintain() {
        guard !self.shuttingDown else { return }
        self.failQueueIfNoWorkerCanStart()
        let live = self.workers.values.filter { $0.state != .retiring }.count
        guard live < self.target, self.retryTask == nil else { return }
        for _ in live..<self.target {
            guard self.spawnWorker() else { break }
        }
    }

    /// Queued jobs cannot run when no worker is ready and starts keep failing: they end
    /// with the reason (new jobs start the attempts over, see `enqueue`).
    private func failQueueIfNoWorkerCanStart() {
        guard self.startFailures >= Self.maxStartFailures, !self.workers.values.contains(where: { $0.state == .ready }) else { return }
        self.answerReadyWaiters(WorkerStartError(reason: self.lastStartError))
        guard !self.queue.isEmpty else { return }
        self.failQueue(JobError(code: .workerDied, message: "no Python worker could start: \(self.lastStartError)"))
    }

    /// Starts one worker; returns false when it could not be started.
    ///
    /// Runs on the pool's event loop, always: PR_SET_PDEATHSIG kills the child when the
    /// thread that forked it exits, and the loop's thread lives until the pool has shut
    /// down (every path here comes from `start`, `resize`, `enqueue`, a worker's exit or
    /// the retry timer, all on the loop).
    private func spawnWorker() -> Bool {
        self.eventLoop.preconditionInEventLoop()
        let index = self.nextIndex
        self.nextIndex += 1
        let process: ChildProcess
        do {
            process = try ChildProcess.spawn([self.configuration.python, "-B", "-c", WorkerScript.source])
        } catch {
            self.startFailed("\(error)")
            return false
        }
        let slot = WorkerSlot(index: index, process: process, startedAt: .now(), bundleCacheBytes: self.configuration.bundleCacheBytes)
        self.workers[index] = slot
        self.logger.debug("worker starting", metadata: ["pool": "\(self.configuration.name)", "worker.pid": "\(process.pid)"])
        NIOPipeBootstrap(group: self.eventLoop)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ByteToMessageHandler(WorkerMessageDecoder()),
                        WorkerChannelHandler(core: self, index: index)
                    )
                }
            }
            .takingOwnershipOfDescriptors(input: process.stdoutRead, output: process.stdinWrite)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    guard self.workers[index] === slot else {
                        // The worker ended (and was reaped) before its pipes were attached.
                        channel.close(promise: nil)
                        return
                    }
                    slot.channel = channel
                    if slot.state == .retiring { channel.close(mode: .output, promise: nil) }
                case .failure(let error):
                    self.logger.error("cannot attach worker pipes", metadata: ["error": "\(error)"])
                    self.channelClosed(index: index)
                }
            }
        return true
    }

    /// Counts a failed start, logs a reason not seen before in this run of failures,
    /// ends the queue when nothing can run it, and schedules the next attempt.
    private func startFailed(_ reason: String) {
        self.startFailures += 1
        if self.lastStartError != reason {  // once per distinct reason, not per retry
            self.logger.error("cannot start worker", metadata: ["pool": "\(self.configuration.name)", "error": "\(reason)"])
            self.lastStartError = reason
        }
        self.failQueueIfNoWorkerCanStart()
        self.retryStart()
    }

    /// Tries again to reach `target` workers after the backoff delay (100 ms, doubling
    /// up to 5 s), as long as fewer than `target` workers live.
    private func retryStart() {
        guard self.retryTask == nil, !self.shuttingDown else { return }
        let delay = self.retryDelay
        self.retryDelay = min(TimeAmount.nanoseconds(delay.nanoseconds * 2), Self.maxRetryDelay)
        self.retryTask = self.eventLoop.scheduleTask(in: delay) { [self] in
            self.retryTask = nil
            self.maintain()
            self.dispatch()
        }
    }

    /// Starts go well again: reset the backoff.
    private func startSucceeded() {
        if self.startFailures > 0 || !self.lastStartError.isEmpty {
            if !self.lastStartError.isEmpty {
                self.logger.notice("workers start again", metadata: ["pool": "\(self.configuration.name)"])
            }
            self.startFailures = 0
            self.lastStartError = ""
        }
        self.retryDelay = Self.firstRetryDelay
    }

    private func retire(_ slot: WorkerSlot) {
        guard slot.state != .retiring else { return }
        slot.state = .retiring
        // Closing the worker's stdin lets it finish the jobs already in its pipe, then exit.
        slot.channel?.close(mode: .output, promise: nil)
    }

    // MARK: Killing and reaping
    //
    // A worker's end is learnt from waitid on its pid (`poll`), not from EOF on its
    // stdout: a process its job forked may hold the pipes long after the worker is gone.
    // `poll` runs in the 50 ms sweep and right after a kill or an EOF; it reaps each pid
    // exactly once (the slot leaves `workers` as it is reaped) and kills the worker's
    // process group first, so nothing its jobs started outlives it.

    /// Kills the worker's process group for `reason` (once) and collects it soon.
    private func kill(_ slot: WorkerSlot, reason: WorkerSlot.KillReason) {
        guard slot.killReason == nil, self.workers[slot.index] === slot else { return }
        slot.killReason = reason
        slot.process.killGroup()
        self.pollSoon(slot)
    }

    /// The worker's stdout closed (EOF or error): it is exiting or broken. SIGKILL does
    /// not change the status of a process already exiting, and ends one that is stuck.
    func channelClosed(index: Int) {
        guard let slot = self.workers[index], !slot.stdoutClosed else { return }
        slot.stdoutClosed = true
        slot.process.killGroup()
        self.poll(slot)
        self.pollSoon(slot)
    }

    /// Reaps the worker when its process has ended: closes its pipes (whoever else
    /// holds them) and ends or requeues its jobs.
    private func poll(_ slot: WorkerSlot) {
        guard self.workers[slot.index] === slot, slot.process.hasEnded() else { return }
        if !slot.stdoutClosed {
            // Results the worker wrote just before it ended may still be in the pipe:
            // its EOF comes after them. Wait for it, or, when something else holds the
            // pipe open (a process its job forked), for a short grace period.
            let now = NIODeadline.now()
            guard let seen = slot.endSeenAt else {
                slot.endSeenAt = now
                self.eventLoop.scheduleTask(in: Self.pipeDrainGrace) { [self] in self.poll(slot) }
                return
            }
            guard now - seen >= Self.pipeDrainGrace else { return }
        }
        let status = slot.process.reap()
        self.workers.removeValue(forKey: slot.index)
        slot.channel?.close(promise: nil)
        self.workerExited(slot, status: status)
    }

    /// A killed process takes a moment to become a zombie: look again shortly (the
    /// sweep looks every 50 ms anyway).
    private func pollSoon(_ slot: WorkerSlot) {
        self.eventLoop.scheduleTask(in: .milliseconds(2)) { [self] in self.poll(slot) }
    }

    private func workerExited(_ slot: WorkerSlot, status: ExitStatus) {
        self.gone.append(slot.statistics(exit: status))
        if slot.state == .starting, slot.killReason == nil, !self.shuttingDown {
            self.startFailed("'\(self.configuration.python)' \(status) before it was ready")
        }
        var inflight = slot.inflight
        if let head = inflight.popFirst(), !head.cancelled {
            let error = self.deathError(of: slot, status: status, job: head.job)
            self.logger.warning(
                "worker ended during a job",
                metadata: ["pool": "\(self.configuration.name)", "worker.pid": "\(slot.process.pid)", "job.id": "\(head.job.id)", "reason": "\(error.message)"]
            )
            head.job.fail(error, executor: self.configuration.name)
        }
        // Jobs behind the head never started: run them elsewhere (cancelled ones ended).
        for item in inflight.reversed() where !item.cancelled { self.queue.prepend(item.job) }
        if self.shuttingDown {
            self.failQueue(JobError(code: .shutdown, message: "the worker pool shut down before the job ran"))
            self.finishShutdownIfDone()
            return
        }
        self.maintain()
        self.dispatch()
    }

    private func deathError(of slot: WorkerSlot, status: ExitStatus, job: Job) -> JobError {
        let pid = slot.process.pid
        switch slot.killReason {
        case .timeout(let limit):
            return JobError(
                code: .timeout,
                message: "the job ran longer than its timeout of \(limit.seconds) s; its worker (pid \(pid)) was killed and replaced"
            )
        case .protocolError(let message):
            return JobError(code: .protocolError, message: "worker (pid \(pid)) broke the worker protocol: \(message)")
        case .shutdown:
            return JobError(code: .shutdown, message: "the worker pool shut down and killed the worker (pid \(pid)) after the grace period")
        case .cancelled:
            return Self.cancelledWhileRunning(pid: pid)
        case nil:
            return JobError(
                code: .workerDied,
                message: "the worker process (pid \(pid)) \(status) while running this job; it was replaced"
            )
        }
    }

    // MARK: Messages from workers

    func received(_ message: WorkerMessage, index: Int) {
        guard let slot = self.workers[index] else { return }
        switch message {
        case .hello(let body):
            guard slot.state == .starting else { return }
            slot.state = .ready
            self.startSucceeded()
            if self.pythonVersion == nil { self.pythonVersion = HelloJSON.pythonVersion(body) }
            self.logger.debug("worker ready", metadata: ["pool": "\(self.configuration.name)", "worker.pid": "\(slot.process.pid)"])
            self.answerReadyWaiters(nil)
        case .result(var result):
            guard let head = slot.inflight.first, head.job.id == result.id, head.job.kind == .call else {
                self.protocolFailure(index: index, message: "result for job \(result.id) it was not running")
                return
            }
            slot.inflight.removeFirst()
            slot.headStartedAt = .now()
            slot.jobsDone += 1
            slot.busyNanos += result.nanoseconds
            self.jobTime.add(nanoseconds: result.nanoseconds)
            result.executor = self.configuration.name
            if !head.cancelled { head.job.completion(result) }
        case .checkReply(let id, let error):
            guard let head = slot.inflight.first, head.job.id == id, head.job.kind == .check else {
                self.protocolFailure(index: index, message: "check reply \(id) it was not asked for")
                return
            }
            slot.inflight.removeFirst()
            slot.headStartedAt = .now()
            let result = JobResult(
                id: id, code: error == nil ? nil : .functionUnavailable, payload: error.map { Array($0.readableBytesView) } ?? [],
                executor: self.configuration.name
            )
            if !head.cancelled { head.job.completion(result) }
        case .retiring:
            // The worker exits after this (it hit a MemoryError). Nothing behind the job
            // it just answered has started: run those elsewhere.
            self.retire(slot)
            for item in slot.inflight.reversed() where !item.cancelled { self.queue.prepend(item.job) }
            slot.inflight.removeAll()
            self.maintain()
        }
    }

    /// The reads of one batch are done: refill workers' pipes with one write each.
    func readComplete() {
        self.dispatch()
    }

    func protocolFailure(index: Int, message: String) {
        guard let slot = self.workers[index], slot.killReason == nil else { return }
        self.logger.error("worker protocol error", metadata: ["worker.pid": "\(slot.process.pid)", "error": "\(message)"])
        self.kill(slot, reason: .protocolError(message))
    }

    // MARK: Jobs

    func enqueue(_ jobs: some Collection<Job>) {
        if self.shuttingDown {
            for job in jobs {
                job.fail(JobError(code: .shutdown, message: "the worker pool is shutting down"), executor: self.configuration.name)
            }
            return
        }
        self.queue.append(contentsOf: jobs)
        if self.startFailures >= Self.maxStartFailures, !self.workers.values.contains(where: { $0.state == .ready }) {
            // Try again at once for new work: the interpreter may have been installed
            // meanwhile. The jobs fail if the next attempts fail too.
            self.startFailures = 0
            self.retryDelay = Self.firstRetryDelay
            self.retryTask?.cancel()
            self.retryTask = nil
        }
        self.maintain()
        self.dispatch()
    }

    func cancel(jobID: UInt64) -> Bool {
        guard let i = self.queue.firstIndex(where: { $0.id == jobID }) else { return false }
        let job = self.queue.remove(at: i)
        job.fail(JobError(code: .cancelled, message: "the job was cancelled before it ran"), executor: self.configuration.name)
        return true
    }

    /// Stops a job wherever it is: queued, it is removed; in a worker's pipe behind the
    /// running one, it ends now and its later result is dropped; running, it ends now and
    /// its worker's process group is killed (the worker is replaced, the jobs behind it
    /// run elsewhere). The job ends `cancelled`, once.
    ///
    /// - Returns: whether the job was found (and ended).
    func stop(jobID: UInt64) -> Bool {
        if self.cancel(jobID: jobID) { return true }
        for slot in self.workers.values {
            guard let i = slot.inflight.firstIndex(where: { $0.job.id == jobID && !$0.cancelled }) else { continue }
            slot.inflight[i].cancelled = true
            let job = slot.inflight[i].job
            if i == 0 {
                job.fail(Self.cancelledWhileRunning(pid: slot.process.pid), executor: self.configuration.name)
                self.kill(slot, reason: .cancelled)
            } else {
                job.fail(JobError(code: .cancelled, message: "the job was cancelled before it ran"), executor: self.configuration.name)
            }
            return true
        }
        return false
    }

    private static func cancelledWhileRunning(pid: Int32) -> JobError {
        JobError(code: .cancelled, message: "the job was cancelled while it ran; its worker (pid \(pid)) was killed and replaced")
    }

    private func failQueue(_ error: JobError) {
        let queued = self.queue
        self.queue.removeAll()
        for job in queued { job.fail(error, executor: self.configuration.name) }
    }

    /// Hands queued jobs to ready workers, least loaded first, one write per worker.
    private func dispatch() {
        guard !self.queue.isEmpty else { return }
        let depth = self.jobTime.jobs(fittingIn: Self.pipelineTarget, limit: self.configuration.maxPipelineDepth)
        var ready = self.workers.values.filter {
            $0.state == .ready && $0.channel != nil && $0.killReason == nil && !$0.stdoutClosed && $0.inflight.count < depth
        }
        guard !ready.isEmpty else { return }
        ready.sort { $0.inflight.count < $1.inflight.count }
        var buffers = [ByteBuffer](repeating: ByteBuffer(), count: ready.count)
        let now = NIODeadline.now()
        var progress = true
        while progress, !self.queue.isEmpty {
            progress = false
            for (i, slot) in ready.enumerated() where slot.inflight.count < depth {
                guard let job = self.queue.popFirst() else { break }
                if buffers[i].capacity == 0 { buffers[i] = ByteBufferAllocator().buffer(capacity: 4096) }
                self.load(job.bundle, on: slot, into: &buffers[i])
                switch job.kind {
                case .call: WorkerFrame.writeJob(id: job.id, bundle: job.bundle.digest, arguments: job.arguments, to: &buffers[i])
                case .check: WorkerFrame.writeCheck(id: job.id, bundle: job.bundle.digest, to: &buffers[i])
                }
                if slot.inflight.isEmpty { slot.headStartedAt = now }
                slot.inflight.append(InFlight(job: job))
                progress = true
            }
        }
        for (i, slot) in ready.enumerated() where buffers[i].readableBytes > 0 {
            slot.channel?.writeAndFlush(buffers[i], promise: nil)
        }
    }

    /// Writes a bundle frame unless the worker has the bundle, dropping least recently
    /// used bundles past the cache limit.
    private func load(_ bundle: FunctionBundle, on slot: WorkerSlot, into buffer: inout ByteBuffer) {
        if slot.loaded.get(bundle.digest) != nil { return }
        // A bundle that a job in the pipe still needs stays.
        let evicted = slot.loaded.insert(bundle.digest, (), cost: bundle.spec.count) { digest in
            slot.inflight.contains { $0.job.bundle.digest == digest }
        }
        for (digest, _) in evicted { WorkerFrame.writeDrop(digest, to: &buffer) }
        WorkerFrame.writeBundle(bundle, to: &buffer)
    }

    /// Every 50 ms: kills workers whose job passed its timeout, and reaps workers that
    /// ended (even when something else still holds their pipes).
    private func sweep() {
        let now = NIODeadline.now()
        for slot in Array(self.workers.values) {
            if slot.killReason == nil, let head = slot.inflight.first, let limit = head.job.timeout,
                now - slot.headStartedAt > TimeAmount.nanoseconds(Int64(limit.nanosecondsInt64))
            {
                self.kill(slot, reason: .timeout(limit))
            }
            self.poll(slot)
        }
    }

    // MARK: Statistics

    func statistics() -> PoolStatistics {
        let live = self.workers.values.sorted { $0.index < $1.index }.map { $0.statistics(exit: nil) }
        return PoolStatistics(
            name: self.configuration.name,
            targetWorkers: self.target,
            queued: self.queue.count,
            running: self.workers.values.reduce(0) { $0 + $1.inflight.count },
            workers: self.gone + live,
            pythonVersion: self.pythonVersion
        )
    }
}

// MARK: - Worker bookkeeping

/// One worker process as the pool sees it.
///
/// `@unchecked Sendable` is safe because it is confined to the pool's loop, like
/// `PoolCore`: closures capture it only to run back on that loop.
final class WorkerSlot: @unchecked Sendable {
    enum State { case starting, ready, retiring }
    enum KillReason { case timeout(Duration), protocolError(String), shutdown, cancelled }

    let index: Int
    let process: ChildProcess
    let startedAt: NIODeadline
    var channel: (any Channel)?
    var state: State = .starting
    var inflight = Deque<InFlight>()
    var headStartedAt: NIODeadline
    /// When the pool first saw the process ended while its stdout was still open.
    var endSeenAt: NIODeadline?
    var killReason: KillReason?
    /// EOF (or an error) on its stdout was seen.
    var stdoutClosed = false
    /// The bundles the worker has loaded, bounded in bytes by the pool's configuration.
    var loaded: BoundedCache<SHA256Digest, Void>
    var jobsDone = 0
    var busyNanos: UInt64 = 0

    init(index: Int, process: ChildProcess, startedAt: NIODeadline, bundleCacheBytes: Int) {
        self.loaded = BoundedCache(capacity: bundleCacheBytes)
        self.index = index
        self.process = process
        self.startedAt = startedAt
        self.headStartedAt = startedAt
    }

    func statistics(exit: ExitStatus?) -> WorkerStatistics {
        WorkerStatistics(
            index: self.index,
            pid: self.process.pid,
            jobsDone: self.jobsDone,
            busyTime: .nanoseconds(Int64(clamping: self.busyNanos)),
            alive: exit == nil,
            exit: exit
        )
    }
}

struct InFlight {
    var job: Job
    /// The job was stopped and has ended already: its result, if one comes, is dropped.
    var cancelled = false
}


extension Duration {
    /// Seconds as a short decimal text.
    var seconds: String {
        let ns = Double(self.nanosecondsInt64) / 1e9
        return ns == ns.rounded() ? String(Int(ns)) : String(ns)
    }
}
