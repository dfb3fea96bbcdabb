public import Logging
public import PPCore
import PPRuntime
import PPWorkers
import Foundation
public import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

/// Runs Python functions in parallel on local worker processes and on `ppnode`s.
///
/// ```swift
/// let server = JobServer()                       // one worker per usable core
/// let f = try PythonFunction(file: "examples/sum_primes.py", name: "sum_primes")
/// let sums = try await server.map(f, Array(stride(from: 100_000, to: 100_800, by: 100)), as: Int.self)
/// print(await server.statisticsTable())
/// await server.shutdown()
/// ```
///
/// Jobs wait in one queue and go to whichever executor (the local pool, a node given in
/// `Configuration.nodes`) has free capacity; a node that is lost has its unfinished
/// jobs run elsewhere. Every job ends exactly once, with a value or a `JobError`.
/// Call `shutdown()` when done: it ends the worker processes and node connections;
/// jobs not finished by then end with `shutdown`.
///
/// Creating a server starts nothing: the first submission (or `start()`, or `run()`)
/// starts its workers, node links and discovery. It is a `Service`: in a
/// `ServiceGroup`, `run()` serves until graceful shutdown, then shuts the server down.
public final class JobServer: Service, Sendable {
    /// How a job server is set up.
    public struct Configuration: Sendable {
        /// Local worker processes; `nil` means the cores this process may use, 0 none.
        public var workers: Int?
        /// The Python interpreter for local workers; `nil` means `$PP_PYTHON` or `python3`.
        public var python: String?
        /// The default per-job timeout, `nil` for none.
        public var timeout: Duration?
        /// Nodes to use, by address (`ppnode` processes).
        public var nodes: [NodeAddress]
        /// The cluster secret for nodes; `nil` loads it (`PP_SECRET`, then the default
        /// secret file) when there are nodes.
        public var secret: ClusterSecret?
        /// Find nodes by DNS-SD and by their broadcast beacons (and use those of our
        /// cluster).
        public var discover: Bool
        /// Browse DNS-SD when discovering: `$PP_DNSSD` (`off` turns it off), else on.
        public var dnssd: Bool
        /// The UDP port of beacons and probes: `$PP_DISCOVERY_PORT`, else 7340.
        public var discoveryPort: Int
        /// Where probes go: `$PP_BROADCAST` (an IPv4 address, an interface name or off),
        /// else 255.255.255.255. A value that does not parse means off, with a warning
        /// in the log at start.
        public var broadcast: BroadcastTarget
        /// Why an environment setting was not taken, logged when the server starts.
        var environmentProblems: [String] = []
        /// A node silent for this long is dropped and its jobs run elsewhere.
        public var heartbeatTimeout: Duration = .seconds(3)
        /// Queued jobs fail with `noExecutor` when nothing at all could run them for this long.
        public var noExecutorTimeout: Duration = .seconds(30)
        /// An argument larger than this many encoded bytes (one element of the JSON
        /// arguments, or opaque bytes as a whole) travels by its SHA-256: once per node
        /// and once per worker, however many jobs share it. `Int.max` sends every
        /// argument inline with its job.
        public var largeArgumentBytes = 1 << 20
        /// Where the server logs.
        public var logger: Logger

        /// Creates a configuration.
        public init(
            workers: Int? = nil,
            python: String? = nil,
            timeout: Duration? = nil,
            nodes: [NodeAddress] = [],
            secret: ClusterSecret? = nil,
            discover: Bool = true,
            logger: Logger = Logger(label: "pp.jobserver", factory: { _ in SwiftLogNoOpLogHandler() })
        ) {
            self.workers = workers
            self.python = python
            self.timeout = timeout
            self.nodes = nodes
            self.secret = secret
            self.discover = discover
            let env = ProcessInfo.processInfo.environment
            do {
                self.discoveryPort = try NodeBeacon.discoveryPort(fromEnvironment: env)
            } catch {
                self.discoveryPort = NodeBeacon.defaultPort
                self.environmentProblems.append("\(error); using \(NodeBeacon.defaultPort) meanwhile")
            }
            do {
                self.broadcast = try BroadcastTarget.fromEnvironment()
            } catch {
                self.broadcast = .off
                self.environmentProblems.append("\(error); broadcast probes are off")
            }
            self.dnssd = !["off", "no", "false", "0"].contains(env["PP_DNSSD"]?.lowercased() ?? "")
            self.logger = logger
        }
    }

