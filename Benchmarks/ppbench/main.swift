// ppbench: measures ParallelPython side by side with the alternatives, in one run.
//
//     swift run -c release ppbench [--jobs 20000] [--workers 2] [--rounds 3]
//
// (a) tiny jobs (`def f(x): return x + 1`): our local mode against Python's
//     multiprocessing.Pool(chunksize=1) on the same number of workers;
// (b) a CPU-bound batch (sum_primes of 100000, 100100, ..., 100700) on the workers
//     against a serial Python loop.
// Each measurement is taken `rounds` times and the best is kept, for every contender
// alike; the ratios are what to compare across machines.

import Foundation
import ParallelPython

struct Options {
    var jobs = 20_000
    var workers = 2
    var rounds = 3
    var python = ProcessInfo.processInfo.environment["PP_PYTHON"] ?? "python3"

    init(_ args: [String]) {
        var i = 1
        func value() -> String {
            i += 1
            guard i < args.count else { fail("\(args[i - 1]) needs a value") }
            return args[i]
        }
        while i < args.count {
            switch args[i] {
            case "--jobs": self.jobs = Int(value()) ?? self.jobs
            case "--workers": self.workers = Int(value()) ?? self.workers
            case "--rounds": self.rounds = max(1, Int(value()) ?? self.rounds)
            case "--python": self.python = value()
            case "-h", "--help":
                print("usage: ppbench [--jobs N] [--workers N] [--rounds N] [--python PATH]")
                exit(0)
            default: fail("unknown option \(args[i]); see --help")
            }
            i += 1
        }
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("ppbench: \(message)\n".utf8))
    exit(2)
}

/// Runs a Python snippet and returns what it printed (one number per line).
func python(_ code: String, _ options: Options) -> [Double] {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [options.python, "-c", code]
    let out = Pipe()
    p.standardOutput = out
    do { try p.run() } catch { fail("cannot run \(options.python): \(error)") }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { fail("the Python baseline failed (status \(p.terminationStatus))") }
    return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { Double($0) }
}

func seconds(_ d: Duration) -> Double {
    let (s, a) = d.components
    return Double(s) + Double(a) / 1e18
}

func fmt(_ v: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", v) }

let options = Options(CommandLine.arguments)
let primesFile = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../examples/sum_primes.py").standardized.path
let primeInputs = Array(stride(from: 100_000, to: 100_800, by: 100))

print("ppbench: \(options.jobs) tiny jobs, \(options.workers) workers, best of \(options.rounds) rounds, python \(options.python)")
print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores")

// MARK: (a) tiny jobs

let server = JobServer(configuration: .init(workers: options.workers, python: options.python))
let inc = PythonFunction(name: "f", source: "def f(x):\n    return x + 1\n")
let tinyArgs = (0..<options.jobs).map { JobArguments(jsonArray: Array("[\($0)]".utf8)) }
_ = await server.mapResults(inc, arguments: Array(tinyArgs.prefix(200)), as: RawJSON.self)  // start and warm the workers

var oursTiny = 0.0
for _ in 0..<options.rounds {
    let start = ContinuousClock.now
    let results = await server.mapResults(inc, arguments: tinyArgs, as: RawJSON.self)
    let elapsed = seconds(ContinuousClock.now - start)
    let failed = results.filter { if case .failure = $0 { true } else { false } }.count
    guard failed == 0 else { fail("\(failed) tiny jobs failed") }
    oursTiny = max(oursTiny, Double(options.jobs) / elapsed)
}

let poolTiny = python(
    """
    import multiprocessing, time
    def f(x):
        return x + 1
    if __name__ == "__main__":
        with multiprocessing.Pool(\(options.workers)) as pool:
            pool.map(f, range(200), chunksize=1)
            best = 0.0
            for _ in range(\(options.rounds)):
                t = time.perf_counter()
                pool.map(f, range(\(options.jobs)), chunksize=1)
                best = max(best, \(options.jobs) / (time.perf_counter() - t))
        print(best)
    """,
    options
).first ?? 0

// MARK: (b) CPU-bound batch

let sumPrimes = try PythonFunction(file: primesFile, name: "sum_primes")
_ = try await server.map(sumPrimes, [10], as: Int.self)
var oursCPU = Double.infinity
var sums: [Int] = []
for _ in 0..<options.rounds {
    let start = ContinuousClock.now
    sums = try await server.map(sumPrimes, primeInputs, as: Int.self)
    oursCPU = min(oursCPU, seconds(ContinuousClock.now - start))
}
let serial = python(
    """
    import sys, time
    sys.path.insert(0, \(String(reflecting: URL(fileURLWithPath: primesFile).deletingLastPathComponent().path)))
    from sum_primes import sum_primes
    best = float("inf")
    for _ in range(\(options.rounds)):
        t = time.perf_counter()
        sums = [sum_primes(n) for n in \(primeInputs)]
        best = min(best, time.perf_counter() - t)
    print(best)
    for s in sums:
        print(s)
    """,
    options
)
let serialCPU = serial.first ?? 0
let serialSums = serial.dropFirst().map { Int($0) }
guard serialSums == sums else { fail("sum_primes results differ from the serial loop: \(sums) vs \(serialSums)") }
await server.shutdown()

// MARK: Report

print("")
print("(a) \(options.jobs) tiny jobs on \(options.workers) workers")
print("    ParallelPython local mode      \(fmt(oursTiny, 0)) jobs/s")
print("    multiprocessing.Pool(cs=1)     \(fmt(poolTiny, 0)) jobs/s")
print("    ratio ours/Pool                \(fmt(oursTiny / poolTiny, 2))   (target >= 1.00)")
print("(b) sum_primes over \(primeInputs.count) inputs (\(primeInputs.first!)..\(primeInputs.last!))")
print("    serial Python loop             \(fmt(serialCPU, 3)) s")
print("    ParallelPython, \(options.workers) workers      \(fmt(oursCPU, 3)) s")
print("    speed-up                       \(fmt(serialCPU / oursCPU, 2))   (target >= 1.90 on 2 workers)")
print("    results equal to serial loop   yes (first \(sums.first!))")
