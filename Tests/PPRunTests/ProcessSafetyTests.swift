import Foundation
import PPTesting
import Testing

let lifeCycle = """
    import os, signal, subprocess, sys, time

    def nap(s):
        time.sleep(s)
        return s

    def record(pidfile, pid):
        # The pid and its start time (/proc/PID/stat field 22), written then renamed:
        # pids are reused quickly under a loaded suite (pid_max may be 32768).
        with open("/proc/%d/stat" % pid) as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
        with open(pidfile + ".tmp", "w") as f:
            f.write("%d %s" % (pid, start))
        os.rename(pidfile + ".tmp", pidfile)

    def fork_and_return(pidfile):
        # A child that holds the worker's pipes for 60 s.
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        record(pidfile, child)
        return "forked"

    def popen_and_return(pidfile):
        p = subprocess.Popen(["sleep", "60"])
        record(pidfile, p.pid)
        return "started"

    def fork_then_sleep(pidfile):
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        record(pidfile, child)
        time.sleep(60)
        return "slept"

    def secret():
        return os.environ.get("PP_SECRET")

    def uses_helper(x):
        import helper
        return helper.double(x)
    """

/// The process written in `file` (its pid and start time, so that a later process
/// that reused the pid is not taken for it).
func processInFile(_ file: String) -> ProcessIdentity? {
    guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return nil }
    let fields = text.split(separator: " ")
    guard fields.count == 2, let pid = Int32(fields[0]), let start = UInt64(fields[1]) else { return nil }
    return ProcessIdentity(pid: pid, startTime: start)
}

/// Waits (60 s at most) until `run` has `count` child processes (its workers), and
/// returns them, read from /proc before anything is signalled.
func workersOf(_ run: BackgroundProcess, count: Int) -> [ProcessIdentity] {
    var workers: [ProcessIdentity] = []
    _ = waitFor(seconds: 60) {
        workers = childProcesses(of: run.pid)
        return workers.count == count
    }
    return workers
}

@Suite("pprun leaves no process behind")
struct ProcessSafetyTests {
    @Test func sigtermKillsEveryWorker() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("life.py", lifeCycle)
        let run = try BackgroundProcess(pprun, ["map", file + ":nap", "60", "60", "60", "--workers", "2", "--no-discover"])
        // Both workers started (read from /proc before the signal).
        let workers = workersOf(run, count: 2)
        defer {
            run.stop()
            for w in workers { w.killIfRunning() }
        }
        #expect(workers.count == 2)
        run.signal(SIGTERM)
        #expect(run.wait() == 143)
        #expect(run.stderr.contains("interrupted: 0 of 3 done"), "\(run.stderr)")
        sleep(3)
        #expect(workers.filter(\.isRunning).isEmpty, "workers left running: \(workers.filter(\.isRunning))")
    }

    @Test func sigintAndSighupExitStatuses() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("life.py", lifeCycle)
        for (signal, status) in [(SIGINT, Int32(130)), (SIGHUP, Int32(129))] {
            let run = try BackgroundProcess(pprun, ["map", file + ":nap", "60", "--workers", "1", "--no-discover"])
            let workers = workersOf(run, count: 1)
            defer {
                run.stop()
                for w in workers { w.killIfRunning() }
            }
            #expect(workers.count == 1)
            run.signal(signal)
            #expect(run.wait() == status)
            #expect(run.stderr.contains("interrupted: 0 of 1 done"), "\(run.stderr)")
            #expect(waitFor(seconds: 3) { workers.allSatisfy { !$0.isRunning } })
        }
    }

    @Test(arguments: ["fork_and_return", "popen_and_return"])
    func aChildHoldingThePipesDoesNotStallTheRun(function: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("life.py", lifeCycle)
        let pidfile = dir.path + "/child.pid"
        defer { processInFile(pidfile)?.killIfRunning() }
        let started = Date()
        // runProcess reads pprun's stdout and stderr to their end: the forked child,
        // which holds the worker's copies of them, must be gone too.
        let r = try runProcess(pprun, ["map", file + ":" + function, pidfile, "--workers", "1", "--no-discover"])
        let elapsed = Date().timeIntervalSince(started)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines.count == 1)
        #expect(elapsed < 50, "the run waited for the 60 s child (\(elapsed) s)")
        let child = try #require(processInFile(pidfile))
        #expect(!child.isRunning, "the job's child \(child) outlived the run")
    }

    @Test func timeoutOfAJobWhoseChildHoldsThePipes() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("life.py", lifeCycle)
        let pidfile = dir.path + "/child.pid"
        defer { processInFile(pidfile)?.killIfRunning() }
        let started = Date()
        let r = try runProcess(pprun, ["map", file + ":fork_then_sleep", pidfile, "--timeout", "1", "--workers", "1", "--no-discover"])
        let elapsed = Date().timeIntervalSince(started)
        #expect(r.status == 1)
        #expect(r.stderr.contains("timeout: the job ran longer than its timeout of 1 s"), "\(r.stderr)")
        #expect(elapsed < 50, "the timeout waited for the 60 s child (\(elapsed) s)")
    }

    @Test func workersDoNotSeeTheSecret() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("life.py", lifeCycle)
        let r = try runProcess(pprun, ["map", file + ":secret", "--input", "-", "--workers", "1", "--no-discover"], stdin: "[]\n", environment: ["PP_SECRET": "do-not-leak-0123456789"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == ["null"])
    }

    @Test func modulesOfTheWorkingDirectoryDoNotShadowTheStandardLibrary() throws {
        let code = try TemporaryDirectory(), cwd = try TemporaryDirectory()
        defer { code.remove(); cwd.remove() }
        let file = try code.write("life.py", lifeCycle)
        try code.write("helper.py", "def double(x):\n    return 2 * x\n")
        try cwd.write("json.py", "print('SHADOWED json')\nraise SystemExit('the json.py of the cwd was imported')\n")
        try cwd.write("struct.py", "print('SHADOWED struct')\nraise SystemExit('the struct.py of the cwd was imported')\n")
        let r = try runProcess(pprun, ["map", file + ":uses_helper", "1", "2", "--workers", "1", "--no-discover"], directory: cwd.path)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == ["2", "4"])
        #expect(!r.stderr.contains("SHADOWED") && !r.stdout.contains("SHADOWED"), "\(r.stderr)")
    }
}