    /// The configuration the server was created with.
    public let configuration: Configuration
    let pool: WorkerPool
    let loop: any EventLoop
    let scheduler: Scheduler  // touched only on `loop`
    let local: LocalExecutor  // touched only on `loop`
    let resources: ResourceManager  // touched only on `loop`
    /// Job ids: the local pool's id space, since local jobs keep their ids there.
    private var ids: IDAllocator { self.pool.jobIDs }
    private let book = Mutex(Book())
    /// Hashes large arguments; jobs that share one are hashed once.
    private let digester = Mutex(BlobDigester())
    private let startedAt = ContinuousClock.now
    /// Set by `shutdown()`. Submissions check it under the same lock in which they hand
    /// jobs to the loop, so every job either reaches the scheduler before it stops or
    /// ends at once with `shutdown`.
    private let stopped = Mutex(false)
    /// Set by the first `start()`: the work `init` does not do.
    private let started = Atomic(false)

    /// Creates a job server; its workers start with the first job (or `start()`).
    ///
    /// - Parameters:
    ///   - configuration: worker count, interpreter, default timeout, nodes.
    ///   - eventLoopGroup: where its one event loop comes from (the scheduler, the
    ///     local pool and the node connections share that loop); `nil` takes NIO's
    ///     shared group.
    public init(configuration: Configuration = .init(), eventLoopGroup: (any EventLoopGroup)? = nil) {
        self.configuration = configuration
        self.loop = (eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton).next()
        let poolConfiguration = WorkerPool.Configuration(
            workers: configuration.workers,
            python: configuration.python,
            name: "local",
            logger: configuration.logger
        )
        self.pool = WorkerPool(configuration: poolConfiguration, eventLoop: self.loop)
        self.scheduler = Scheduler(loop: self.loop, noExecutorTimeout: configuration.noExecutorTimeout, logger: configuration.logger)
        self.local = LocalExecutor(pool: self.pool, size: self.pool.configuration.workers ?? 0, scheduler: self.scheduler)
        self.resources = ResourceManager(scheduler: self.scheduler, configuration: configuration)
    }

    /// Starts the workers, node links and discovery, once; later calls do nothing.
    /// Every submission calls it, so a program need not.
    public func start() {
        guard self.started.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        self.pool.start()
        self.loop.execute {
            self.scheduler.start()
            self.scheduler.add(self.local)
            self.resources.start()
        }
        // Placement checks version ranges against the local Python once a worker says which.
        Task { [self] in
            guard (try? await self.pool.waitUntilReady()) != nil else { return }
            let statistics = await self.pool.statistics()
            guard let python = statistics.pythonVersion, !self.stopped.withLock({ $0 }) else { return }
            self.loop.execute { self.scheduler.learned(python: python, implementation: statistics.pythonImplementation, of: self.local) }
        }
    }

    /// Serves until graceful shutdown (or cancellation) of the task, then shuts down:
    /// `JobServer` as a `Service` of a `ServiceGroup`.
    public func run() async throws {
        self.start()
        try? await gracefulShutdown()
        await self.shutdown()
    }

    /// Starts a job server with `workers` local workers (`nil`: one per usable core).
    public convenience init(workers: Int?) {
        self.init(configuration: .init(workers: workers))
    }

    // MARK: Submitting

    /// Submits one call of `function`.
    ///
    /// - Parameters:
    ///   - function: the Python function.
    ///   - arguments: its positional arguments, each any `Encodable` value.
    ///   - type: the type to decode the return value as (`JSONValue` accepts any).
    ///   - group: a group name for `wait(group:)`.
    ///   - timeout: the longest the call may run; `nil` uses the configured default.
    ///   - callback: called once when the job ends, on an internal thread; keep it short.
    /// - Returns: the job's handle.
    /// - Throws: `EncodingError` when an argument cannot be encoded as JSON.
    @discardableResult
    public func submit<T: Decodable & Sendable>(
        _ function: PythonFunction,
        _ arguments: any Encodable & Sendable...,
        as type: T.Type,
        group: String = "default",
        timeout: Duration? = nil,
        callback: (@Sendable (Result<T, JobError>) -> Void)? = nil
    ) throws -> JobHandle<T> {
        self.submit(function, arguments: try JobArguments(arguments), as: type, group: group, timeout: timeout, callback: callback)
    }

