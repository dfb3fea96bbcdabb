import ArgumentParser
import Foundation
import Logging
import PPCommandLine
import PPCore
import PPRuntime
import ParallelPython

/// `pprun map FILE.py:FUNC ...`: one job per input.
struct MapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map",
        abstract: "Call FILE.py:FUNC once per input; print each result as a JSON line.",
        discussion: """
            Inputs come from exactly one of: the ARG list (an ARG that parses as JSON is \
            that value, otherwise it is a string), --range (integers, like Python's \
            range), or --input (JSON lines: an array is the job's positional arguments, \
            any other value its single argument).

            What a job prints goes to stderr; stdout holds only results, one per \
            successful job, in input order.
            """
    )

    @Argument(help: ArgumentHelp("The function: a Python file, a colon, a function name.", valueName: "FILE.py:FUNC"))
    var function: String

    @Argument(help: ArgumentHelp("One job per ARG: JSON values, or strings.", valueName: "ARG"))
    var args: [String] = []

    @Option(name: .long, help: ArgumentHelp("Integers START, START+STEP, ... below STOP.", valueName: "START:STOP[:STEP]"))
    var range: String?

    @Option(name: .long, help: ArgumentHelp("Read JSON lines from PATH, or stdin for '-'.", valueName: "PATH"))
    var input: String?

    @Option(name: .long, help: ArgumentHelp("Local worker processes (default: the usable cores; 0: nodes only).", valueName: "N"))
    var workers: Int?

    @Option(name: .customLong("node"), help: ArgumentHelp("A ppnode to use (repeatable).", valueName: "HOST:PORT"))
    var nodes: [String] = []

    @Flag(name: .customLong("no-discover"), help: "Use only local workers and --node addresses: do not look for nodes by broadcast.")
    var noDiscover = false

    @OptionGroup var secretOptions: SecretOptions

    @Option(name: .long, help: ArgumentHelp("Kill a job (and replace its worker) after this long.", valueName: "SECONDS"))
    var timeout: Double?

    @Flag(name: .long, help: "Print the job statistics table on stderr at the end.")
    var stats = false

    @Option(name: .long, help: ArgumentHelp("The Python interpreter for workers (default: $PP_PYTHON or python3).", valueName: "PATH"))
    var python: String?

    @Flag(name: .long, inversion: .prefixedNo, help: "Show a progress bar on stderr (default: only when stderr is a terminal).")
    var progress: Bool?

    @Option(name: .customLong("requires-python"), help: ArgumentHelp("Run jobs only on workers whose Python is in RANGE.", valueName: "RANGE"))
    var requiresPython: String?

    @Option(name: .customLong("requires-module"), help: ArgumentHelp("Run jobs only on workers that can import NAME (repeatable).", valueName: "NAME"))
    var requiresModules: [String] = []

    @Option(name: .customLong("requires-implementation"), help: ArgumentHelp("Run jobs only on workers of this Python implementation (cpython, pypy).", valueName: "NAME"))
    var requiresImplementation: String?

    /// The `--requires-*` options, or nil when none is given.
    private func requirements() throws -> Requirements? {
        guard self.requiresPython != nil || !self.requiresModules.isEmpty || self.requiresImplementation != nil else { return nil }
        do {
            return try Requirements(python: self.requiresPython, implementation: self.requiresImplementation, modules: self.requiresModules)
        } catch {
            throw ValidationError("--requires-*: \(error)")
        }
    }

    func validate() throws {
        switch [!self.args.isEmpty, self.range != nil, self.input != nil].filter({ $0 }).count {
        case 0: throw ValidationError("no inputs: give ARGs, --range START:STOP[:STEP] or --input PATH (or - for stdin)")
        case 1: break
        default: throw ValidationError("give inputs one way only: ARGs, --range or --input")
        }
        if let range { _ = try RangeSpec(range) }
        _ = try self.requirements()
        for node in self.nodes {
            do { _ = try NodeAddress(parsing: node) } catch { throw ValidationError("--node: \(error)") }
        }
        if let workers, workers < 0 {
            throw ValidationError("--workers must be 0 or more (got \(workers))")
        }
        if self.workers == 0, self.nodes.isEmpty, self.noDiscover {
            throw ValidationError("--workers 0 with --no-discover and no --node leaves nothing to run jobs; give --node HOST:PORT or more workers")
        }
        if let timeout, !(timeout > 0) || !timeout.isFinite {
            throw ValidationError("--timeout must be a positive number of seconds (got \(timeout))")
        }
        // Discovery settings from the environment: a typo must not turn discovery off
        // silently.
        if !self.noDiscover {
            do {
                _ = try BroadcastTarget.fromEnvironment()
                _ = try NodeBeacon.discoveryPort()
            } catch {
                throw ValidationError("\(error)")
            }
        }
    }

    func run() async throws {
        let function = try Self.orCannotStart { try PythonFunction(spec: self.function, requires: try self.requirements()) }
        let inputs = try Self.orCannotStart { try self.makeInputs() }

        // From here on a signal kills the workers and says how far the run got.
        let counters = RunCounters(total: inputs.count)
        let signalSources = Interruption.install(counters)
        defer { withExtendedLifetime(signalSources) {} }

        // The secret --node and --secret-file need, or one the user named (PP_SECRET,
        // PP_SECRET_FILE) for discovery, must load: one that cannot be used is an error,
        // not a reason to run without nodes. Otherwise the job server loads the default
        // secret for discovered nodes, if there is one; without one they are only reported.
        let needsSecret = !self.nodes.isEmpty || self.secretOptions.secretFile != nil || (!self.noDiscover && ClusterSecret.isNamedByEnvironment)
        let secret = try Self.orCannotStart { try needsSecret ? self.secretOptions.load().secret : nil }
        var logger = Logger(label: "pprun")
        logger.logLevel = .notice
        let server = JobServer(
            configuration: .init(
                workers: self.workers,
                python: self.python,
                timeout: self.timeout.map { .milliseconds(Int64($0 * 1000)) },
                nodes: try self.nodes.map { try NodeAddress(parsing: $0) },
                secret: secret,
                discover: !self.noDiscover,
                logger: logger
            )
        )
        do {
            try await server.load(function)
        } catch where ["ModuleNotFoundError", "ImportError"].contains(error.pythonType ?? "") && (!self.nodes.isEmpty || !self.noDiscover) {
            // Nodes may have what this machine lacks: the jobs go where they load.
            Console.error("pprun: note: \(self.function) does not load here (\(error.pythonType ?? ""): \(error.message)); its jobs run on nodes that can load it")
        } catch {
            Console.error("pprun: cannot load \(self.function): \(error.pythonType.map { "\($0): " } ?? "")\(error.message)")
            if !error.traceback.isEmpty { Console.error(error.traceback, newline: false) }
            await server.shutdown()
            throw ExitCode(ExitCodes.cannotStart)
        }

        let showProgress = self.progress ?? Console.stderrIsTerminal
        let runner = MapRunner(server: server, function: function, progress: showProgress ? Progress(total: inputs.count) : nil, counters: counters)
        let summary = await runner.run(inputs)
        if self.stats { Console.error(await server.statisticsTable()) }
        await server.shutdown()
        if summary.failed > 0 {
            Console.error("pprun: \(summary.failed) of \(summary.total) jobs failed")
            throw ExitCode(ExitCodes.jobFailed)
        }
    }

    /// What `body` returns; its error is printed and ends the run with `cannotStart`.
    private static func orCannotStart<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            Console.error("pprun: \(error)")
            throw ExitCode(ExitCodes.cannotStart)
        }
    }

    private func makeInputs() throws -> InputSource {
        if let range { return .range(try RangeSpec(range)) }
        if let input {
            if input == "-" { return .lines(LineReader(fd: 0), name: "stdin") }
            let fd = open(input, O_RDONLY)
            guard fd >= 0 else {
                throw ValidationError("cannot open --input \(input): \(String(cString: strerror(errno)))")
            }
            return .lines(LineReader(fd: fd), name: input)
        }
        return .arguments(self.args)
    }
}

/// `START:STOP[:STEP]`, integers as Python's `range`.
struct RangeSpec {
    var start: Int
    var stop: Int
    var step: Int

    init(_ text: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard (2...3).contains(parts.count), parts.allSatisfy({ $0 != nil }) else {
            throw ValidationError("--range '\(text)' is not START:STOP[:STEP] with integers, e.g. 0:100 or 100000:100800:100")
        }
        self.start = parts[0]!
        self.stop = parts[1]!
        self.step = parts.count == 3 ? parts[2]! : 1
        guard self.step != 0 else { throw ValidationError("--range step must not be 0") }
    }

    var values: StrideTo<Int> { stride(from: self.start, to: self.stop, by: self.step) }
    /// How many values: the span rounded up to whole steps (away from zero).
    var count: Int { max(0, (self.stop - self.start + self.step - self.step.signum()) / self.step) }
}
