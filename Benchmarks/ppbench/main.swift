// ppbench: measures ParallelPython side by side with the alternatives, in one run.
//
//     swift build -c release && .build/release/ppbench [--jobs 20000] [--workers 2] [--rounds 3]
//
// (a) tiny jobs (`def f(x): return x + 1`): our local mode against Python's
//     multiprocessing.Pool(chunksize=1) on the same number of workers;
// (b) a CPU-bound batch (sum_primes of 100000, 100100, ..., 100700) on the workers
//     against a serial Python loop;
// (c) through one ppnode on loopback (TLS 1.3): tiny jobs pipelined and one at a time
//     (synchronous round trip), against multiprocessing.Pool(chunksize=1) and against
//     ppft's own ppserver driven by the ppft client (ppft 1.7.8 and dill from PyPI in
//     the venv .build/ppft-venv, made on first use; --no-ppft skips it), and next to
//     the machine's floor for that round trip (Floor.swift: the same processes and
//     TLS, blocking system calls only).
// (d) discovery and failure detection, on loopback broadcast with a private discovery
//     port: node start to its first job for a client that was given no address, and
//     kill -9 / SIGSTOP of a node holding jobs to those jobs being rescheduled.
// (e) the unchanged ppft client against ppft's own ppserver and against ppnode's
//     pp-compatible port: tiny jobs pipelined and one at a time, and the resident
//     memory of each server with its workers afterwards.
// (f) fair share on the node of (c): a busy client keeps half-second jobs queued; a
//     second sends 20 tiny jobs; the time to its first and last result in job-times.
// (g) large arguments: 40 jobs sharing one 4 MiB argument through one ppnode, sent
//     by digest (once) and inline (with every job): the bytes the node read (its
//     /proc rchar: sockets and worker pipes) and the time of each, in the same run.
// (h) pprun end to end: `pprun map m.py:f --range 0:N` (--pprun-jobs, 100,000) as a
//     whole process, on local workers and through one ppnode (--workers 0), against a
//     Python program running multiprocessing.Pool's map with chunksize=1 and with its
//     automatic chunks; each prints the N results to /dev/null.
// `--round-trips-only` measures only local tiny jobs and the synchronous round trips
// (local and through one node, each next to its floor), for quick comparisons while
// working on per-job costs.
// Round trips are reported as p50 and p99 of every call of every round; sum_primes
// runs 5 times, each against its own serial loop, with the spread of the speed-ups.
// Each measurement is taken `rounds` times and the best is kept, for every contender
// alike; the ratios are what to compare across machines.

import Foundation
import Logging
import PPCore
import PPRuntime
import ParallelPython
import Synchronization

