import ArgumentParser
import Foundation
import Logging
import PPCore
import PPRuntime
import ParallelPython
import Synchronization

/// `pprun engine`: the engine of the Python package (`python/parallelpython`). It reads
/// requests from stdin and writes answers to stdout, in frames described in
/// docs/PYTHON.md, and runs the jobs on a `JobServer`: local workers, nodes given or
/// discovered, TLS, failover, statistics, exactly as for `pprun map`. The Python side
/// does the pickling; the engine never looks inside a job's arguments or value.
///
/// The engine stops when stdin ends (its Python process exited or died) or on QUIT,
/// and kills its workers then.
struct EngineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "Serve the parallelpython Python package over stdin/stdout (started by the package).",
        discussion: "Not for people: `import parallelpython` starts it. Frames are documented in docs/PYTHON.md."
    )

    func run() async throws {
        var reader = EngineFrameReader(input: ChunkedInput(fd: FileHandle.standardInput.fileDescriptor))
        let server: JobServer
        do {
            guard let first = reader.next(), first.kind == UInt8(ascii: "C") else { throw ValidationError("the first frame must be CONFIG") }
            server = try Self.makeServer(config: first.body)
        } catch {
            Engine.fatal("\(error)")
        }
        let workers = await server.workers()
        EngineOutput.shared.send(kind: "R", Array("{\"workers\":\(workers)}".utf8))
        EngineOutput.shared.flushNow()

        let engine = Engine(server: server)
        // Requests are read on a thread of their own: a blocking read must not hold a
        // thread of the cooperative pool.
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread { [reader] in
                var reader = reader
                var jobs: [EngineFrame] = []
                while let frame = reader.next(), frame.kind != UInt8(ascii: "Q") {
                    let isJob = Engine.jobKinds.contains(frame.kind)
                    if isJob { jobs.append(frame) }
                    // Consecutive jobs already read go to the job server in one batch.
                    if !jobs.isEmpty, !isJob || !reader.hasBufferedFrame || jobs.count >= 4096 {
                        engine.submit(jobs)
                        jobs.removeAll(keepingCapacity: true)
                    }
                    if !isJob { engine.handle(frame) }
                }
                done.resume()
            }.start()
        }
        await server.shutdown()
        EngineOutput.shared.flushNow()
    }

    /// The job server the CONFIG frame asks for.
    static func makeServer(config: [UInt8]) throws -> JobServer {
        guard case .object(let o) = try JSONDecoder().decode(JSONValue.self, from: Data(config)) else {
            throw ValidationError("CONFIG is not a JSON object")
        }
        func int(_ key: String) -> Int? { if case .int(let v) = o[key] { v } else { nil } }
        func string(_ key: String) -> String? { if case .string(let v) = o[key] { v } else { nil } }
        var nodes: [NodeAddress] = []
        if case .array(let list) = o["nodes"] {
            for case .string(let text) in list { nodes.append(try NodeAddress(parsing: text)) }
        }
        let discover = o["discover"] != .bool(false)
        var secret: ClusterSecret?
        let secretFile = string("secret_file")
        if let text = string("secret") {
            secret = try ClusterSecret(text: text, origin: "the program's secret")
        } else if !nodes.isEmpty || secretFile != nil {
            secret = try ClusterSecret.load(file: secretFile, create: false).secret
        } else if discover {
            secret = try? ClusterSecret.load(file: nil, create: false).secret
        }
        var logger = Logger(label: "parallelpython")
        logger.logLevel = .notice
        var configuration = JobServer.Configuration(
            workers: int("workers"),
            python: string("python"),
            nodes: nodes,
            secret: secret,
            discover: discover,
            logger: logger
        )
        if let seconds = int("no_executor_timeout") { configuration.noExecutorTimeout = .seconds(seconds) }
        return JobServer(configuration: configuration)
    }
}

/// One request or answer frame: u32 length (of type and body), u8 type, body.
typealias EngineFrame = (kind: UInt8, body: [UInt8])

/// Reads frames from a file descriptor (blocking).
struct EngineFrameReader {
    var input: ChunkedInput
    /// Requests larger than this end the engine (the package never sends them).
    static let maxFrame = 1 << 30

