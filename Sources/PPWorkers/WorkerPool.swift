public import Logging
public import NIOCore
public import PPCore
import DequeModule
import NIOPosix
public import ServiceLifecycle
import Synchronization

import Foundation

/// A pool of long-lived `python3` worker processes that run Python function calls.
///
/// The pool starts `workers` processes, feeds them jobs from one queue, resizes at run
/// time, kills and replaces a worker whose job passes its timeout (or is stopped with
/// `stop(jobIDs:)`), replaces a worker
/// that dies (its running job ends with a `workerDied` error that says how, the jobs
/// queued behind it run elsewhere) and keeps statistics. Short jobs are pipelined and
/// batched: the pool keeps several jobs in each worker's pipe when the measured job
/// time is small, consecutive jobs of one bundle in one frame, and the worker writes
/// their results together, so tiny jobs cost few system calls each.
///
/// All state lives on one event loop; every public method may be called from any thread.
/// Completion handlers run on that event loop and must return quickly.
public final class WorkerPool: Service, @unchecked Sendable {
    /// How a pool is set up.
    public struct Configuration: Sendable {
        /// The number of worker processes; `nil` means the cores this process may use.
        public var workers: Int?
        /// The Python interpreter to start (looked up in `PATH`).
        public var python: String
        /// A label for this pool in statistics and errors (`"local"`, a node name).
        public var name: String
        /// The most jobs kept in one worker's pipe when jobs are short.
        public var maxPipelineDepth = 1024
        /// Bytes of function bundles each worker keeps loaded before it drops the least
        /// recently used one.
        public var bundleCacheBytes = 64 << 20
        /// How long `shutdown` lets running jobs finish before it kills their workers.
        public var shutdownGrace: Duration = .seconds(5)
        /// Where the pool logs worker starts, deaths and restarts.
        public var logger: Logger
        /// The file that remembers, across runs, the interpreter behind a pyenv shim
        /// (`~/.cache/parallelpython/interpreters`); `nil` starts every pool's first
        /// workers through the shim.
        public var interpreterCache: String? = InterpreterCache.userFile

        /// Creates a configuration.
        ///
        /// - Parameters:
        ///   - workers: worker processes, `nil` for the usable core count.
        ///   - python: the interpreter; defaults to `$PP_PYTHON` or `python3`.
        ///   - name: the pool's label.
        ///   - logger: where the pool logs.
        public init(
            workers: Int? = nil,
            python: String? = nil,
            name: String = "local",
            logger: Logger = Logger(label: "pp.workers", factory: { _ in SwiftLogNoOpLogHandler() })
        ) {
            self.workers = workers
            self.python = python ?? Self.defaultPython
            self.name = name
            self.logger = logger
        }

        /// `$PP_PYTHON` when set, else `python3`.
        public static var defaultPython: String {
            if let p = getenv("PP_PYTHON"), let s = String(validatingCString: p), !s.isEmpty { return s }
            return "python3"
        }
    }

    typealias Action = WorkerPoolStateMachine.Action

    /// The event loop that owns the pool's state and its workers' pipes.
    public let eventLoop: any EventLoop
    /// The configuration the pool was created with.
    public let configuration: Configuration
    /// The ids of this pool's jobs: everyone who submits to the pool takes ids here.
    public let jobIDs = IDAllocator()
    /// Set by the first `start()`.
    private let started = Atomic(false)
    private let stopState = Mutex(StopState.running)

    // The pool drives a `WorkerPoolStateMachine`: it owns the worker processes, their
    // pipes and the timers, feeds the machine what happens to them and carries out the
    // actions it returns. All the pool's decisions are the machine's.
    //
    // The state below is touched only on `eventLoop`, which makes `@unchecked Sendable`
    // safe: the public methods hop there first, and channel handlers, timers and the
    // bootstrap's callbacks run there too.
    private var machine: WorkerPoolStateMachine
    /// Spawned and not yet reaped, by the machine's worker index; the channel on its
    /// pipes once attached.
    private var workers: [Int: (process: ChildProcess, channel: (any Channel)?)] = [:]
    /// Actions not carried out yet. A job's completion may call back into the pool
    /// (`submit(contentsOf:)` on the loop runs at once; closing a channel fires its
    /// handler): the actions of such a nested event wait here until the ones before
    /// them ran, so that frames reach each worker in the order the machine queued them.
    private var pending = Deque<Action>()
    private var running = false
    private var retryTask: Scheduled<Void>?
    private var graceTask: Scheduled<Void>?
    private var sweeper: RepeatedTask?
    /// Callers of `waitUntilReady`, answered with why no worker can start (or `nil`).
    private var readyWaiters: [(String?) -> Void] = []
    private var intercept: ((Job, JobResult) -> Bool)?
    private var shutdownWaiters: [() -> Void] = []

