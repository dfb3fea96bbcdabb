import ArgumentParser
import Foundation
import ParallelPython

/// `pprun`: run a Python function over many inputs on every core, from a shell.
@main
struct PPRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pprun",
        abstract: "Run a Python function in parallel over many inputs.",
        discussion: """
            Jobs run on local python3 worker processes (one per core by default) and on \
            the ppnode daemons given with --node. Results \
            go to stdout as JSON lines, in input order, as soon as order allows. A failing \
            job prints its input, the Python exception and the traceback on stderr; the \
            other jobs still run, and the exit status is 1.

            Exit status: 0 all jobs succeeded; 1 some job failed; 2 the function could not \
            be loaded or no worker could start; 64 bad command line; 130, 143, 129 \
            stopped by SIGINT, SIGTERM, SIGHUP (workers killed, "interrupted: N of M done" \
            on stderr); 141 the reader of stdout went away (| head): the run stopped.

            Examples:
              pprun map examples/sum_primes.py:sum_primes 100000 100100 100200
              pprun map examples/sum_primes.py:sum_primes --range 100000:100800:100 --stats
              seq 1 1000 | pprun map work.py:process --input - -j 8 --timeout 30
              ls *.py | pprun map work.py:size --input - --lines
              pprun map work.py:pair --input pairs.jsonl   # a line [1, 2] calls pair(1, 2)
              pprun map work.py:f --range 0:1000 --node 10.0.0.5:7340 --node 10.0.0.6:7340 --workers 0
            """,
        version: ParallelPythonVersion.text("pprun"),
        subcommands: [MapCommand.self, EngineCommand.self]
    )

    /// Parses and runs as usual; a bad command line with a negative number before `--`
    /// (taken for an option) gets a hint.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            var command = try parseAsRoot(arguments)
            if var command = command as? any AsyncParsableCommand { try await command.run() } else { try command.run() }
        } catch {
            let negative = arguments.prefix { $0 != "--" }.first { $0.count > 1 && $0.hasPrefix("-") && Double($0) != nil }
            guard let negative, exitCode(for: error) == .validationFailure else { exit(withError: error) }
            Console.error(fullMessage(for: error))
            Console.error("pprun: \(negative) was taken for an option; put -- before ARGs that start with -, e.g. pprun map FILE.py:FUNC -- \(negative)")
            exit(withError: ExitCode.validationFailure)
        }
    }
}

/// Exit codes of `pprun`, documented in man/pprun.1.
enum ExitCodes {
    static let jobFailed: Int32 = 1
    static let cannotStart: Int32 = 2
}
