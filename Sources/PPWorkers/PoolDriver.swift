import DequeModule
import Logging
import NIOCore
import NIOPosix
import PPCore

/// Runs a `WorkerPoolStateMachine`: owns the worker processes, their pipes and the
/// pool's timers, feeds the machine what happens to them and carries out the actions
/// it returns. All the pool's decisions are the machine's; this class only does I/O.
///
/// `@unchecked Sendable` is safe because every method runs on `eventLoop`: the public
/// `WorkerPool` hops there first, and channel handlers, timers and the bootstrap's
/// callbacks run there too. Closures capture the driver only to run back on the loop.
final class PoolDriver: @unchecked Sendable {
    typealias Action = WorkerPoolStateMachine.Action

    /// A worker's process and, once attached, the channel on its pipes.
    private struct Worker {
        let process: ChildProcess
        var channel: (any Channel)?
    }

    let configuration: WorkerPool.Configuration
    let eventLoop: any EventLoop
    var logger: Logger { self.configuration.logger }

    private var machine: WorkerPoolStateMachine
    /// Spawned and not yet reaped, by the machine's worker index.
    private var workers: [Int: Worker] = [:]
    /// Actions not carried out yet. A job's completion may call back into the pool
    /// (`submit(contentsOf:)` on the loop runs at once; closing a channel fires its
    /// handler): the actions of such a nested event wait here until the ones before
    /// them ran, so that frames reach each worker in the order the machine queued them.
    private var pending = Deque<Action>()
    private var running = false
    private var retryTask: Scheduled<Void>?
    private var graceTask: Scheduled<Void>?
    private var sweeper: RepeatedTask?
    private var readyWaiters: [(WorkerStartError?) -> Void] = []
    private var shutdownWaiters: [() -> Void] = []

    /// How often timeouts are checked and ended workers looked for.
    private static let tickInterval: TimeAmount = .milliseconds(50)