    /// How often timeouts are checked and ended workers looked for.
    private static let tickInterval: TimeAmount = .milliseconds(50)

    /// Creates a pool. It starts nothing: its workers start with `start()`, which the
    /// first submission (or any other use but `shutdown()`) calls.
    ///
    /// - Parameters:
    ///   - configuration: size, interpreter, label.
    ///   - eventLoop: the loop to run on; `nil` takes one of NIO's shared group. The
    ///     loop's thread must outlive the pool: workers die with the thread that
    ///     started them (their parent-death signal).
    public init(configuration: Configuration = .init(), eventLoop: (any EventLoop)? = nil) {
        // A write to the pipe of a worker that just died must fail with EPIPE, not kill us.
        _ = signal(SIGPIPE, SIG_IGN)
        var configuration = configuration
        configuration.workers = max(0, configuration.workers ?? System.coreCount)
        self.configuration = configuration
        self.eventLoop = eventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
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

    /// Starts the workers, once; later calls do nothing.
    public func start() {
        guard self.started.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        let size = self.configuration.workers ?? 0
        self.onLoop {
            self.sweeper = self.eventLoop.scheduleRepeatedTask(initialDelay: Self.tickInterval, delay: Self.tickInterval) { _ in
                self.run(self.machine.tick(now: .now()))
            }
            if size > 0 { self.lookUpInterpreter() }
            self.run(self.machine.start(target: size))
        }
    }

    /// Runs the pool as a `Service`: starts it, serves until graceful shutdown (or
    /// cancellation), then shuts it down.
    public func run() async throws {
        self.start()
        try? await gracefulShutdown()
        await self.shutdown()
    }

    // MARK: Jobs

    /// Queues one job.
    public func submit(_ job: Job) {
        self.start()
        self.eventLoop.execute { self.run(self.machine.submit([job], now: .now())) }
    }

    /// Shows `intercept` each job's result on the pool's loop before the job's
    /// completion runs; when it returns `true` it has taken the result and the
    /// completion is not called. The client's local executor frees its slots and places
    /// refused jobs elsewhere through it, without a closure per job. Set it before
    /// submitting jobs.
    public func interceptResults(_ intercept: @escaping @Sendable (Job, JobResult) -> Bool) {
        self.eventLoop.execute { self.intercept = intercept }
    }

    /// Queues many jobs with one hop to the pool's loop.
    public func submit(contentsOf jobs: [Job]) {
        self.start()
        guard !jobs.isEmpty else { return }
        self.onLoop { self.run(self.machine.submit(jobs, now: .now())) }
    }

    /// Cancels queued jobs without waiting; each one that had not started ends with
    /// `cancelled`.
    public func cancel(jobIDs: [UInt64]) {
        self.start()
        self.eventLoop.execute {
            for id in jobIDs { self.run(self.machine.cancel(jobID: id)) }
        }
    }

    /// Stops a job whether it is queued or running.
    ///
    /// A queued job is removed; a job in a worker's pipe behind the running one ends at
    /// once (its result, when it comes, is dropped); a running job ends at once and its
    /// worker's process group is killed, the worker replaced, and the jobs queued behind
    /// it run on other workers. A stopped job ends with `cancelled`, exactly once.
    ///
    /// - Returns: `true` when the pool held the job (it has then ended with `cancelled`).
    public func stop(jobID: UInt64) async -> Bool {
        self.start()
        let stopped = self.eventLoop.submit {
            let actions = self.machine.stop(jobID: jobID)
            self.run(actions)
            return !actions.isEmpty  // the job's completion
        }
        return (try? await stopped.get()) ?? false
    }

    /// Stops jobs, queued or running, without waiting (see `stop(jobID:)`).
    public func stop(jobIDs: [UInt64]) {
        self.start()
        self.eventLoop.execute {
            for id in jobIDs { self.run(self.machine.stop(jobID: id)) }
        }
    }

    /// Loads `bundle` on a worker and reports whether it loaded.
    ///
    /// - Returns: `nil` when the function is ready to run, else the error (a
    ///   `functionUnavailable` with the Python traceback: syntax error, failing import,
    ///   missing function name).
    public func check(_ bundle: FunctionBundle) async -> JobError? {
        self.start()
        return await withCheckedContinuation { (continuation: CheckedContinuation<JobError?, Never>) in
            let job = Job(id: self.jobIDs.next(), bundle: bundle, kind: .check) { result in
                let error: JobError? = if case .failure(let error) = result.outcome.result { error } else { nil }
                continuation.resume(returning: error)
            }
            self.submit(job)
        }
    }

    // MARK: Size

    /// The number of workers the pool keeps running.
    public func size() async -> Int {
        self.start()
        return (try? await self.eventLoop.submit { self.machine.target }.get()) ?? 0
    }

    /// Changes the number of workers while jobs run. New workers start at once; extra
    /// workers finish the jobs already in their pipes and exit.
    ///
    /// - Parameter workers: the new size (0 or more).
    public func resize(to workers: Int) {
        self.start()
        let n = max(0, workers)
        self.eventLoop.execute { self.run(self.machine.resize(to: n, now: .now())) }
    }

    /// Returns once a worker has started and said hello (at once for a pool of 0
    /// workers).
    ///
    /// - Throws: `WorkerStartError` when no worker can start: the pool's start failures
    ///   reached their limit (3 in a row) with no worker ready, for instance because the
    ///   interpreter does not exist or exits at once; or the pool shut down first.
    public func waitUntilReady() async throws(WorkerStartError) {
        self.start()
        // After shutdown() the pool's own loop may be gone: answer without it.
        guard case .running = self.stopState.withLock({ $0 }) else { throw WorkerStartError(reason: "the worker pool shut down") }
        let error: WorkerStartError? = await withCheckedContinuation { continuation in
            self.eventLoop.execute {
                self.readyWaiters.append { continuation.resume(returning: $0.map { WorkerStartError(reason: $0) }) }
                self.run(self.machine.whenReady())
            }
        }
        if let error { throw error }
    }

    // MARK: Statistics

    /// A snapshot of the pool's counters.
    public func statistics() async -> PoolStatistics {
        self.start()
        if case .stopped(let last) = self.stopState.withLock({ $0 }) { return last }
        return (try? await self.eventLoop.submit {
            var statistics = self.machine.statistics
            statistics.owners = self.machine.shares(now: .now())
            return statistics
        }.get()) ?? PoolStatistics(name: self.configuration.name)
    }

    // MARK: Shutdown

    /// Stops the pool: queued jobs end with `shutdown`, running jobs finish within the
    /// configured grace period (then their workers are killed), and workers exit.
    public func shutdown() async {
        // A pool shut down before it started never starts.
        self.started.store(true, ordering: .relaxed)
        // Only the first call stops the pool; later calls wait for it to finish (without
        // the pool's loop, which may be gone once it has).
        let stopping: Task<Void, Never>? = self.stopState.withLock { state in
            if case .running = state { state = .stopping(Task { await self.shutDownWorkers() }) }
            if case .stopping(let task) = state { return task }
            return nil
        }
        await stopping?.value
    }

    private func shutDownWorkers() async {
        // The last statistics are taken before the pool's own loop stops (it runs nothing after).
        let last = await withCheckedContinuation { (continuation: CheckedContinuation<PoolStatistics, Never>) in
            self.eventLoop.execute {
                self.shutdownWaiters.append { continuation.resume(returning: self.machine.statistics) }
                self.run(self.machine.shutdown())
            }
        }
        self.stopState.withLock { $0 = .stopped(last) }
    }

    // MARK: Driving the machine (on the loop)

    /// Runs `body` now when on the pool's loop, else on it soon.
    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if self.eventLoop.inEventLoop { body() } else { self.eventLoop.execute(body) }
    }