    /// The length field of the next frame, once its header is buffered.
    private var nextLength: Int? {
        guard self.input.available >= 5 else { return nil }
        return Int(Engine.uint(self.input.buffer, self.input.start, bytes: 4))
    }

    /// Whether a whole frame is already buffered (`next()` would not block).
    var hasBufferedFrame: Bool {
        self.nextLength.map { self.input.available >= 4 + $0 } ?? false
    }

    mutating func next() -> EngineFrame? {
        while true {
            if let n = self.nextLength {
                guard n >= 1, n <= Self.maxFrame else { return nil }
                if self.input.available >= 4 + n {
                    let b = self.input.start
                    self.input.start += 4 + n
                    return (self.input.buffer[b + 4], Array(self.input.buffer[(b + 5)..<(b + 4 + n)]))
                }
            }
            guard self.input.fill() else { return nil }
        }
    }
}

/// Answers to stdout: frames collected under a lock and written in one call per burst
/// by a serial queue, so a burst of results costs one system call.
final class EngineOutput: Sendable {
    static let shared = EngineOutput()
    private let pending = Mutex<(bytes: [UInt8], scheduled: Bool)>(([], false))
    private let queue = DispatchQueue(label: "parallelpython.engine.output")

    /// Queues one frame: length (of type and body), type, body.
    func send(kind: Character, _ body: [UInt8]) {
        let schedule = self.pending.withLock { p -> Bool in
            Engine.append(UInt64(body.count + 1), bytes: 4, to: &p.bytes)
            p.bytes.append(UInt8(ascii: kind.unicodeScalars.first!))
            p.bytes += body
            defer { p.scheduled = true }
            return !p.scheduled
        }
        if schedule { self.queue.async { self.flushNow() } }
    }

    /// Writes everything pending now.
    func flushNow() {
        let bytes = self.pending.withLock { p -> [UInt8] in
            defer { p = ([], false) }
            return p.bytes
        }
        Console.writeAll(fd: 1, bytes)
    }
}

/// The engine's state: bundles and large parts by digest, and the Python ids of jobs
/// in flight.
final class Engine: Sendable {
    let server: JobServer
    private struct State {
        var functions: [SHA256Digest: PythonFunction] = [:]
        /// Large parts of opaque jobs (`L` frames), kept until the package drops them (`U`).
        var parts: [SHA256Digest: [UInt8]] = [:]
        var engineIDs: [UInt64: UInt64] = [:]
        var doneEarly: Set<UInt64> = []
    }
    private let state = Mutex(State())
    /// The frame types that are jobs: `J` (JSON), `O` (opaque), `P` (opaque in parts).
    static let jobKinds: Set<UInt8> = [UInt8(ascii: "J"), UInt8(ascii: "O"), UInt8(ascii: "P")]

    init(server: JobServer) {
        self.server = server
    }