struct Options {
    var jobs = 20_000
    var workers = 2
    var rounds = 3
    var python = ProcessInfo.processInfo.environment["PP_PYTHON"] ?? "python3"
    var roundTrips = 2_000
    var ppft = true
    // ppft runs ~45 jobs/s here (Nagle and delayed ACKs): keep its share of the run short.
    var ppftJobs = 200
    var ppftRoundTrips = 20
    var pprunJobs = 100_000
    var roundTripsOnly = false

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
            case "--round-trips": self.roundTrips = Int(value()) ?? self.roundTrips
            case "--no-ppft": self.ppft = false
            case "--round-trips-only": self.roundTripsOnly = true
            case "--pprun-jobs": self.pprunJobs = Int(value()) ?? self.pprunJobs
            case "-h", "--help":
                print("usage: ppbench [--jobs N] [--workers N] [--rounds N] [--round-trips N] [--pprun-jobs N] [--python PATH] [--no-ppft] [--round-trips-only]")
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
func python(_ code: String, _ options: Options, interpreter: String? = nil) -> [Double] {
    // From a file, not -c: ppft (with dill) needs the functions' source file.
    let script = NSTemporaryDirectory() + "/ppbench-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).py"
    // Foundation's Process passes on the calling thread's signal mask, and this may run
    // on a NIO thread, which blocks nearly every signal: the script unblocks them first,
    // or multiprocessing.Pool's terminate() (SIGTERM) could wait for its workers forever.
    let unblock = "import signal as _pp_signal; _pp_signal.pthread_sigmask(_pp_signal.SIG_SETMASK, [])\n"
    guard FileManager.default.createFile(atPath: script, contents: Data((unblock + code).utf8)) else { fail("cannot write \(script)") }
    defer { try? FileManager.default.removeItem(atPath: script) }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [interpreter ?? options.python, script]
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

/// The p-th percentile (0...1) of `samples`, nearest rank.
func percentile(_ samples: [Double], _ p: Double) -> Double {
    let sorted = samples.sorted()
    guard !sorted.isEmpty else { return .nan }
    return sorted[min(sorted.count - 1, max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1))]
}

/// Times `count` synchronous calls of `call`, each on its own; returns every time.
func roundTrips(_ count: Int, _ call: (Int) async throws -> Void) async rethrows -> [Double] {
    var samples: [Double] = []
    samples.reserveCapacity(count)
    for i in 0..<count {
        let start = ContinuousClock.now
        try await call(i)
        samples.append(seconds(ContinuousClock.now - start))
    }
    return samples
}

// The child that plays the node of the round-trip floor (Floor.swift).
if CommandLine.arguments.count == 4, CommandLine.arguments[1] == "--floor-node" {
    Floor.node(secret: CommandLine.arguments[2], python: CommandLine.arguments[3])
}
let options = Options(CommandLine.arguments)
let primesFile = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../examples/sum_primes.py").standardized.path
let primeInputs = Array(stride(from: 100_000, to: 100_800, by: 100))

print("ppbench: \(options.jobs) tiny jobs, \(options.workers) workers, best of \(options.rounds) rounds, python \(options.python)")
print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores")

// MARK: (a) tiny jobs

let server = JobServer(configuration: .init(workers: options.workers, python: options.python, discover: false))
let inc = PythonFunction(name: "f", source: "def f(x):\n    return x + 1\n")
let tinyArgs = (0..<options.jobs).map { JobArguments(jsonArray: Array("[\($0)]".utf8)) }
_ = await server.mapResults(inc, arguments: Array(tinyArgs.prefix(200)), as: RawJSON.self)  // start and warm the workers

var oursTiny = 0.0
// CPU per job over every round, steadier than the rate on a noisy machine: this
// process (the engine's loop, the caller) and its workers.
let cpuBefore = (ours: processCPU(getpid()), workers: childPIDs(of: getpid()).map(processCPU).reduce(0, +))
for _ in 0..<options.rounds {
    let start = ContinuousClock.now
    let results = await server.mapResults(inc, arguments: tinyArgs, as: RawJSON.self)
    let elapsed = seconds(ContinuousClock.now - start)
    let failed = results.filter { if case .failure = $0 { true } else { false } }.count
    guard failed == 0 else { fail("\(failed) tiny jobs failed") }
    oursTiny = max(oursTiny, Double(options.jobs) / elapsed)
}
let tinyJobsRun = Double(options.jobs * options.rounds)
let tinyCPU = (
    ours: (processCPU(getpid()) - cpuBefore.ours) / tinyJobsRun,
    workers: (childPIDs(of: getpid()).map(processCPU).reduce(0, +) - cpuBefore.workers) / tinyJobsRun
)

/// Synchronous round trips (submit, await the value, submit the next), `rounds` times
/// `roundTrips`.
func synchronousRoundTrips(_ server: JobServer) async throws -> [Double] {
    var samples: [Double] = []
    for _ in 0..<options.rounds {
        samples += try await roundTrips(options.roundTrips) { i in
            _ = try await server.submit(inc, arguments: tinyArgs[i % tinyArgs.count], as: RawJSON.self).value
        }
    }
    return samples
}

/// "p50 X us, p99 Y us" of round-trip samples.
func latencies(_ samples: [Double]) -> String {
    "p50 \(fmt(percentile(samples, 0.5) * 1e6, 1)) us, p99 \(fmt(percentile(samples, 0.99) * 1e6, 1)) us"
}

// The synchronous round trip in local mode: the same path minus TLS and the node; and
// its floor, the caller writing straight into a worker's pipe (Floor.swift).
let localRTTs = try await synchronousRoundTrips(server)
let localFloorRTTs: [Double]
do {
    localFloorRTTs = try Floor.localRoundTrips(count: options.roundTrips * options.rounds, python: realPython())
} catch {
    fail("the local round-trip floor failed: \(error)")
}
if options.roundTripsOnly {
    print("tiny jobs, local mode     \(fmt(oursTiny, 0)) jobs/s, CPU per job: \(fmt(tinyCPU.ours * 1e6, 2)) us here, \(fmt(tinyCPU.workers * 1e6, 2)) us in the workers")
    print("round trip, local mode    \(latencies(localRTTs))")
    print("  the machine's floor     \(latencies(localFloorRTTs))")
}

let poolTinyRates = options.roundTripsOnly ? [] : python(
    """
    import multiprocessing, time
    def f(x):
        return x + 1
    if __name__ == "__main__":
        with multiprocessing.Pool(\(options.workers)) as pool:
            pool.map(f, range(200), chunksize=1)
            best = auto = 0.0
            for _ in range(\(options.rounds)):
                t = time.perf_counter()
                pool.map(f, range(\(options.jobs)), chunksize=1)
                best = max(best, \(options.jobs) / (time.perf_counter() - t))
                t = time.perf_counter()
                pool.map(f, range(\(options.jobs)))
                auto = max(auto, \(options.jobs) / (time.perf_counter() - t))
        print(best)
        print(auto)
    """,
    options
)
let poolTiny = poolTinyRates.first ?? 0
let poolTinyAuto = poolTinyRates.dropFirst().first ?? 0

// MARK: (b) CPU-bound batch

let sumPrimes = try PythonFunction(file: primesFile, name: "sum_primes")
_ = try await server.map(sumPrimes, [10], as: Int.self)
// Five repetitions, each a serial loop then the same inputs on the workers, so that
// each speed-up compares two runs taken a moment apart. Each repetition also measures
// the machine's own ceiling for this work: two forked processes computing half the
// inputs each, with nothing sent anywhere (no pool, no pickling, no pipes).
let primeRepetitions = 5
var speedUps: [Double] = []
var ceilings: [Double] = []  // serial / the two forked halves, each repetition
var primePairs: [String] = []  // "serial/ours" seconds of each repetition
var oursCPU = Double.infinity, serialCPU = Double.infinity
var sums: [Int] = []
for _ in 0..<(options.roundTripsOnly ? 0 : primeRepetitions) {
    let serial = python(
        """
        import sys, time
        sys.path.insert(0, \(String(reflecting: URL(fileURLWithPath: primesFile).deletingLastPathComponent().path)))
        from sum_primes import sum_primes
        import os
        inputs = \(primeInputs)
        t = time.perf_counter()
        sums = [sum_primes(n) for n in inputs]
        print(time.perf_counter() - t)
        t = time.perf_counter()
        children = []
        for half in (inputs[0::2], inputs[1::2]):
            pid = os.fork()
            if pid == 0:
                [sum_primes(n) for n in half]
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        print(time.perf_counter() - t)
        for s in sums:
            print(s)
        """,
        options
    )
    let start = ContinuousClock.now
    sums = try await server.map(sumPrimes, primeInputs, as: Int.self)
    let ours = seconds(ContinuousClock.now - start)
    let serialSums = serial.dropFirst(2).map { Int($0) }
    guard serialSums == sums, serial.count == 2 + primeInputs.count else { fail("sum_primes results differ from the serial loop: \(sums) vs \(serialSums)") }
    speedUps.append(serial[0] / ours)
    ceilings.append(serial[0] / serial[1])
    primePairs.append(fmt(serial.first ?? 0, 3) + "/" + fmt(ours, 3))
    oursCPU = min(oursCPU, ours)
    serialCPU = min(serialCPU, serial.first ?? 0)
}
await server.shutdown()

// MARK: (c) through one ppnode

let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
// The form ppnode generates (64 hex digits): its keys derive in microseconds. A secret a
// person chose is stretched with scrypt, about 0.1-0.2 s at every client's start.
let secretText = Hex.encode(randomBytes(32))

/// Starts a process and waits until a line of its stderr contains `ready`; returns the
/// process and its stderr up to that line.
func startDaemon(_ executable: String, _ args: [String], env: [String: String], ready: String) -> (Process, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = args
    var e = ProcessInfo.processInfo.environment
    for (k, v) in env { e[k] = v }
    p.environment = e
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    do { try p.run() } catch { fail("cannot start \(executable): \(error)") }
    var text = ""
    let deadline = Date().addingTimeInterval(20)
    while Date() < deadline {
        let data = err.fileHandleForReading.availableData
        if data.isEmpty { break }
        text += String(decoding: data, as: UTF8.self)
        if text.split(separator: "\n").contains(where: { $0.contains(ready) }) {
            // Keep draining its stderr so it never blocks on a full pipe.
            Thread { while !err.fileHandleForReading.availableData.isEmpty {} }.start()
            return (p, text)
        }
    }
    p.terminate()
    fail("\(executable) did not start: \(text)")
}

guard FileManager.default.isExecutableFile(atPath: binDir + "/ppnode") else {
    fail("\(binDir)/ppnode is missing; build every product first: swift build -c release")
}
let (node, readyLog) = startDaemon(
    binDir + "/ppnode",
    ["--port", "0", "--no-pp", "--host", "127.0.0.1", "--workers", String(options.workers), "--log-level", "info"],
    env: ["PP_SECRET": secretText],
    ready: "ppnode ready"
)
let readyLine = readyLog.split(separator: "\n").first { $0.contains("ppnode ready") }!
let nodePort = Int(readyLine.split(separator: " ").first { $0.hasPrefix("address=") }!.split(separator: ":").last!)!
let remote = JobServer(configuration: .init(workers: 0, nodes: [NodeAddress(host: "127.0.0.1", port: nodePort)], secret: try ClusterSecret(text: secretText, origin: "ppbench"), discover: false))
_ = await remote.mapResults(inc, arguments: Array(tinyArgs.prefix(200)), as: RawJSON.self)
var nodeTiny = 0.0
for _ in 0..<(options.roundTripsOnly ? 0 : options.rounds) {
    let start = ContinuousClock.now
    let results = await remote.mapResults(inc, arguments: tinyArgs, as: RawJSON.self)
    let elapsed = seconds(ContinuousClock.now - start)
    guard results.allSatisfy({ if case .success = $0 { true } else { false } }) else { fail("tiny jobs failed through ppnode") }
    nodeTiny = max(nodeTiny, Double(options.jobs) / elapsed)
}
let nodeRTTs = try await synchronousRoundTrips(remote)
let nodeRTT = percentile(nodeRTTs, 0.5)
await remote.shutdown()
// The same path with nothing but blocking system calls (Floor.swift), right after ours.
let floorRTTs: [Double]
do {
    floorRTTs = try Floor.roundTrips(count: options.roundTrips * options.rounds, secret: secretText, python: realPython())
} catch {
    fail("the round-trip floor failed: \(error)")
}
if options.roundTripsOnly {
    print("round trip, one node      \(latencies(nodeRTTs))")
    print("  the machine's floor     \(latencies(floorRTTs))")
    node.terminate()
    node.waitUntilExit()
    exit(0)
}

// (f) Fair share on the same node: a busy client keeps half-second jobs queued there; a
// second client, already connected, then sends 20 tiny jobs. Its times to the first
// and to the last result, in job-times (0.5 s): first come, first served, each of its
// jobs would wait behind the busy client's queue at the node.
func fairShare(port: Int) async -> (first: Double, all: Double) {
    let configuration = JobServer.Configuration(
        workers: 0, nodes: [NodeAddress(host: "127.0.0.1", port: port)], secret: try! ClusterSecret(text: secretText, origin: "ppbench"), discover: false
    )
    let busy = JobServer(configuration: configuration)
    let polite = JobServer(configuration: configuration)
    _ = await polite.mapResults(inc, arguments: [tinyArgs[0]], as: RawJSON.self)
    let half = PythonFunction(name: "half", source: "import time\ndef half(x):\n    time.sleep(0.5)\n    return x\n")
    let busyDone = Atomic<Int>(0)
    for i in 0..<400 {
        _ = busy.submit(half, arguments: tinyArgs[i % tinyArgs.count], as: RawJSON.self) { _ in busyDone.add(1, ordering: .relaxed) }
    }
    while busyDone.load(ordering: .relaxed) < 2 { try? await Task.sleep(for: .milliseconds(5)) }
    let start = ContinuousClock.now
    let first = Mutex<ContinuousClock.Instant?>(nil)
    let handles = (0..<20).map { i in
        polite.submit(inc, arguments: tinyArgs[i % tinyArgs.count], as: RawJSON.self) { _ in first.withLock { $0 = $0 ?? .now } }
    }
    for h in handles { _ = await h.result }
    let all = seconds(ContinuousClock.now - start) / 0.5
    let firstAt = first.withLock { $0 } ?? .now
    await polite.shutdown()
    await busy.shutdown()
    return (seconds(firstAt - start) / 0.5, all)
}
let fairness = await fairShare(port: nodePort)
node.terminate()
node.waitUntilExit()

let poolRTTs = python(
    """
    import math, multiprocessing, time
    def f(x):
        return x + 1
    if __name__ == "__main__":
        with multiprocessing.Pool(\(options.workers)) as pool:
            for i in range(200):
                pool.apply(f, (i,))
            samples = []
            for _ in range(\(options.rounds)):
                for i in range(\(options.roundTrips)):
                    t = time.perf_counter()
                    pool.apply(f, (i,))
                    samples.append(time.perf_counter() - t)
        samples.sort()
        for p in (0.5, 0.99):
            print(samples[min(len(samples) - 1, max(0, math.ceil(p * len(samples)) - 1))])
    """,
    options
)
let poolRTT = poolRTTs.first ?? 0
let poolRTT99 = poolRTTs.dropFirst().first ?? 0

/// What the unchanged ppft client measured against one server.
struct PPFTRun {
    /// Tiny jobs per second, all submitted at once.
    var rate: Double
    /// Seconds per job, submitted one at a time and waited for.
    var rtt: Double
    /// Resident memory of the server and its worker processes after the run, bytes.
    var rss: Int
}

/// ppft 1.7.8 and dill from PyPI, in the venv the tests use (scripts/setup --test
/// makes it too).
func ppftVenv() -> String? {
    let venv = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/ppft-venv").standardized.path
    if !FileManager.default.fileExists(atPath: venv + "/bin/ppserver") {
        print("ppbench: installing ppft 1.7.8 and dill into \(venv) (once)")
        let setup = Process()
        setup.executableURL = URL(fileURLWithPath: "/bin/sh")
        setup.arguments = ["-c", "\(options.python) -m venv '\(venv)' && '\(venv)/bin/pip' install -q --disable-pip-version-check ppft==1.7.8 dill"]
        try? setup.run()
        setup.waitUntilExit()
        guard setup.terminationStatus == 0 else {
            print("ppbench: could not install ppft (pip failed); skipping the ppft comparison")
            return nil
        }
    }
    return venv
}

/// A free TCP port on loopback: bind port 0, read it, close.
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    close(fd)
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// Resident memory of `pid` and its children (VmRSS from /proc), bytes.
func residentBytes(of pid: Int32) -> Int {
    ([pid] + childPIDs(of: pid)).reduce(0) { sum, p in
        guard let status = try? String(contentsOfFile: "/proc/\(p)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kb = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return sum }
        return sum + kb * 1024
    }
}

/// The same ppft client program against a server on `port`: `jobs` tiny jobs
/// submitted at once, then `roundTrips` jobs one at a time; best of `rounds`.
func ppftClient(venv: String, port: Int, jobs: Int, roundTrips: Int, rounds: Int) -> (rate: Double, rtt: Double)? {
    let numbers = python(
        """
        import time, pp
        def f(x):
            return x + 1
        if __name__ != "__main__":
            raise SystemExit(0)
        job_server = pp.Server(ncpus=0, ppservers=("127.0.0.1:\(port)",), secret="\(secretText)")
        deadline = time.time() + 20
        while sum(v for k, v in job_server.get_active_nodes().items() if k != "local") == 0 and time.time() < deadline:
            time.sleep(0.01)
        for _ in range(5):
            job_server.submit(f, (1,))()
        best_rate = 0.0
        best_rtt = float("inf")
        for _ in range(\(rounds)):
            t = time.perf_counter()
            jobs = [job_server.submit(f, (i,)) for i in range(\(jobs))]
            results = [j() for j in jobs]
            assert results == [i + 1 for i in range(\(jobs))], results[:10]
            best_rate = max(best_rate, \(jobs) / (time.perf_counter() - t))
            t = time.perf_counter()
            for i in range(\(roundTrips)):
                assert job_server.submit(f, (i,))() == i + 1
            best_rtt = min(best_rtt, (time.perf_counter() - t) / \(roundTrips))
        print(best_rate)
        print(best_rtt)
        job_server.destroy()
        """,
        options,
        interpreter: venv + "/bin/python"
    )
    guard numbers.count == 2 else { return nil }
    return (numbers[0], numbers[1])
}

/// (e): the unchanged ppft client against ppft's own ppserver and against ppnode's
/// pp-compatible port, each with `options.workers` workers, one after the other.
func ppftNumbers() -> (ppserver: PPFTRun, ppnode: PPFTRun)? {
    guard options.ppft, let venv = ppftVenv() else { return nil }

    let port = freePort()
    let server = Process()
    server.executableURL = URL(fileURLWithPath: venv + "/bin/ppserver")
    server.arguments = ["-p", String(port), "-i", "127.0.0.1", "-w", String(options.workers), "-s", secretText]
    server.standardOutput = FileHandle.nullDevice
    server.standardError = FileHandle.nullDevice
    do { try server.run() } catch { return nil }
    let theirs: PPFTRun?
    do {
        defer {
            // ppserver's workers are its children: end them too, by pid.
            // (ppserver ignores SIGTERM.)
            let children = childPIDs(of: server.processIdentifier)
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
            for pid in children { kill(pid, SIGKILL) }
        }
        // ppserver logs nothing when ready: the client waits for its workers to show.
        // ppft runs ~45 jobs/s here (Nagle and delayed ACKs): one round, few jobs.
        theirs = ppftClient(venv: venv, port: port, jobs: options.ppftJobs, roundTrips: options.ppftRoundTrips, rounds: 1).map {
            PPFTRun(rate: $0.rate, rtt: $0.rtt, rss: residentBytes(of: server.processIdentifier))
        }
    }

    // The node's workers run the venv's Python, which has dill, as ppserver's do.
    let (node, log) = startDaemon(
        binDir + "/ppnode",
        ["--port", "0", "--pp-port", "0", "--host", "127.0.0.1", "--workers", String(options.workers), "--python", venv + "/bin/python", "--log-level", "info"],
        env: ["PP_SECRET": secretText],
        ready: "ppnode ready"
    )
    defer {
        node.terminate()
        node.waitUntilExit()
    }
    guard let field = log.split(whereSeparator: { $0 == " " || $0 == "\n" }).first(where: { $0.hasPrefix("pp.address=") }),
        let ppPort = Int(field.split(separator: ":").last ?? "")
    else { fail("ppnode did not open its pp-compatible port: \(log)") }
    let ours = ppftClient(venv: venv, port: ppPort, jobs: options.ppftJobs * 10, roundTrips: options.ppftRoundTrips * 10, rounds: options.rounds).map {
        PPFTRun(rate: $0.rate, rtt: $0.rtt, rss: residentBytes(of: node.processIdentifier))
    }
    guard let theirs, let ours else { return nil }
    return (theirs, ours)
}

/// User and system CPU seconds of process `pid`, all its threads (from /proc); 0 when
/// it is gone.
func processCPU(_ pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return 0 }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Process ids whose parent is `pid` (from /proc).
func childPIDs(of pid: Int32) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { Int32($0) }.filter { child in
        guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == pid
    }
}

let ppftResult = ppftNumbers()

// MARK: (d) discovery latency and failure detection

/// Remembers when the job server logged each message (to time "node lost").
struct EventClock: LogHandler {
    final class Events: Sendable {
        let list = Mutex<[(String, ContinuousClock.Instant)]>([])
        func first(_ message: String, after: ContinuousClock.Instant) -> ContinuousClock.Instant? {
            self.list.withLock { $0.first { $0.0 == message && $0.1 >= after }?.1 }
        }
    }
    let events: Events
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        let now = ContinuousClock.now
        self.events.list.withLock { $0.append((event.message.description, now)) }
    }
}