    /// Submits one call of `function` with arguments already encoded as a JSON array.
    ///
    /// - Parameters:
    ///   - function: the Python function.
    ///   - arguments: the positional arguments as one JSON array.
    ///   - type: the type to decode the return value as.
    ///   - group: a group name for `wait(group:)`.
    ///   - timeout: the longest the call may run; `nil` uses the configured default.
    ///   - callback: called once when the job ends, on an internal thread; keep it short.
    /// - Returns: the job's handle.
    @discardableResult
    public func submit<T: Decodable & Sendable>(
        _ function: PythonFunction,
        arguments: JobArguments,
        as type: T.Type,
        group: String = "default",
        timeout: Duration? = nil,
        callback: (@Sendable (Result<T, JobError>) -> Void)? = nil
    ) -> JobHandle<T> {
        let id = self.ids.next()
        let handle = JobHandle<T>(id: id, server: self)
        self.book.withLock { $0.begin(group: group) }
        let job = self.job(id, function, arguments, timeout: timeout ?? self.configuration.timeout, group: group) { outcome in
            handle.complete(outcome)
            callback?(decodeResult(T.self, outcome))
        }
        self.enqueue([job])
        return handle
    }

    /// Runs `function` once per input and returns every result in input order.
    ///
    /// Each input is the single argument of its call; use `JobArguments` inputs (or
    /// `mapResults(_:arguments:as:timeout:)`) for several arguments.
    ///
    /// - Throws: the first failed job's `JobError` (all jobs still run to the end), or
    ///   `EncodingError` for an input JSON cannot encode.
    public func map<T: Decodable & Sendable>(
        _ function: PythonFunction,
        _ inputs: [some Encodable & Sendable],
        as type: T.Type = JSONValue.self,
        timeout: Duration? = nil
    ) async throws -> [T] {
        let results = await self.mapResults(function, arguments: try inputs.map { try JobArguments(single: $0) }, as: type, timeout: timeout)
        return try results.map { try $0.get() }
    }

    /// Runs `function` once per argument list and returns every result, value or
    /// error, in input order.
    @inlinable
    public func mapResults<T: Decodable & Sendable>(
        _ function: PythonFunction,
        arguments: [JobArguments],
        as type: T.Type = JSONValue.self,
        timeout: Duration? = nil
    ) async -> [Result<T, JobError>] {
        // Decoded in the caller, once all are in, and specialized there: the loop only
        // stores outcomes (a generic completion ran unspecialized on it, per job).
        await self.outcomes(function, arguments: arguments, timeout: timeout).map { decodeResult(T.self, $0) }
    }

    /// Runs `function` once per argument list and returns every outcome in input order.
    @usableFromInline
    func outcomes(_ function: PythonFunction, arguments: [JobArguments], timeout: Duration?) async -> [JobOutcome] {
        guard !arguments.isEmpty else { return [] }
        return await withCheckedContinuation { continuation in
            // The outcomes in input order, and how many are still to come.
            let state = Mutex((outcomes: [JobOutcome?](repeating: nil, count: arguments.count), remaining: arguments.count))
            self.submitBatch(function, arguments: arguments, timeout: timeout) { index, outcome in
                let all: [JobOutcome]? = state.withLock { s in
                    s.outcomes[index] = outcome
                    s.remaining -= 1
                    return s.remaining == 0 ? s.outcomes.map { $0! } : nil
                }
                if let all { continuation.resume(returning: all) }
            }
        }
    }

    /// Runs `function` once per argument list; yields `(index, result)` as each job ends,
    /// in completion order.
    public func resultsAsCompleted<T: Decodable & Sendable>(
        _ function: PythonFunction,
        arguments: [JobArguments],
        as type: T.Type = JSONValue.self,
        timeout: Duration? = nil
    ) -> AsyncStream<(index: Int, result: Result<T, JobError>)> {
        let (stream, continuation) = AsyncStream.makeStream(of: (index: Int, result: Result<T, JobError>).self)
        let remaining = Mutex(arguments.count)
        if arguments.isEmpty { continuation.finish() }
        self.submitBatch(function, arguments: arguments, timeout: timeout) { index, outcome in
            continuation.yield((index, decodeResult(T.self, outcome)))
            if remaining.withLock({ $0 -= 1; return $0 == 0 }) { continuation.finish() }
        }
        return stream
    }

    /// Submits one job per argument list with one hop to the pool; `completion` gets
    /// the input index.
    ///
    /// - Returns: the job ids, in input order.
    @discardableResult
    public func submitBatch(
        _ function: PythonFunction,
        arguments: [JobArguments],
        timeout: Duration? = nil,
        completion: @escaping @Sendable (Int, JobOutcome) -> Void
    ) -> [UInt64] {
        let timeout = timeout ?? self.configuration.timeout
        self.book.withLock { $0.begin(group: "default", count: arguments.count) }
        let jobs = arguments.enumerated().map { index, args in
            self.job(self.ids.next(), function, args, timeout: timeout, group: "default") { completion(index, $0) }
        }
        self.enqueue(jobs)
        return jobs.map(\.id)
    }

