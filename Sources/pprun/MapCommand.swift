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
            Inputs come from exactly one of: the ARG list, --range (integers, like \
            Python's range), or --input (one input per line). An input is JSON (an ARG \
            that is not JSON is a string; --strings: every ARG is a string), or with \
            --lines one string per line, with -0 one string per NUL-separated item, \
            with --csv one row of keyword arguments named by the header row. A JSON \
            array is the positional arguments (--no-spread: it is the one argument); a \
            JSON object is the one argument (--kwargs: the keyword arguments).

            stdout holds one line per successful job, in input order (--unordered: as \
            they finish); --tag prints every input as {"input":…,"value":…} or \
            {"input":…,"error":{…}}. What a job prints goes to stderr, with one line \
            per failure (the traceback the first time an error is seen).

            Examples:
              ls *.py | pprun map f.py:size --input - --lines
              find . -name '*.txt' -print0 | pprun map f.py:count --input - -0
              pprun map f.py:add --input people.csv --csv      # add(name=..., age=...)
              pprun map f.py:f --strings 2024 true              # f("2024"), f("true")
              pprun map f.py:f -- -5 -3                         # negative numbers after --
              pprun map f.py:f --range 0:100000 --unordered --tag --joblog run.log
              pprun map f.py:f --range 0:100000 --joblog run.log --resume --retries 2
              pprun map f.py:check --input - --halt-on-error < todo.jsonl
              pprun map f.py:f --range 0:1000000 | head -n 5    # stops: exit 141
            """    )

    @Argument(help: ArgumentHelp("The function: a Python file, a colon, a function name.", valueName: "FILE.py:FUNC"))
    var function: String

    @Argument(help: ArgumentHelp("One job per ARG: JSON values, or strings (--strings: always strings).", valueName: "ARG"))
    var args: [String] = []

    @Option(name: .long, help: ArgumentHelp("Integers START, START+STEP, ... below STOP.", valueName: "START:STOP[:STEP]"))
    var range: String?

    @Option(name: .long, help: ArgumentHelp("Read inputs from PATH, or stdin for '-': JSON lines (or --lines, -0, --csv).", valueName: "PATH"))
    var input: String?

    @Option(name: [.customShort("j"), .long], help: ArgumentHelp("Local worker processes (default: the usable cores; 0: nodes only).", valueName: "N"))
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

    @Flag(name: .long, inversion: .prefixedNo, help: "Show a progress bar on stderr (default: only when stderr is a terminal, without -q).")
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

    // MARK: Inputs and outputs (issue 14)

    @Flag(name: .long, help: "--input: each line is one string argument, not JSON.")
    var lines = false

    @Flag(name: [.customShort("0"), .customLong("null")], help: "--input: items end with NUL (find -print0); each is one string argument.")
    var null = false

    @Flag(name: .long, help: "--input is CSV: the header row names the keyword arguments of each following row (strings).")
    var csv = false

    @Flag(name: .long, help: "Every ARG is a string, even one that looks like JSON (2024, true, [1]).")
    var strings = false

    @Flag(name: .long, inversion: .prefixedNo, help: "A JSON array input is the positional arguments ([1,2] calls f(1, 2)); --no-spread: it is the one argument.")
    var spread = true

    @Flag(name: .long, help: "A JSON object input is the keyword arguments ({\"a\":1} calls f(a=1)), not the one argument.")
    var kwargs = false

    @Flag(name: .long, help: "Print results as jobs finish, not in input order.")
    var unordered = false

    @Flag(name: [.long, .customLong("with-input")], help: "Print each input with its value or error: {\"input\":…,\"value\":…} or {\"input\":…,\"error\":{\"kind\",\"type\",\"message\"}}, failures included.")
    var tag = false

    @Option(name: .long, help: ArgumentHelp("Write one JSON line per finished input to FILE: seq, input, status, attempts, seconds, ended, node, error.", valueName: "FILE"))
    var joblog: String?

    @Flag(name: .long, help: "Skip the inputs --joblog FILE records as ok (same position, same input), and append to it.")
    var resume = false

    @Option(name: .long, help: ArgumentHelp("Run a failed job up to N more times (not when the function does not load).", valueName: "N"))
    var retries = 0

    @Option(name: .long, help: ArgumentHelp("Stop everything after N failed inputs (exit 1).", valueName: "N"))
    var maxFailures: Int?

    @Flag(name: .long, help: "Stop everything at the first failed input (--max-failures 1).")
    var haltOnError = false

    @Flag(name: .shortAndLong, help: "Quiet: no progress bar and no notices (only errors and failures).")
    var quiet = false

    func validate() throws {
        switch [!self.args.isEmpty, self.range != nil, self.input != nil].filter({ $0 }).count {
        case 0: throw ValidationError("no inputs: give ARGs, --range START:STOP[:STEP] or --input PATH (or - for stdin)")
        case 1: break
        default: throw ValidationError("give inputs one way only: ARGs, --range or --input")
        }
        if let range { _ = try RangeSpec(range) }
        _ = try self.requirements()
        if [self.lines, self.null, self.csv].filter({ $0 }).count > 1 { throw ValidationError("give one of --lines, -0 and --csv") }
        if self.lines || self.null || self.csv, self.input == nil {
            throw ValidationError("--lines, -0 and --csv describe --input; ARGs are JSON or, with --strings, strings")
        }
        if self.strings, self.args.isEmpty { throw ValidationError("--strings is for ARGs; for --input use --lines") }
        if self.resume, self.joblog == nil { throw ValidationError("--resume needs --joblog FILE: the joblog of the run to resume") }
        if self.retries < 0 { throw ValidationError("--retries must be 0 or more (got \(self.retries))") }
        if let maxFailures, maxFailures < 1 { throw ValidationError("--max-failures must be 1 or more (got \(maxFailures))") }
        if self.haltOnError, self.maxFailures != nil { throw ValidationError("give --halt-on-error or --max-failures N, not both") }
        _ = try Self.logLevel(quiet: self.quiet)
        for node in self.nodes {
            do { _ = try NodeAddress(parsing: node) } catch { throw ValidationError("--node: \(error)") }
        }
        if let workers, workers < 0 { throw ValidationError("--workers must be 0 or more (got \(workers))") }
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
        let options = try Self.orCannotStart {
            MapOptions(
                unordered: self.unordered,
                tag: self.tag,
                retries: self.retries,
                maxFailures: self.haltOnError ? 1 : self.maxFailures,
                joblog: try self.joblog.map { try JobLog(path: $0, resume: self.resume) },
                done: try self.resume ? JobLog.succeeded(in: self.joblog!) : [:]
            )
        }

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
        logger.logLevel = try Self.logLevel(quiet: self.quiet)
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

        let showProgress = self.progress ?? (Console.stderrIsTerminal && !self.quiet)
        let runner = MapRunner(server: server, function: function, progress: showProgress ? Progress(total: inputs.count) : nil, counters: counters, options: options)
        Stop.watchOutput()
        let summary = await runner.run(inputs, format: self.format)
        if self.stats { Console.error(await server.statisticsTable()) }
        await server.shutdown()
        if summary.failed > 0 {
            if !showProgress { Console.error("pprun: \(summary.failed) of \(summary.total) jobs failed") }
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
            let separator: UInt8 = self.null ? 0 : 10
            if input == "-" { return .records(LineReader(fd: 0, separator: separator), name: "stdin") }
            let fd = open(input, O_RDONLY)
            guard fd >= 0 else {
                throw ValidationError("cannot open --input \(input): \(String(cString: strerror(errno)))")
            }
            return .records(LineReader(fd: fd, separator: separator), name: input)
        }
        return .arguments(self.args)
    }

    /// How inputs become arguments.
    private var format: InputFormat {
        let kind: InputFormat.Kind = self.csv ? .csv : self.lines || self.null || self.strings ? .string : .json
        return InputFormat(kind: kind, spread: self.spread, kwargs: self.kwargs)
    }

    /// `PP_LOG_LEVEL` (default notice), or error with `-q`.
    static func logLevel(quiet: Bool) throws -> Logger.Level {
        if quiet { return .error }
        guard let text = ProcessInfo.processInfo.environment["PP_LOG_LEVEL"], !text.isEmpty else { return .notice }
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw ValidationError("PP_LOG_LEVEL='\(PeerText.cut(text, limit: 40))' is not a level: give trace, debug, info, notice, warning, error or critical")
        }
        return level
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