let benchSecret = try ClusterSecret(text: secretText, origin: "ppbench")
let sleeper = PythonFunction(name: "nap", source: "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n")
func nodeArgs(_ workers: Int) -> [String] { ["--port", "0", "--no-pp", "--host", "127.0.0.1", "--workers", String(workers), "--log-level", "info", "--beacon-interval", "2"] }

/// Node start to first job done, for a client with no address that discovers by broadcast.
func discoveryLatency() async -> (total: Double, toReady: Double) {
    let port = Int.random(in: 40_000...49_999)
    var configuration = JobServer.Configuration(workers: 0, secret: benchSecret, discover: true)
    configuration.discoveryPort = port
    configuration.broadcast = .address("127.255.255.255")
    configuration.dnssd = false
    let client = JobServer(configuration: configuration)
    let done = Mutex<ContinuousClock.Instant?>(nil)
    let finished = DispatchSemaphore(value: 0)
    _ = client.submit(inc, arguments: try! JobArguments([1]), as: RawJSON.self) { _ in
        done.withLock { $0 = .now }
        finished.signal()
    }
    try? await Task.sleep(for: .milliseconds(300))  // the client is listening
    let start = ContinuousClock.now
    let (node, _) = startDaemon(binDir + "/ppnode", nodeArgs(1), env: ["PP_SECRET": secretText, "PP_DISCOVERY_PORT": String(port), "PP_BROADCAST": "127.255.255.255", "PP_DNSSD": "off"], ready: "ppnode ready")
    let ready = ContinuousClock.now
    _ = finished.wait(timeout: .now() + 30)
    let end = done.withLock { $0 } ?? .now
    await client.shutdown()
    node.terminate()
    node.waitUntilExit()
    return (seconds(end - start), seconds(ready - start))
}