    /// A job that, when it ends, is counted, tells `completion`, and leaves its group.
    private func job(_ id: UInt64, _ function: PythonFunction, _ arguments: JobArguments, timeout: Duration?, group: String, completion: @escaping @Sendable (JobOutcome) -> Void) -> Job {
        let threshold = self.configuration.largeArgumentBytes
        let arguments = arguments.json.count > threshold ? self.digester.withLock { arguments.movingLarge(above: threshold, digester: &$0) } : arguments
        return Job(id: id, bundle: function.bundle, arguments: arguments, timeout: timeout) { [self] result in
            // The edge: bytes become text and a parsed error here, once.
            let outcome = result.outcome
            self.book.withLock { $0.record(outcome) }
            completion(outcome)
            for w in self.book.withLock({ $0.end(group: group) }) { w.resume() }
        }
    }

    /// Loads `function` on a worker without running it.
    ///
    /// - Throws: `JobError` with code `functionUnavailable` and the Python traceback when
    ///   the source has a syntax error, an import fails, or the name is not defined.
    public func load(_ function: PythonFunction) async throws(JobError) {
        // No local workers: compile it with a local python3 anyway, so a broken file
        // is reported before any job is sent to a node.
        let local = self.pool.configuration.workers ?? 0 > 0
        let checker = local ? self.pool : WorkerPool(configuration: .init(workers: 1, python: self.configuration.python, name: "check"))
        let error = await checker.check(function.bundle)
        if !local { await checker.shutdown() }
        if let error { throw error }
    }

    /// Stops a job by id, queued or running: a running job's worker (local or on a
    /// node) is killed and replaced, and the job ends with `cancelled`.
    ///
    /// - Returns: `true` when the job was still queued here.
    public func stop(jobID: UInt64) async -> Bool {
        (try? await self.loop.submit { self.scheduler.cancel(jobID: jobID, stop: true) }.get()) ?? false
    }

    /// Cancels a queued job by id.
    ///
    /// - Returns: `true` when the job had not started; it then ends with `cancelled`.
    public func cancel(jobID: UInt64) async -> Bool {
        (try? await self.loop.submit { self.scheduler.cancel(jobID: jobID, stop: false) }.get()) ?? false
    }

    // MARK: Waiting

    /// Waits until every job submitted to `group` so far has ended (`nil`: every job).
    public func wait(group: String?) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            if self.book.withLock({ $0.addWaiter(c, group: group) }) { c.resume() }
        }
    }

    /// Waits until every job submitted so far has ended.
    public func waitAll() async {
        await self.wait(group: nil)
    }

    // MARK: Workers

    /// The number of local worker processes the server keeps.
    public func workers() async -> Int {
        await self.pool.size()
    }

    /// Changes the number of local worker processes while jobs run.
    ///
    /// - Parameter count: the new number, 0 or more.
    public func setWorkers(_ count: Int) {
        self.start()
        let n = max(0, count)
        self.stopped.withLock { stopped in
            guard !stopped else { return }
            self.pool.resize(to: n)
            self.loop.execute {
                self.local.size = n
                self.scheduler.dispatch()
            }
        }
    }

    /// The counters of every connected node (its STATS reply: workers, jobs done,
    /// bundles received, cache size...), by node address.
    public func nodeStatistics() async -> [String: JSONValue] {
        self.start()
        let start = ContinuousClock.now
        let futures: [(String, EventLoopFuture<[UInt8]>)] =
            (try? await self.loop.submit {
                self.scheduler.executors.compactMap { ($0 as? RemoteExecutor).map { ($0.name, $0.requestStatistics(on: self.loop)) } }
            }.get()) ?? []
        var out: [String: JSONValue] = [:]
        for (name, future) in futures {
            guard let bytes = try? await future.get(), !bytes.isEmpty,
                let value = try? JSONDecoder().decode(JSONValue.self, from: Data(bytes)),
                case .object(var fields) = value
            else { continue }
            // The request and its answer are one round trip (an upper bound when several
            // nodes answer at once).
            fields["rtt_us"] = .int(Int((ContinuousClock.now - start) / .microseconds(1)))
            out[name] = .object(fields)
        }
        return out
    }

    /// Every node the server knows, named by address or discovered, used or not: for
    /// each, whether it is used and, when not, why (another cluster, another protocol,
    /// no workers, unreachable and from which interface, TLS refused, left, silent).
    public func nodes() async -> [NodeVerdict] {
        self.start()
        return (try? await self.loop.submit { self.resources.verdicts() }.get()) ?? []
    }

    /// The executors that take jobs now: `"local"` (when it has workers) and the
    /// addresses of connected nodes.
    public func activeExecutors() async -> [String] {
        self.start()
        return (try? await self.loop.submit {
            self.scheduler.executors.filter(\.canRun).map(\.name)
        }.get()) ?? []
    }

    // MARK: Statistics

    /// Counters per executor and per worker.
    public func statistics() async -> JobServerStatistics {
        let executors = self.book.withLock { $0.executors }
        let queued = (try? await self.loop.submit { self.scheduler.queued }.get()) ?? 0
        return JobServerStatistics(
            queued: queued,
            executors: executors.values.sorted { $0.name < $1.name },
            elapsed: ContinuousClock.now - self.startedAt,
            localPool: await self.pool.statistics()
        )
    }

    /// The statistics as a table like Parallel Python's `print_stats`.
    public func statisticsTable() async -> String {
        await self.statistics().table
    }

    // MARK: Shutdown

    /// Ends the server: queued jobs end with `shutdown`, running jobs finish (within the
    /// pool's grace period), worker processes exit.
    public func shutdown() async {
        let first = self.stopped.withLock { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        try? await self.loop.submit {
            self.resources.stop()
            self.scheduler.stop()
        }.get()
        await self.pool.shutdown()
    }

    // MARK: Bookkeeping

    private func enqueue(_ jobs: [Job]) {
        self.start()
        let accepted = self.stopped.withLock { stopped -> Bool in
            guard !stopped else { return false }
            self.loop.execute { self.scheduler.enqueue(jobs) }
            return true
        }
        guard !accepted else { return }
        for job in jobs {
            job.fail(JobError(code: .shutdown, message: "the job server is shut down"), executor: "none")
        }
    }

}

