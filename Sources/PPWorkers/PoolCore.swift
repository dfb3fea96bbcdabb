import DequeModule
import Dispatch
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
    private var queue = Deque<PoolJob>()
    private var workers: [Int: WorkerSlot] = [:]
    private var gone: [WorkerStatistics] = []
    private var nextIndex = 1
    /// Exponential moving average of job run time, which sets the pipeline depth.
    private var meanJobNanos: Double = 2_000_000
    private var startFailures = 0
    private var lastStartError = ""
    private var retryScheduled = false
    private var pythonVersion: String?
    private var sweeper: RepeatedTask?
    private var shuttingDown = false
    private var shutdownWaiters: [() -> Void] = []
    /// Callers of `whenReady`, answered once a worker is ready or none can start.
    private var readyWaiters: [(WorkerStartError?) -> Void] = []

    /// A job runs at most this long before the pipeline holds only one job per worker.
    private static let pipelineTargetNanos: Double = 1_000_000
    private static let maxStartFailures = 3

    init(configuration: WorkerPool.Configuration, eventLoop: any EventLoop) {
        self.configuration = configuration
        self.eventLoop = eventLoop
    }

    // MARK: Life cycle

    func start(target: Int) {
        self.target = target
        self.sweeper = self.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(50), delay: .milliseconds(50)) {
            [self] _ in self.sweepTimeouts()
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
            job.completion(.failure(JobError(code: .shutdown, message: "the worker pool shut down before the job ran"), executor: self.configuration.name))
        }
        for slot in self.workers.values { self.retire(slot) }
        self.eventLoop.scheduleTask(in: .nanoseconds(Int64(self.configuration.shutdownGrace.nanosecondsInt64))) { [self] in
            for slot in self.workers.values where slot.killReason == nil {
                slot.killReason = .shutdown
                slot.process.kill()
            }
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

    /// Starts workers until `target` are alive, unless they keep failing to start.
    private func maintain() {
        guard !self.shuttingDown else { return }
        let live = self.workers.values.filter { $0.state != .retiring }.count
        guard live < self.target else { return }
        if self.startFailures >= Self.maxStartFailures {
            if !self.workers.values.contains(where: { $0.state == .ready }) {
                self.failQueue(JobError(code: .workerDied, message: "no Python worker could start: \(self.lastStartError)"))
                self.answerReadyWaiters(WorkerStartError(reason: self.lastStartError))
            }
            return
        }
        for _ in live..<self.target { self.spawnWorker() }
    }

    private func spawnWorker() {
        let index = self.nextIndex
        self.nextIndex += 1
        let process: ChildProcess
        do {
            process = try ChildProcess.spawn([self.configuration.python, "-B", "-c", WorkerScript.source])
        } catch {
            self.startFailures += 1
            if self.lastStartError != "\(error)" {  // once per distinct reason, not per retry
                self.logger.error("cannot start worker", metadata: ["pool": "\(self.configuration.name)", "error": "\(error)"])
            }
            self.lastStartError = "\(error)"
            self.retryStart()
            return
        }
        let slot = WorkerSlot(index: index, process: process, startedAt: .now())
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
                    slot.channel = channel
                    if slot.state == .retiring { channel.close(mode: .output, promise: nil) }
                case .failure(let error):
                    self.logger.error("cannot attach worker pipes", metadata: ["error": "\(error)"])
                    self.channelClosed(index: index)
                }
            }
    }

    /// Tries again to reach `target` workers a little later, or, after too many
    /// failures, ends the queued jobs with the reason (done by `maintain`).
    private func retryStart() {
        guard !self.retryScheduled else { return }
        self.retryScheduled = true
        self.eventLoop.scheduleTask(in: .milliseconds(100)) { [self] in
            self.retryScheduled = false
            self.maintain()
            self.dispatch()
        }
    }

    private func retire(_ slot: WorkerSlot) {
        guard slot.state != .retiring else { return }
        slot.state = .retiring
        // Closing the worker's stdin lets it finish the jobs already in its pipe, then exit.
        slot.channel?.close(mode: .output, promise: nil)
    }

    /// The worker's stdout closed: make sure the process is gone and collect its status.
    func channelClosed(index: Int) {
        guard let slot = self.workers[index], !slot.reaping else { return }
        slot.reaping = true
        let process = slot.process
        let loop = self.eventLoop
        DispatchQueue.global().async { [self] in
            // Its stdout is closed, so it is exiting or broken: SIGKILL does not change
            // the status of a process already exiting, and ends one that is stuck.
            process.kill()
            let status = process.wait()
            loop.execute { self.workerExited(index: index, status: status) }
        }
    }

    private func workerExited(index: Int, status: ExitStatus) {
        guard let slot = self.workers.removeValue(forKey: index) else { return }
        self.gone.append(slot.statistics(exit: status))
        if slot.state == .starting, slot.killReason == nil, !self.shuttingDown {
            self.startFailures += 1
            self.lastStartError = "'\(self.configuration.python)' (pid \(slot.process.pid)) \(status) before it was ready"
            self.retryStart()
        }
        var inflight = slot.inflight
        if let head = inflight.popFirst() {
            let error = self.deathError(of: slot, status: status, job: head.job)
            self.logger.warning(
                "worker ended during a job",
                metadata: ["pool": "\(self.configuration.name)", "worker.pid": "\(slot.process.pid)", "job.id": "\(head.job.id)", "reason": "\(error.message)"]
            )
            head.job.completion(.failure(error, executor: self.configuration.name))
        }
        // Jobs behind the head never started: run them elsewhere.
        for item in inflight.reversed() { self.queue.prepend(item.job) }
        if self.shuttingDown {
            self.failQueue(JobError(code: .shutdown, message: "the worker pool shut down before the job ran"))
            self.finishShutdownIfDone()
            return
        }
        self.maintain()
        self.dispatch()
    }

    private func deathError(of slot: WorkerSlot, status: ExitStatus, job: PoolJob) -> JobError {
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
            self.startFailures = 0
            if self.pythonVersion == nil { self.pythonVersion = HelloJSON.pythonVersion(body) }
            self.logger.debug("worker ready", metadata: ["pool": "\(self.configuration.name)", "worker.pid": "\(slot.process.pid)"])
            self.answerReadyWaiters(nil)
        case .result(let result):
            guard let head = slot.inflight.first, head.job.id == result.jobID, head.job.kind == .call else {
                self.protocolFailure(index: index, message: "result for job \(result.jobID) it was not running")
                return
            }
            slot.inflight.removeFirst()
            slot.headStartedAt = .now()
            slot.jobsDone += 1
            slot.busyNanos += result.nanoseconds
            self.meanJobNanos = self.meanJobNanos * 0.8 + Double(result.nanoseconds) * 0.2
            head.job.completion(self.outcome(of: result))
        case .checkReply(let id, let error):
            guard let head = slot.inflight.first, head.job.id == id, head.job.kind == .check else {
                self.protocolFailure(index: index, message: "check reply \(id) it was not asked for")
                return
            }
            slot.inflight.removeFirst()
            slot.headStartedAt = .now()
            let result: Result<[UInt8], JobError> =
                error.map { .failure(JobError(code: .functionUnavailable, workerJSON: $0)) } ?? .success([])
            head.job.completion(JobOutcome(result: result, executor: self.configuration.name))
        case .retiring:
            // The worker exits after this (it hit a MemoryError). Nothing behind the job
            // it just answered has started: run those elsewhere.
            self.retire(slot)
            for item in slot.inflight.reversed() { self.queue.prepend(item.job) }
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
        slot.killReason = .protocolError(message)
        slot.process.kill()
    }

    private func outcome(of r: WorkerResult) -> JobOutcome {
        let name = self.configuration.name
        let stdout = r.stdout.readableBytes == 0 ? "" : String(buffer: r.stdout)
        let stderr = r.stderr.readableBytes == 0 ? "" : String(buffer: r.stderr)
        let duration = Duration.nanoseconds(Int64(clamping: r.nanoseconds))
        let result: Result<[UInt8], JobError>
        switch r.status {
        case .ok:
            result = .success(Array(r.payload.readableBytesView))
        case .raised, .notJSON, .bundleError, .badArguments:
            let code: JobError.Code =
                switch r.status {
                case .raised: .pythonException
                case .notJSON: .resultNotJSON
                case .bundleError: .functionUnavailable
                default: .badArguments
                }
            var error = JobError(code: code, workerJSON: r.payload)
            error.stdout = stdout
            error.stderr = stderr
            error.executor = name
            result = .failure(error)
        }
        return JobOutcome(result: result, stdout: stdout, stderr: stderr, duration: duration, executor: name)
    }

    // MARK: Jobs

    func enqueue(_ jobs: some Collection<PoolJob>) {
        if self.shuttingDown {
            for job in jobs {
                job.completion(.failure(JobError(code: .shutdown, message: "the worker pool is shutting down"), executor: self.configuration.name))
            }
            return
        }
        self.queue.append(contentsOf: jobs)
        if self.startFailures >= Self.maxStartFailures, !self.workers.values.contains(where: { $0.state == .ready }) {
            // Try again for new work: the interpreter may have been installed meanwhile.
            self.startFailures = 0
        }
        self.maintain()
        self.dispatch()
    }

    func cancel(jobID: UInt64) -> Bool {
        guard let i = self.queue.firstIndex(where: { $0.id == jobID }) else { return false }
        let job = self.queue.remove(at: i)
        job.completion(.failure(JobError(code: .cancelled, message: "the job was cancelled before it ran"), executor: self.configuration.name))
        return true
    }

    private func failQueue(_ error: JobError) {
        let queued = self.queue
        self.queue.removeAll()
        for job in queued { job.completion(.failure(error, executor: self.configuration.name)) }
    }

    /// Hands queued jobs to ready workers, least loaded first, one write per worker.
    private func dispatch() {
        guard !self.queue.isEmpty else { return }
        let depth = max(1, min(self.configuration.maxPipelineDepth, Int(Self.pipelineTargetNanos / max(self.meanJobNanos, 1))))
        var ready = self.workers.values.filter { $0.state == .ready && $0.channel != nil && $0.killReason == nil && $0.inflight.count < depth }
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
        slot.useTick &+= 1
        if slot.loaded[bundle.digest] != nil {
            slot.loaded[bundle.digest]!.lastUse = slot.useTick
            return
        }
        let size = bundle.spec.count
        while slot.loadedBytes + size > self.configuration.bundleCacheBytes, !slot.loaded.isEmpty {
            let oldest = slot.loaded.min { $0.value.lastUse < $1.value.lastUse }!
            // A bundle that a job in the pipe still needs stays.
            if slot.inflight.contains(where: { $0.job.bundle.digest == oldest.key }) { break }
            slot.loaded.removeValue(forKey: oldest.key)
            slot.loadedBytes -= oldest.value.size
            WorkerFrame.writeDrop(oldest.key, to: &buffer)
        }
        slot.loaded[bundle.digest] = LoadedBundle(size: size, lastUse: slot.useTick)
        slot.loadedBytes += size
        WorkerFrame.writeBundle(bundle, to: &buffer)
    }

    private func sweepTimeouts() {
        let now = NIODeadline.now()
        for slot in self.workers.values where slot.killReason == nil {
            guard let head = slot.inflight.first, let limit = head.job.timeout else { continue }
            if now - slot.headStartedAt > TimeAmount.nanoseconds(Int64(limit.nanosecondsInt64)) {
                slot.killReason = .timeout(limit)
                slot.process.kill()
            }
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
    enum KillReason { case timeout(Duration), protocolError(String), shutdown }

    let index: Int
    let process: ChildProcess
    let startedAt: NIODeadline
    var channel: (any Channel)?
    var state: State = .starting
    var inflight = Deque<InFlight>()
    var headStartedAt: NIODeadline
    var killReason: KillReason?
    var reaping = false
    var loaded: [SHA256Digest: LoadedBundle] = [:]
    var loadedBytes = 0
    var useTick: UInt64 = 0
    var jobsDone = 0
    var busyNanos: UInt64 = 0

    init(index: Int, process: ChildProcess, startedAt: NIODeadline) {
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
    var job: PoolJob
}

struct LoadedBundle {
    var size: Int
    var lastUse: UInt64
}

extension Duration {
    /// Seconds as a short decimal text.
    var seconds: String {
        let ns = Double(self.nanosecondsInt64) / 1e9
        return ns == ns.rounded() ? String(Int(ns)) : String(ns)
    }
}