/// Signal to "node lost" for a node holding jobs: `SIGKILL` (its sockets close) or
/// `SIGSTOP` (it falls silent: only the heartbeat notices).
func failureDetection(_ signal: Int32) async -> Double {
    let events = EventClock.Events()
    var logger = Logger(label: "ppbench") { _ in EventClock(events: events) }
    logger.logLevel = .info
    let (a, aLine) = startDaemon(binDir + "/ppnode", nodeArgs(1), env: ["PP_SECRET": secretText, "PP_DNSSD": "off"], ready: "ppnode ready")
    let (b, bLine) = startDaemon(binDir + "/ppnode", nodeArgs(1), env: ["PP_SECRET": secretText, "PP_DNSSD": "off"], ready: "ppnode ready")
    func port(_ line: String) -> Int { Int(line.split(separator: " ").first { $0.hasPrefix("address=") }!.split(separator: ":").last!)! }
    let client = JobServer(configuration: .init(workers: 0, nodes: [NodeAddress(host: "127.0.0.1", port: port(aLine)), NodeAddress(host: "127.0.0.1", port: port(bLine))], secret: benchSecret, discover: false, logger: logger))
    for _ in 0..<100 where await client.activeExecutors().count < 2 { try? await Task.sleep(for: .milliseconds(10)) }
    let handles = (0..<6).map { _ in try! client.submit(sleeper, 0.4, as: Double.self) }
    try? await Task.sleep(for: .milliseconds(150))  // both nodes are running jobs
    let start = ContinuousClock.now
    kill(a.processIdentifier, signal)
    var detected: ContinuousClock.Instant?
    for _ in 0..<1000 {
        detected = events.first("node lost", after: start)
        if detected != nil { break }
        try? await Task.sleep(for: .milliseconds(5))
    }
    for h in handles { _ = await h.result }  // every job still ends (on b)
    if signal == SIGSTOP { kill(a.processIdentifier, SIGCONT) }
    await client.shutdown()
    for p in [a, b] {
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }
    return detected.map { seconds($0 - start) } ?? .infinity
}

