public import Logging
public import NIOCore
public import PPCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A pool of long-lived `python3` worker processes that run Python function calls.
///
/// The pool starts `workers` processes, feeds them jobs from one queue, resizes at run
/// time, kills and replaces a worker whose job passes its timeout (or is stopped with
/// `stop(jobIDs:)`), replaces a worker
/// that dies (its running job ends with a `workerDied` error that says how, the jobs
/// queued behind it run elsewhere) and keeps statistics. Short jobs are pipelined: the
/// pool keeps several jobs in each worker's pipe when the measured job time is small,
/// so tiny jobs cost few system calls each.
///
/// All state lives on one event loop; every public method may be called from any thread.
/// Completion handlers run on that event loop and must return quickly.
public final class WorkerPool: Service, Sendable {
    /// How a pool is set up.
    public struct Configuration: Sendable {
        /// The number of worker processes; `nil` means the cores this process may use.
        public var workers: Int?
        /// The Python interpreter to start (looked up in `PATH`).
        public var python: String
        /// A label for this pool in statistics and errors (`"local"`, a node name).
        public var name: String
        /// The most jobs kept in one worker's pipe when jobs are short.
        public var maxPipelineDepth: Int
        /// Bytes of function bundles each worker keeps loaded before it drops the least
        /// recently used one.
        public var bundleCacheBytes: Int
        /// How long `shutdown` lets running jobs finish before it kills their workers.
        public var shutdownGrace: Duration
        /// Where the pool logs worker starts, deaths and restarts.
        public var logger: Logger

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
            self.maxPipelineDepth = 32
            self.bundleCacheBytes = 64 << 20
            self.shutdownGrace = .seconds(5)
            self.logger = logger
        }