/// Counters, groups and waiters of a job server; lives under its mutex. The group
/// `nil` is every job. A job's end costs one hash at most: the counters of the
/// executor that ended the last job are kept aside, and every job counts in `all`.
struct Book {
    private var executorTotals: [String: ExecutorStatistics] = [:]
    /// The executor of the last ended job, its counts not yet in `executorTotals`.
    private var current: ExecutorStatistics?
    /// Jobs not ended, in all groups, and per group.
    private var all = 0
    private var pending: [String: Int] = [:]
    private var waiters: [String?: [CheckedContinuation<Void, Never>]] = [:]

    /// Counters per executor.
    var executors: [String: ExecutorStatistics] {
        var totals = self.executorTotals
        if let c = self.current { totals[c.name, default: ExecutorStatistics(name: c.name, jobs: 0, totalTime: .zero)].add(c) }
        return totals
    }

    mutating func begin(group: String, count: Int = 1) {
        self.pending[group, default: 0] += count
        self.all += count
    }

    /// Counts a job's outcome for its executor (before its completion runs, so that
    /// statistics read after it include the job).
    mutating func record(_ outcome: JobOutcome) {
        if self.current?.name != outcome.executor {
            if let c = self.current { self.executorTotals[c.name, default: ExecutorStatistics(name: c.name, jobs: 0, totalTime: .zero)].add(c) }
            self.current = ExecutorStatistics(name: outcome.executor, jobs: 0, totalTime: .zero)
        }
        self.current!.jobs += 1
        self.current!.totalTime += outcome.duration
    }

    /// A job of `group` ended (after its completion ran): returns the waiters to wake.
    mutating func end(group: String) -> [CheckedContinuation<Void, Never>] {
        var woken: [CheckedContinuation<Void, Never>] = []
        if let left = self.pending[group] {
            if left > 1 {
                self.pending[group] = left - 1
            } else {
                self.pending[group] = nil
                woken += self.waiters.removeValue(forKey: group) ?? []
            }
        }
        self.all = max(0, self.all - 1)
        if self.all == 0, !self.waiters.isEmpty {
            woken += self.waiters.removeValue(forKey: nil) ?? []
        }
        return woken
    }

    /// Adds a waiter unless its jobs are done; returns `true` when they are.
    mutating func addWaiter(_ c: CheckedContinuation<Void, Never>, group: String?) -> Bool {
        guard (group.map { self.pending[$0, default: 0] } ?? self.all) > 0 else { return true }
        self.waiters[group, default: []].append(c)
        return false
    }
}