    /// Carries out `actions` in order, after those of the event that is running (when
    /// this event happened inside it).
    private func run(_ actions: [Action]) {
        guard !self.running else {
            self.pending.append(contentsOf: actions)
            return
        }
        self.running = true
        defer { self.running = false }
        // Not through `pending` (a copy of each action): what these actions cause is
        // queued there and runs after them.
        for action in actions { self.perform(action) }
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
        case .checkProcess(let index, let delay) where delay == .zero:
            self.checkProcess(index)
        case .checkProcess(let index, let delay):
            self.eventLoop.scheduleTask(in: delay) { self.checkProcess(index) }
        case .reap(let index):
            guard let worker = self.workers.removeValue(forKey: index) else { return }
            let status = worker.process.reap()
            self.run(self.machine.workerReaped(worker: index, status: status, now: .now()))
            // Closed after the machine forgot the worker: the channel's EOF is then moot.
            worker.channel?.close(promise: nil)
        case .scheduleRetry(let delay):
            self.retryTask = self.eventLoop.scheduleTask(in: delay) { self.run(self.machine.retryTimerFired(now: .now())) }
        case .cancelRetry:
            self.retryTask?.cancel()
        case .complete(let job, let result):
            if self.intercept?(job, result) != true { job.completion(result) }
        case .answerReadyWaiters(let failure):
            for w in self.readyWaiters { w(failure) }
            self.readyWaiters = []
        case .scheduleShutdownKill(let delay):
            self.graceTask = self.eventLoop.scheduleTask(in: delay) { self.run(self.machine.shutdownGraceElapsed()) }
        case .finishShutdown:
            self.sweeper?.cancel()
            self.graceTask?.cancel()
            for w in self.shutdownWaiters { w() }
            self.shutdownWaiters = []
        case .log(let level, let message, let metadata):
            // The machine's levels are named as swift-log's.
            self.configuration.logger.log(level: Logger.Level(rawValue: level.rawValue)!, "\(message)", metadata: metadata.mapValues { .string($0) })
        }
    }

    /// What a worker runs (`ppworker -B -c BOOTSTRAP`, so that ps and top show a short
    /// `ppworker` line): it reads the worker script from stdin (10 digits of length,
    /// then the script) and runs it.
    static let bootstrap = """
        import os;n=int(os.read(0,10));s=b""
        while len(s)<n:s+=os.read(0,n-len(s))
        exec(compile(s,"ppworker.py","exec"))
        """
    /// The first bytes written to every worker: the script, after its length.
    static let framedScript: [UInt8] = {
        let script = Array(WorkerScript.source.utf8), length = String(script.count)
        return Array((String(repeating: "0", count: 10 - length.count) + length).utf8) + script
    }()

    /// Starts worker `index` and attaches its pipes.
    ///
    /// Runs on the pool's event loop, always: PR_SET_PDEATHSIG kills the child when the
    /// thread that forked it exits, and the loop's thread lives until the pool has shut
    /// down (every action runs on the loop).
    private func spawnWorker(_ index: Int) {
        self.eventLoop.preconditionInEventLoop()
        let process: ChildProcess
        do {
            process = try ChildProcess.spawn([self.interpreter ?? self.configuration.python, "-B", "-c", Self.bootstrap], name: "ppworker")
        } catch {
            self.run(self.machine.spawnFailed(index: index, reason: "\(error)"))
            return
        }
        self.workers[index] = (process, nil)
        self.run(self.machine.workerSpawned(index: index, pid: process.pid))
        NIOPipeBootstrap(group: self.eventLoop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WorkerChannelHandler(pool: self, index: index))
                }
            }
            .takingOwnershipOfDescriptors(input: process.stdoutRead, output: process.stdinWrite)
            .whenComplete { result in
                switch result {
                case .success(let channel) where self.workers[index] == nil:
                    // The worker ended (and was reaped) before its pipes were attached.
                    channel.close(promise: nil)
                case .success(let channel):
                    self.workers[index]!.channel = channel
                    channel.writeAndFlush(ByteBuffer(bytes: Self.framedScript), promise: nil)
                    self.run(self.machine.workerAttached(index: index))
                case .failure(let error):
                    self.configuration.logger.error("cannot attach worker pipes", metadata: [LogKey.error: "\(error)"])
                    self.run(self.machine.stdoutClosed(worker: index))
                }
            }
    }

    /// Tells the machine when worker `index`'s process has ended (not reaped: the
    /// zombie keeps its pid and group id from being reused until the machine says so).
    private func checkProcess(_ index: Int) {
        guard let worker = self.workers[index], worker.process.hasEnded() else { return }
        self.run(self.machine.processEnded(worker: index, now: .now(), unreadOutput: worker.process.hasUnreadOutput()))
    }

    /// Feeds the machine an event from a worker's pipes (`WorkerChannelHandler`) and
    /// carries out its actions.
    /// The file later workers start from, once a worker said which interpreter it is:
    /// the real one when the configured program is a script (a pyenv shim or another
    /// wrapper on PATH, which costs its run at every start). Loop-bound.
    private var interpreter: String?
    private var interpreterDecided = false

    /// Where to record the interpreter the first hello names: the cache and the shim's
    /// selection, when the configured interpreter is a pyenv shim the cache did not know.
    private var unrecorded: (cache: InterpreterCache, selection: String)?

    /// Starts the workers from the interpreter the configured pyenv shim picked before,
    /// when it would pick the same one now (`PyenvShim`, `InterpreterCache`).
    private func lookUpInterpreter() {
        guard let file = self.configuration.interpreterCache, let configured = ChildProcess.resolve(self.configuration.python),
            let shim = PyenvShim(path: configured)
        else { return }
        let environment = ProcessInfo.processInfo.environment
        let selection = shim.selection(environment: environment, directory: PyenvShim.currentDirectory(environment: environment))
        let cache = InterpreterCache(file: file)
        guard let real = cache.interpreter(for: selection) else {
            self.unrecorded = (cache, selection)
            return
        }
        self.interpreter = real
        self.configuration.logger.debug("workers start from the interpreter the pyenv shim picked before", metadata: [LogKey.pool: "\(self.configuration.name)", "configured": "\(configured)", "interpreter": "\(real)"])
    }

    /// Reads the interpreter's real file from the first hello (`interpreter`).
    func learnInterpreter(hello body: ByteBuffer) {
        guard !self.interpreterDecided else { return }
        self.interpreterDecided = true
        guard let real = WorkerPoolStateMachine.helloString("interpreter", body), real.hasPrefix("/"), access(real, X_OK) == 0,
            let configured = ChildProcess.resolve(self.configuration.python), configured != real, Self.isScript(configured)
        else { return }
        self.interpreter = real
        self.unrecorded.map { $0.cache.record(real, for: $0.selection) }
        self.configuration.logger.debug("workers start from the real interpreter", metadata: [LogKey.pool: "\(self.configuration.name)", "configured": "\(configured)", "interpreter": "\(real)"])
    }

    /// Whether the file starts with `#!` (a script, not the interpreter itself).
    private static func isScript(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var head: (UInt8, UInt8) = (0, 0)
        return withUnsafeMutableBytes(of: &head) { read(fd, $0.baseAddress, 2) } == 2 && head == (UInt8(ascii: "#"), UInt8(ascii: "!"))
    }

    func handle(_ event: (inout WorkerPoolStateMachine) -> [Action]) {
        self.run(event(&self.machine))
    }
}

/// No worker of a pool could start.
public struct WorkerStartError: Error, Sendable, CustomStringConvertible {
    /// Why: the last start failure (such as "cannot start '/nonexistent': No such file
    /// or directory"), or that the pool shut down.
    public var reason: String

    public init(reason: String) { self.reason = reason }

    public var description: String { self.reason }
}

/// Where a pool is in its shutdown: stopping in a task every caller of `shutdown()`
/// waits for, or stopped with its last statistics.
enum StopState {
    case running, stopping(Task<Void, Never>), stopped(PoolStatistics)
}