        /// `$PP_PYTHON` when set, else `python3`.
        public static var defaultPython: String {
            if let p = getenv("PP_PYTHON"), let s = String(validatingCString: p), !s.isEmpty { return s }
            return "python3"
        }
    }

    /// The event loop that owns the pool's state and its workers' pipes.
    public let eventLoop: any EventLoop
    let driver: PoolDriver  // touched only inside eventLoop closures
    /// Set by the first `start()`.
    private let started = Atomic(false)
    let stopState = Mutex(StopState.running)
    /// The last statistics, taken before the pool's own loop stops (it runs nothing after).
    let finalStatistics = Mutex<PoolStatistics?>(nil)

    /// The configuration the pool was created with.
    public let configuration: Configuration
    /// The ids of this pool's jobs: everyone who submits to the pool takes ids here.
    public let jobIDs = IDAllocator()

    /// Creates a pool. It starts nothing: its workers start with `start()`, which the
    /// first submission (or any other use but `shutdown()`) calls.
    ///
    /// - Parameters:
    ///   - configuration: size, interpreter, label.
    ///   - eventLoop: the loop to run on; `nil` takes one of NIO's shared group. The
    ///     loop's thread must outlive the pool: workers die with the thread that
    ///     started them (their parent-death signal).
    public init(configuration: Configuration = .init(), eventLoop: (any EventLoop)? = nil) {
        ignoreSIGPIPE()
        var configuration = configuration
        let size = max(0, configuration.workers ?? System.coreCount)
        configuration.workers = size
        self.configuration = configuration
        self.eventLoop = eventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
        self.driver = PoolDriver(configuration: configuration, eventLoop: self.eventLoop)
    }

    /// Starts the workers, once; later calls do nothing.
    public func start() {
        guard self.started.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        let (driver, size) = (self.driver, self.configuration.workers ?? 0)
        if self.eventLoop.inEventLoop {
            driver.start(target: size)
        } else {
            self.eventLoop.execute { driver.start(target: size) }
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
        self.eventLoop.execute { self.driver.enqueue(CollectionOfOne(job)) }
    }

    /// Queues many jobs with one hop to the pool's loop.
    public func submit(contentsOf jobs: [Job]) {
        self.start()
        guard !jobs.isEmpty else { return }
        if self.eventLoop.inEventLoop {
            self.driver.enqueue(jobs)
        } else {
            self.eventLoop.execute { self.driver.enqueue(jobs) }
        }
    }

    /// Cancels a job that has not started yet.
    ///
    /// - Returns: `true` when the job was still queued; it then ends with `cancelled`.
    public func cancel(jobID: UInt64) async -> Bool {
        self.start()
        return (try? await self.eventLoop.submit { self.driver.cancel(jobID: jobID) }.get()) ?? false
    }

    /// Cancels queued jobs without waiting; each one that had not started ends with
    /// `cancelled`.
    public func cancel(jobIDs: [UInt64]) {
        self.start()
        self.eventLoop.execute {
            for id in jobIDs { _ = self.driver.cancel(jobID: id) }
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
        return (try? await self.eventLoop.submit { self.driver.stop(jobID: jobID) }.get()) ?? false
    }

    /// Stops jobs, queued or running, without waiting (see `stop(jobID:)`).
    public func stop(jobIDs: [UInt64]) {
        self.start()
        self.eventLoop.execute {
            for id in jobIDs { _ = self.driver.stop(jobID: id) }
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
                switch result.outcome.result {
                case .success: continuation.resume(returning: nil)
                case .failure(let error): continuation.resume(returning: error)
                }
            }
            self.submit(job)
        }
    }

    // MARK: Size

    /// The number of workers the pool keeps running.
    public func size() async -> Int {
        self.start()
        return (try? await self.eventLoop.submit { self.driver.target }.get()) ?? 0
    }

    /// Changes the number of workers while jobs run. New workers start at once; extra
    /// workers finish the jobs already in their pipes and exit.
    ///
    /// - Parameter workers: the new size (0 or more).
    public func resize(to workers: Int) {
        self.start()
        let n = max(0, workers)
        self.eventLoop.execute { self.driver.resize(to: n) }
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
        let running = self.stopState.withLock { if case .running = $0 { true } else { false } }
        guard running else { throw WorkerStartError(reason: "the worker pool shut down") }
        let error: WorkerStartError? = await withCheckedContinuation { continuation in
            self.eventLoop.execute { self.driver.whenReady { continuation.resume(returning: $0) } }
        }
        if let error { throw error }
    }

    // MARK: Statistics

    /// A snapshot of the pool's counters.
    public func statistics() async -> PoolStatistics {
        self.start()
        if let last = self.finalStatistics.withLock({ $0 }) { return last }
        return (try? await self.eventLoop.submit { self.driver.statistics() }.get())
            ?? PoolStatistics(name: self.configuration.name, targetWorkers: 0, queued: 0, running: 0, workers: [], pythonVersion: nil)
    }

    // MARK: Shutdown

    /// Stops the pool: queued jobs end with `shutdown`, running jobs finish within the
    /// configured grace period (then their workers are killed), and workers exit.
    public func shutdown() async {
        // A pool shut down before it started never starts.
        self.started.store(true, ordering: .relaxed)
        // Only the first call stops the pool; later calls wait for it to finish.
        let first: Bool = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let action: Bool? = self.stopState.withLock { state in
                switch state {
                case .running:
                    state = .stopping([])
                    return true
                case .stopping(var waiters):
                    waiters.append(continuation)
                    state = .stopping(waiters)
                    return nil
                case .stopped:
                    return false
                }
            }
            if let action { continuation.resume(returning: action) }
        }
        guard first else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            self.eventLoop.execute { self.driver.shutdown { continuation.resume() } }
        }
        let last = try? await self.eventLoop.submit { self.driver.statistics() }.get()
        self.finalStatistics.withLock { $0 = last }
        let waiters: [CheckedContinuation<Bool, Never>] = self.stopState.withLock { state in
            defer { state = .stopped }
            if case .stopping(let waiters) = state { return waiters }
            return []
        }
        for w in waiters { w.resume(returning: false) }
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

/// Where a pool is in its shutdown.
enum StopState {
    case running
    case stopping([CheckedContinuation<Bool, Never>])
    case stopped
}

/// Counters of one pool.
public struct PoolStatistics: Sendable {
    /// The pool's label.
    public var name: String
    /// The number of workers the pool keeps.
    public var targetWorkers: Int
    /// Jobs waiting for a worker.
    public var queued: Int
    /// Jobs in workers' pipes or running.
    public var running: Int
    /// Every worker the pool has run, live or gone.
    public var workers: [WorkerStatistics]
    /// The workers' Python version, once one has started.
    public var pythonVersion: String?

    /// Jobs finished by all workers.
    public var jobsDone: Int { self.workers.reduce(0) { $0 + $1.jobsDone } }
    /// Time all workers spent running functions.
    public var busyTime: Duration { self.workers.reduce(.zero) { $0 + $1.busyTime } }
    /// Workers running now.
    public var liveWorkers: Int { self.workers.filter(\.alive).count }
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
    /// Whether it is running.
    public var alive: Bool
    /// How it ended, when it has.
    public var exit: ExitStatus?
}

private func ignoreSIGPIPE() {
    // A write to the pipe of a worker that just died must fail with EPIPE, not kill us.
    _ = signal(SIGPIPE, SIG_IGN)
}