    /// Any request but a job (`submit`) or QUIT.
    func handle(_ frame: EngineFrame) {
        switch frame.kind {
        case UInt8(ascii: "B"):
            guard frame.body.count > 32, let digest = SHA256Digest(bytes: Array(frame.body[0..<32])) else { Self.fatal("BUNDLE too short") }
            let spec = Array(frame.body[32...])
            let bundle: FunctionBundle
            do {
                bundle = FunctionBundle(spec: spec, requirements: try Requirements.read(bundleSpec: spec))
            } catch {
                Self.fatal("BUNDLE: \(error)")
            }
            guard bundle.digest == digest else { Self.fatal("BUNDLE bytes do not hash to their digest") }
            self.state.withLock { $0.functions[digest] = PythonFunction(bundle: bundle) }
        case UInt8(ascii: "L"):
            // A large part of opaque jobs, named by its SHA-256 (checked once, here).
            guard frame.body.count >= 32, let digest = SHA256Digest(bytes: Array(frame.body[0..<32])) else { Self.fatal("PART too short") }
            let bytes = Array(frame.body[32...])
            guard SHA256Digest(hashing: bytes) == digest else { Self.fatal("PART bytes do not hash to their digest") }
            self.state.withLock { $0.parts[digest] = bytes }
        case UInt8(ascii: "U"):
            guard frame.body.count == 32, let digest = SHA256Digest(bytes: frame.body) else { Self.fatal("DROP PART is not 32 bytes") }
            _ = self.state.withLock { $0.parts.removeValue(forKey: digest) }
        case UInt8(ascii: "X"), UInt8(ascii: "K"):
            // X cancels a job that has not started; K stops it wherever it is, running
            // included (its worker is killed and replaced).
            guard frame.body.count == 8 else { Self.fatal("CANCEL/STOP is not 8 bytes") }
            let id = Self.uint(frame.body, 0)
            guard let engineID = self.state.withLock({ $0.engineIDs[id] }) else { return }
            let stop = frame.kind == UInt8(ascii: "K")
            Task { _ = await (stop ? self.server.stop(jobID: engineID) : self.server.cancel(jobID: engineID)) }
        case UInt8(ascii: "W"):
            guard frame.body.count == 4 else { Self.fatal("WORKERS is not 4 bytes") }
            self.server.setWorkers(Int(Self.uint(frame.body, 0, bytes: 4)))
        case UInt8(ascii: "S"):
            guard frame.body.count == 8 else { Self.fatal("STATS is not 8 bytes") }
            Task { await EngineOutput.shared.send(kind: "S", frame.body + Self.statisticsJSON(self.server)) }
        default:
            Self.fatal("unknown frame type \(frame.kind)")
        }
    }

    /// JOBs (`J`: arguments JSON), OPAQUE jobs (`O`: bytes the function gets as they
    /// are) and PARTED jobs (`P`: opaque, with large parts named by digest), each:
    /// python id u64 · digest(32) · timeout ms u32 · arguments, where a `P` job's
    /// arguments are count u16 · count × (position u16 · part digest(32)) · inline bytes.
    /// Jobs of one bundle and timeout go to the job server in one batch.
    func submit(_ frames: [EngineFrame]) {
        var groups: [(function: PythonFunction, ms: UInt64, ids: [UInt64], arguments: [JobArguments])] = []
        for (kind, body) in frames {
            guard body.count >= 44, let digest = SHA256Digest(bytes: Array(body[8..<40])) else { Self.fatal("JOB too short") }
            let id = Self.uint(body, 0)
            let ms = Self.uint(body, 40, bytes: 4)
            guard let function = self.state.withLock({ $0.functions[digest] }) else {
                Self.answer(id, .failure(JobError(code: .protocolError, message: "the engine has no bundle \(digest)"), executor: "engine"))
                continue
            }
            let arguments: JobArguments
            switch kind {
            case UInt8(ascii: "J"): arguments = JobArguments(jsonArray: Array(body[44...]))
            case UInt8(ascii: "O"): arguments = JobArguments(opaque: Array(body[44...]))
            default:
                guard let parted = self.partedArguments(body) else {
                    Self.answer(id, .failure(JobError(code: .protocolError, message: "the engine does not hold a large part this job names"), executor: "engine"))
                    continue
                }
                arguments = parted
            }
            if groups.last?.function != function || groups.last?.ms != ms { groups.append((function, ms, [], [])) }
            groups[groups.count - 1].ids.append(id)
            groups[groups.count - 1].arguments.append(arguments)
        }
        for group in groups {
            let pythonIDs = group.ids
            let engineIDs = self.server.submitBatch(group.function, arguments: group.arguments, timeout: group.ms > 0 ? .milliseconds(Int64(group.ms)) : nil) {
                [self] index, outcome in
                let id = pythonIDs[index]
                self.state.withLock { s in
                    if s.engineIDs.removeValue(forKey: id) == nil { s.doneEarly.insert(id) }
                }
                Self.answer(id, outcome)
            }
            self.state.withLock { s in
                // A job may be done already: only remember those still running.
                for (id, engineID) in zip(pythonIDs, engineIDs) where s.doneEarly.remove(id) == nil {
                    s.engineIDs[id] = engineID
                }
            }
        }
    }