var discovery: [(total: Double, toReady: Double)] = []
for _ in 0..<options.rounds { discovery.append(await discoveryLatency()) }
discovery.sort { $0.total < $1.total }
var killDetect: [Double] = []
var stopDetect: [Double] = []
for _ in 0..<options.rounds {
    killDetect.append(await failureDetection(SIGKILL))
    stopDetect.append(await failureDetection(SIGSTOP))
}
killDetect.sort()
stopDetect.sort()

// MARK: (g) large arguments

/// (g): `jobs` jobs sharing one JSON string of `size` bytes through a fresh ppnode, with
/// large arguments by digest (the default threshold) and inline (threshold above the
/// size): bytes the node read and seconds, for each.
func largeArguments(jobs: Int, size: Int) async -> [(bytes: Int, seconds: Double)] {
    let (node, log) = startDaemon(binDir + "/ppnode", nodeArgs(options.workers), env: ["PP_SECRET": secretText, "PP_DNSSD": "off", "PP_BROADCAST": "off"], ready: "ppnode ready")
    defer { node.terminate(); node.waitUntilExit() }
    let line = log.split(separator: "\n").first { $0.contains("ppnode ready") }!
    let port = Int(line.split(separator: " ").first { $0.hasPrefix("address=") }!.split(separator: ":").last!)!
    func bytesRead() -> Int {
        let io = (try? String(contentsOfFile: "/proc/\(node.processIdentifier)/io", encoding: .utf8)) ?? ""
        return Int(io.split(separator: "\n").first { $0.hasPrefix("rchar:") }?.split(separator: " ").last ?? "") ?? 0
    }
    let measure = PythonFunction(name: "measure", source: "def measure(big, i):\n    return len(big) + i\n")
    let big = RawJSON(bytes: [UInt8(ascii: "\"")] + [UInt8](repeating: UInt8(ascii: "a"), count: size - 2) + [UInt8(ascii: "\"")])
    var runs: [(bytes: Int, seconds: Double)] = []
    for threshold in [JobServer.Configuration().largeArgumentBytes, Int.max] {
        var configuration = JobServer.Configuration(workers: 0, nodes: [NodeAddress(host: "127.0.0.1", port: port)], secret: benchSecret, discover: false)
        configuration.largeArgumentBytes = threshold
        let server = JobServer(configuration: configuration)
        _ = await server.mapResults(measure, arguments: [try! JobArguments(["x", 0])], as: Int.self)
        let before = bytesRead(), start = ContinuousClock.now
        // One job at a time: each encodes its arguments, as a program would.
        let handles = (0..<jobs).map { i in server.submit(measure, arguments: try! JobArguments([big, i]), as: Int.self) }
        for (i, h) in handles.enumerated() {
            let r = await h.result
            guard (try? r.get()) == size - 2 + i else { node.terminate(); fail("large-argument job \(i): \(r)") }
        }
        runs.append((bytesRead() - before, seconds(ContinuousClock.now - start)))
        await server.shutdown()
    }
    return runs
}
let large = (jobs: 40, size: 4 << 20)
let largeRuns = await largeArguments(jobs: large.jobs, size: large.size)