    init(configuration: WorkerPool.Configuration, eventLoop: any EventLoop) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.machine = WorkerPoolStateMachine(
            configuration: .init(
                name: configuration.name,
                python: configuration.python,
                maxPipelineDepth: configuration.maxPipelineDepth,
                bundleCacheBytes: configuration.bundleCacheBytes,
                shutdownGrace: .nanoseconds(configuration.shutdownGrace.nanosecondsInt64)
            )
        )
    }

    var target: Int { self.machine.target }

    // MARK: Events

    func start(target: Int) {
        self.sweeper = self.eventLoop.scheduleRepeatedTask(initialDelay: Self.tickInterval, delay: Self.tickInterval) { [self] _ in
            self.run(self.machine.tick(now: .now()))
        }
        self.run(self.machine.start(target: target))
    }

    func resize(to n: Int) {
        self.run(self.machine.resize(to: n, now: .now()))
    }

    func shutdown(_ done: @escaping () -> Void) {
        self.shutdownWaiters.append(done)
        self.run(self.machine.shutdown())
    }

    /// Calls `done` once a worker is ready (`nil`), or with the reason when none can
    /// start or the pool is shutting down.
    func whenReady(_ done: @escaping (WorkerStartError?) -> Void) {
        switch self.machine.whenReady() {
        case .ready: done(nil)
        case .failed(let reason): done(WorkerStartError(reason: reason))
        case .waiting: self.readyWaiters.append(done)
        }
    }

    func enqueue(_ jobs: some Collection<Job>) {
        self.run(self.machine.submit(jobs, now: .now()))
    }

    func cancel(jobID: UInt64) -> Bool {
        let (found, actions) = self.machine.cancel(jobID: jobID)
        self.run(actions)
        return found
    }

    func stop(jobID: UInt64) -> Bool {
        let (found, actions) = self.machine.stop(jobID: jobID)
        self.run(actions)
        return found
    }

    func received(_ message: WorkerMessage, index: Int) {
        self.run(self.machine.received(message, from: index, now: .now()))
    }

    /// The reads of one batch are done: refill workers' pipes with one write each.
    func readComplete() {
        self.run(self.machine.readComplete(now: .now()))
    }

    func protocolFailure(index: Int, message: String) {
        self.run(self.machine.protocolError(message, worker: index))
    }

    func channelClosed(index: Int) {
        self.run(self.machine.stdoutClosed(worker: index))
    }

    func statistics() -> PoolStatistics {
        PoolStatistics(
            name: self.configuration.name,
            targetWorkers: self.machine.target,
            queued: self.machine.queuedCount,
            running: self.machine.runningCount,
            workers: self.machine.workerSummaries.map {
                WorkerStatistics(
                    index: $0.index, pid: $0.pid, jobsDone: $0.jobsDone, busyTime: .nanoseconds(Int64(clamping: $0.busyNanoseconds)),
                    alive: $0.exit == nil, exit: $0.exit
                )
            },
            pythonVersion: self.machine.pythonVersion
        )
    }

    // MARK: Actions

    private func run(_ actions: [Action]) {
        self.pending.append(contentsOf: actions)
        guard !self.running else { return }
        self.running = true
        defer { self.running = false }
        while let action = self.pending.popFirst() { self.perform(action) }
    }

    private func perform(_ action: Action) {
        switch action {
        case .spawnWorker(let index):
            self.spawnWorker(index)
        case .write(let index, let buffer):
            self.workers[index]?.channel?.writeAndFlush(buffer, promise: nil)
        case .closeStdin(let index):
            self.workers[index]?.channel?.close(mode: .output, promise: nil)
        case .killProcessGroup(let index):
            self.workers[index]?.process.killGroup()
        case .checkProcess(let index, let delay):
            if delay == .zero {
                self.checkProcess(index)
            } else {
                self.eventLoop.scheduleTask(in: delay) { [self] in self.checkProcess(index) }
            }
        case .reap(let index):
            guard let worker = self.workers.removeValue(forKey: index) else { return }
            let status = worker.process.reap()
            self.run(self.machine.workerReaped(worker: index, status: status, now: .now()))
            // Closed after the machine forgot the worker: the channel's EOF is then moot.
            worker.channel?.close(promise: nil)
        case .scheduleRetry(let delay):
            self.retryTask = self.eventLoop.scheduleTask(in: delay) { [self] in
                self.retryTask = nil
                self.run(self.machine.retryTimerFired(now: .now()))
            }
        case .cancelRetry:
            self.retryTask?.cancel()
            self.retryTask = nil
        case .complete(let job, let result):
            job.completion(result)
        case .answerReadyWaiters(let failure):
            let waiters = self.readyWaiters
            self.readyWaiters = []
            let error = failure.map { WorkerStartError(reason: $0) }
            for w in waiters { w(error) }
        case .scheduleShutdownKill(let delay):
            self.graceTask = self.eventLoop.scheduleTask(in: delay) { [self] in
                self.run(self.machine.shutdownGraceElapsed())
            }
        case .finishShutdown:
            self.sweeper?.cancel()
            self.sweeper = nil
            self.graceTask?.cancel()
            self.graceTask = nil
            let waiters = self.shutdownWaiters
            self.shutdownWaiters = []
            for w in waiters { w() }
        case .log(let level, let message, let metadata):
            self.logger.log(level: Self.level(level), "\(message)", metadata: metadata.mapValues { .string($0) })
        }
    }

    /// Starts worker `index` and attaches its pipes.
    ///
    /// Runs on the pool's event loop, always: PR_SET_PDEATHSIG kills the child when the
    /// thread that forked it exits, and the loop's thread lives until the pool has shut
    /// down (every action runs on the loop).
    private func spawnWorker(_ index: Int) {
        self.eventLoop.preconditionInEventLoop()
        let process: ChildProcess
        do {
            process = try ChildProcess.spawn([self.configuration.python, "-B", "-c", WorkerScript.source])
        } catch {
            self.run(self.machine.spawnFailed(index: index, reason: "\(error)"))
            return
        }
        self.workers[index] = Worker(process: process)
        self.run(self.machine.workerSpawned(index: index, pid: process.pid))
        NIOPipeBootstrap(group: self.eventLoop)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ByteToMessageHandler(WorkerMessageDecoder()),
                        WorkerChannelHandler(driver: self, index: index)
                    )
                }
            }
            .takingOwnershipOfDescriptors(input: process.stdoutRead, output: process.stdinWrite)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    guard self.workers[index] != nil else {
                        // The worker ended (and was reaped) before its pipes were attached.
                        channel.close(promise: nil)
                        return
                    }
                    self.workers[index]!.channel = channel
                    self.run(self.machine.workerAttached(index: index))
                case .failure(let error):
                    self.logger.error("cannot attach worker pipes", metadata: [LogKey.error: "\(error)"])
                    self.channelClosed(index: index)
                }
            }
    }

    /// Tells the machine when worker `index`'s process has ended (not reaped: the
    /// zombie keeps its pid and group id from being reused until the machine says so).
    private func checkProcess(_ index: Int) {
        guard let worker = self.workers[index], worker.process.hasEnded() else { return }
        self.run(self.machine.processEnded(worker: index, now: .now()))
    }

    private static func level(_ level: WorkerPoolStateMachine.LogLevel) -> Logger.Level {
        switch level {
        case .debug: .debug
        case .notice: .notice
        case .warning: .warning
        case .error: .error
        }
    }
}