    /// The arguments of a `P` job, its parts filled in from the table; nil when one is
    /// not there.
    private func partedArguments(_ body: [UInt8]) -> JobArguments? {
        guard body.count >= 46 else { Self.fatal("PARTED JOB too short") }
        let count = Int(Self.uint(body, 44, bytes: 2))
        let inline = 46 + 34 * count
        guard body.count >= inline else { Self.fatal("PARTED JOB: \(count) parts do not fit in \(body.count) bytes") }
        return self.state.withLock { s -> JobArguments? in
            var parts: [ArgumentBlob] = []
            for i in 0..<count {
                let at = 46 + 34 * i
                let position = Int(Self.uint(body, at, bytes: 2))
                guard position > parts.last?.position ?? -1 else { Self.fatal("PARTED JOB: part positions must rise") }
                guard let digest = SHA256Digest(bytes: Array(body[(at + 2)..<(at + 34)])), let bytes = s.parts[digest] else { return nil }
                parts.append(ArgumentBlob(position: position, digest: digest, bytes: bytes))
            }
            return JobArguments(opaque: Array(body[inline...]), parts: parts)
        }
    }

    /// RESULT: python id u64 · status u8 · ns u64 · outLen u32 · out · errLen u32 · err ·
    /// payload (the value's JSON, or the error JSON).
    static func answer(_ id: UInt64, _ outcome: JobOutcome) {
        var body = [UInt8]()
        let (stdout, stderr) = (Array(outcome.stdout.utf8), Array(outcome.stderr.utf8))
        // A failure's output is the outcome's too (`JobResult.outcome`).
        let (status, payload): (UInt8, [UInt8]) =
            switch outcome.result {
            case .success(let bytes): (0, bytes)
            case .failure(let error): (error.code.wireStatus, error.wireJSON)
            }
        body.reserveCapacity(29 + stdout.count + stderr.count + payload.count)
        Self.append(id, to: &body)
        body.append(status)
        Self.append(UInt64(max(0, outcome.duration.nanosecondsInt64)), to: &body)
        Self.append(UInt64(stdout.count), bytes: 4, to: &body)
        body += stdout
        Self.append(UInt64(stderr.count), bytes: 4, to: &body)
        body += stderr
        body += payload
        EngineOutput.shared.send(kind: "r", body)
    }

    static func statisticsJSON(_ server: JobServer) async -> [UInt8] {
        let stats = await server.statistics()
        let nodes = await server.nodeStatistics()
        let active = await server.activeExecutors()
        let why = await server.nodes()
        let value: JSONValue = .object([
            "workers": .int(stats.localPool.targetWorkers),
            "queued": .int(stats.queued),
            "elapsed": .double(Double(stats.elapsed.nanosecondsInt64) / 1e9),
            "active": .array(active.map { .string($0) }),
            "executors": .array(stats.executors.map { e in
                .object(["name": .string(e.name), "jobs": .int(e.jobs), "seconds": .double(Double(e.totalTime.nanosecondsInt64) / 1e9)])
            }),
            "nodes": .object(nodes),
            // Every node known, used or not, and why (as `ppnodes --why`).
            "why": .object(Dictionary(why.map { v in (v.sighting.address, JSONValue.object(["status": .string(v.status.rawValue), "reason": .string(v.reason)])) }) { a, _ in a }),
        ])
        return Array(value.description.utf8)
    }

    /// Says why the engine stops (an `E` frame) and exits.
    static func fatal(_ message: String) -> Never {
        EngineOutput.shared.send(kind: "E", Array(message.utf8))
        EngineOutput.shared.flushNow()
        exit(ExitCodes.cannotStart)
    }

    /// The big-endian unsigned integer of `bytes` bytes at `i`.
    static func uint(_ b: [UInt8], _ i: Int, bytes: Int = 8) -> UInt64 {
        b[i..<(i + bytes)].reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Appends `v` as a big-endian unsigned integer of `bytes` bytes.
    static func append(_ v: UInt64, bytes: Int = 8, to out: inout [UInt8]) {
        for k in (0..<bytes).reversed() { out.append(UInt8((v >> (UInt64(k) * 8)) & 0xff)) }
    }
}