// MARK: (h) pprun end to end

/// The interpreter's own file (a pyenv shim on PATH costs every start it runs): the
/// contenders of (h) all start from it.
func realPython() -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [options.python, "-c", "import sys; print(sys.executable)"]
    let out = Pipe()
    p.standardOutput = out
    do { try p.run() } catch { fail("cannot run \(options.python): \(error)") }
    let path = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    p.waitUntilExit()
    return path.isEmpty ? options.python : path
}

/// Runs a command to its end, its output to /dev/null; returns its wall time.
func timeProcess(_ executable: String, _ args: [String], env: [String: String]) -> Double {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = args
    var e = ProcessInfo.processInfo.environment
    for (k, v) in env { e[k] = v }
    p.environment = e
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    let start = ContinuousClock.now
    do { try p.run() } catch { fail("cannot start \(executable): \(error)") }
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { fail("\(executable) \(args.joined(separator: " ")) failed (status \(p.terminationStatus))") }
    return seconds(ContinuousClock.now - start)
}

func pprunEndToEnd() -> (local: Double, node: Double, pool: Double, poolAuto: Double) {
    let n = options.pprunJobs, interpreter = realPython()
    let dir = NSTemporaryDirectory() + "/ppbench-h-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let tiny = FileManager.default.createFile(atPath: dir + "/tiny.py", contents: Data("def f(x):\n    return x + 1\n".utf8))
    let pool = FileManager.default.createFile(atPath: dir + "/pool.py", contents: Data("""
        import multiprocessing, signal, sys
        # Started from a thread that blocks signals: without this, Pool's terminate()
        # (SIGTERM to its workers) can wait forever.
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        from tiny import f
        if __name__ == "__main__":
            n, chunks = int(sys.argv[1]), int(sys.argv[2])
            with multiprocessing.Pool(\(options.workers)) as pool:
                out = pool.map(f, range(n), chunksize=chunks) if chunks else pool.map(f, range(n))
            sys.stdout.write("\\n".join(map(str, out)) + "\\n")
        """.utf8))
    guard tiny, pool else { fail("cannot write the programs of (h) in \(dir)") }
    let (node, log) = startDaemon(binDir + "/ppnode", nodeArgs(options.workers), env: ["PP_SECRET": secretText, "PP_DNSSD": "off", "PP_BROADCAST": "off", "PP_PYTHON": interpreter], ready: "ppnode ready")
    defer { node.terminate(); node.waitUntilExit() }
    let line = log.split(separator: "\n").first { $0.contains("ppnode ready") }!
    let address = String(line.split(separator: " ").first { $0.hasPrefix("address=") }!.dropFirst("address=".count))
    let env = ["PP_SECRET": secretText, "PP_DNSSD": "off", "PP_BROADCAST": "off", "PP_PYTHON": interpreter]
    let pprun = binDir + "/pprun", map = ["map", dir + "/tiny.py:f", "--range", "0:\(n)", "--no-discover", "-q"]
    var best = (local: Double.infinity, node: Double.infinity, pool: Double.infinity, poolAuto: Double.infinity)
    for _ in 0..<options.rounds {
        best.local = min(best.local, timeProcess(pprun, map + ["-j", String(options.workers)], env: env))
        best.node = min(best.node, timeProcess(pprun, map + ["-j", "0", "--node", address], env: env))
        best.pool = min(best.pool, timeProcess(interpreter, [dir + "/pool.py", String(n), "1"], env: ["PYTHONPATH": dir]))
        best.poolAuto = min(best.poolAuto, timeProcess(interpreter, [dir + "/pool.py", String(n), "0"], env: ["PYTHONPATH": dir]))
    }
    return (Double(n) / best.local, Double(n) / best.node, Double(n) / best.pool, Double(n) / best.poolAuto)
}
let endToEnd = pprunEndToEnd()

// MARK: Report

print("")
print("(a) \(options.jobs) tiny jobs on \(options.workers) workers")
print("    ParallelPython local mode      \(fmt(oursTiny, 0)) jobs/s")
print("      CPU per job                  \(fmt(tinyCPU.ours * 1e6, 2)) us in this process (loop and caller), \(fmt(tinyCPU.workers * 1e6, 2)) us in the workers")
print("    multiprocessing.Pool(cs=1)     \(fmt(poolTiny, 0)) jobs/s")
print("    ratio ours/Pool                \(fmt(oursTiny / poolTiny, 2))   (target >= 1.00; library local mode >= 250000 jobs/s)")
print("    multiprocessing.Pool, auto     \(fmt(poolTinyAuto, 0)) jobs/s (its own chunks)")
print("(b) sum_primes over \(primeInputs.count) inputs (\(primeInputs.first!)..\(primeInputs.last!))")
print("    serial Python loop             \(fmt(serialCPU, 3)) s (best of \(primeRepetitions))")
print("    ParallelPython, \(options.workers) workers      \(fmt(oursCPU, 3)) s (best of \(primeRepetitions))")
print("    speed-up, \(primeRepetitions) repetitions       \(speedUps.map { fmt($0, 2) }.joined(separator: " "))   min \(fmt(speedUps.min()!, 2)) max \(fmt(speedUps.max()!, 2))   (target >= 1.90 each, on 2 workers)")
print("      each, serial/ours (s)        \(primePairs.joined(separator: " "))")
print("    the machine's own, same runs   \(ceilings.map { fmt($0, 2) }.joined(separator: " "))   (two forked processes, half the inputs each, nothing sent)")
print("    results equal to serial loop   yes (first \(sums.first!))")
print("(c) through one ppnode on loopback, TLS 1.3 keyed by the cluster secret (\(options.workers) workers)")
print("    tiny jobs, pipelined           \(fmt(nodeTiny, 0)) jobs/s   (target >= 50000)")
print("      vs local mode (a)            ratio \(fmt(nodeTiny / oursTiny, 2))   (target >= 0.75)")
print("      vs multiprocessing.Pool      ratio \(fmt(nodeTiny / poolTiny, 2))")
print("    round trip, one at a time      \(latencies(nodeRTTs))   (target p50 <= 100)")
print("      the machine's floor          \(latencies(floorRTTs))   (the same hops, blocking system calls only: Floor.swift)")
print("      multiprocessing.Pool.apply   p50 \(fmt(poolRTT * 1e6, 1)) us, p99 \(fmt(poolRTT99 * 1e6, 1)) us   ratio Pool/ours (p50) \(fmt(poolRTT / nodeRTT, 2))")
print("      local mode, one at a time    \(latencies(localRTTs))")
print("        the machine's floor        \(latencies(localFloorRTTs))   (the caller writes into a worker's pipe: Floor.swift)")
if let ppft = ppftResult?.ppserver {
    print("    ppft 1.7.8 ppserver + client   \(fmt(ppft.rate, 0)) jobs/s pipelined (\(options.ppftJobs) jobs), \(fmt(ppft.rtt * 1e6, 1)) us round trip (\(options.ppftRoundTrips))")
    print("      ratio ours/ppft              \(fmt(nodeTiny / ppft.rate, 1))x pipelined, \(fmt(ppft.rtt / nodeRTT, 1))x round trip")
} else {
    print("    ppft comparison skipped")
}
print("(d) discovery and failure detection (loopback broadcast; median of \(options.rounds), worst in brackets)")
print("    node start to its first job    \(fmt(discovery[discovery.count / 2].total * 1000, 0)) ms [\(fmt(discovery.last!.total * 1000, 0))]   (target <= 1000; process start to ready \(fmt(discovery[discovery.count / 2].toReady * 1000, 0)) ms)")
print("      ppft: beacons every 10 s; a client adds a node only at its next beacon")
print("    kill -9 to jobs rescheduled    \(fmt(killDetect[killDetect.count / 2] * 1000, 1)) ms [\(fmt(killDetect.last! * 1000, 1))]   (target <= 3000)")
print("    SIGSTOP (silent node) detected \(fmt(stopDetect[stopDetect.count / 2] * 1000, 0)) ms [\(fmt(stopDetect.last! * 1000, 0))]   (heartbeat timeout 3 s)")
if let (theirs, ours) = ppftResult {
    func mib(_ bytes: Int) -> String { fmt(Double(bytes) / 1_048_576, 1) + " MiB" }
    print("(e) the unchanged ppft 1.7.8 client, tiny jobs, against ppft's ppserver and ppnode's pp port (\(options.workers) workers each)")
    print("    ppft ppserver                  \(fmt(theirs.rate, 0)) jobs/s pipelined (\(options.ppftJobs) jobs), \(fmt(theirs.rtt * 1e6, 1)) us round trip (\(options.ppftRoundTrips)); server + workers \(mib(theirs.rss))")
    print("    ppnode --pp-port               \(fmt(ours.rate, 0)) jobs/s pipelined (\(options.ppftJobs * 10) jobs), \(fmt(ours.rtt * 1e6, 1)) us round trip (\(options.ppftRoundTrips * 10)); node + workers \(mib(ours.rss))")
    print("    ratio ppnode/ppserver          \(fmt(ours.rate / theirs.rate, 1))x pipelined, \(fmt(theirs.rtt / ours.rtt, 1))x round trip   (target >= 20)")
} else {
    print("(e) ppft client against ppserver and ppnode: skipped")
}
print("(f) fair share: one client keeps half-second jobs queued on the node, another then sends 20 tiny jobs")
print("    its first result after         \(fmt(fairness.first, 2)) job-times   (first come, first served: behind the queue)")
print("    all 20 after                   \(fmt(fairness.all, 2)) job-times   (target: about 1)")
print("(g) large arguments: \(large.jobs) jobs sharing one \(large.size >> 20) MiB argument through one ppnode")
print("    by digest (default)            \(fmt(Double(largeRuns[0].bytes) / 1_048_576, 1)) MiB read by the node, \(fmt(largeRuns[0].seconds, 2)) s")
print("    inline with every job          \(fmt(Double(largeRuns[1].bytes) / 1_048_576, 1)) MiB read by the node, \(fmt(largeRuns[1].seconds, 2)) s")
print("    ratio inline/digest            \(fmt(Double(largeRuns[1].bytes) / Double(largeRuns[0].bytes), 1))x bytes, \(fmt(largeRuns[1].seconds / largeRuns[0].seconds, 1))x time")
print("(h) pprun end to end, \(options.pprunJobs) tiny jobs, whole processes with their start, results to /dev/null")
print("    pprun, \(options.workers) local workers        \(fmt(endToEnd.local, 0)) jobs/s   ratio to Pool(cs=1) \(fmt(endToEnd.local / endToEnd.pool, 2))   (target >= 5)")
print("    pprun through one ppnode       \(fmt(endToEnd.node, 0)) jobs/s   ratio to Pool(cs=1) \(fmt(endToEnd.node / endToEnd.pool, 2))   (target >= 100000 and >= 3)")
print("    multiprocessing.Pool(cs=1)     \(fmt(endToEnd.pool, 0)) jobs/s")
print("    multiprocessing.Pool, auto     \(fmt(endToEnd.poolAuto, 0)) jobs/s (its own chunks)")
