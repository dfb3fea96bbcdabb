import Foundation
import PPTesting
import Testing

let flagsWork = """
    import os, sys, time

    def same(*args, **kwargs):
        return [list(args), kwargs] if kwargs else (args[0] if len(args) == 1 else list(args))

    def kind(x):
        return type(x).__name__

    def pair(a, b):
        return [a, b]

    def sub(a, b):
        return a - b

    def person(name, age):
        return name + ":" + age

    def fails_on_two(x):
        if x == 2:
            raise ValueError("two is not allowed")
        return x

    def fails_on(x):
        if x % 10 == 3:
            raise ValueError("ends in 3")
        return x

    def gate(x):
        # "first" waits until "second" has run: only --unordered prints second first.
        marker = os.environ["GATE"]
        if x == "first":
            while not os.path.exists(marker):
                time.sleep(0.01)
            # Apart from second's result by more than a loaded loop's turn.
            time.sleep(0.3)
        else:
            open(marker, "w").close()
        return x

    def flaky(x):
        # Fails the first time it sees each input, succeeds the second.
        path = os.path.join(os.environ["STATE"], "tried-%s" % x)
        if not os.path.exists(path):
            open(path, "w").close()
            raise RuntimeError("first try of %s" % x)
        return x

    def logged(x):
        with open(os.path.join(os.environ["STATE"], "ran"), "a") as f:
            f.write("%s\\n" % x)
        if x == 2 and not os.path.exists(os.path.join(os.environ["STATE"], "fixed")):
            raise ValueError("not yet")
        return x

    def missing_module(x):
        import nosuchmodule_pp
        return x

    def boom(x):
        raise ValueError("boom")

    def nan(x):
        return float("nan")

    def numpy_values(x):
        import numpy
        return [numpy.int64(x), numpy.arange(3) * x, numpy.float32(0.5)]

    def pid(x):
        return os.getpid()

    def started(x):
        # Marks the start; inputs from 5 on then block until the worker is killed.
        open(os.path.join(os.environ["STATE"], "started-%d" % x), "w").close()
        if x >= 5:
            time.sleep(3600)
        return x

    def nap(x):
        time.sleep(0.002)
        return x
    """

/// The test's work file in a fresh directory.
private func workFile() throws -> (TemporaryDirectory, String) {
    let dir = try TemporaryDirectory()
    return (dir, try dir.write("work.py", flagsWork))
}

@Suite("pprun map inputs, outputs and behaviour")
struct MapFlagsTests {
    @Test func linesNullStringsAndBOM() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let lines = try runProcess(pprun, ["map", file + ":kind", "--input", "-", "--lines"], stdin: "a b.py\n2024\ntrue\n[1,2]\r\n")
        #expect(lines.status == 0, "\(lines.stderr)")
        #expect(lines.lines == Array(repeating: "\"str\"", count: 4))
        let same = try runProcess(pprun, ["map", file + ":same", "--input", "-", "--lines"], stdin: "\u{FEFF}x y\n[1,2]\r\n")
        #expect(same.lines == ["\"x y\"", "\"[1,2]\""])
        let null = try runProcess(pprun, ["map", file + ":same", "--input", "-", "-0"], stdin: "a\nb\u{0}c d\u{0}")
        #expect(null.lines == ["\"a\\nb\"", "\"c d\""], "\(null.stderr)")
        let strings = try runProcess(pprun, ["map", file + ":kind", "--strings", "2024", "true", "[1]", "null"])
        #expect(strings.lines == Array(repeating: "\"str\"", count: 4))
        let guessed = try runProcess(pprun, ["map", file + ":kind", "2024", "true", "x"])
        #expect(guessed.lines == ["\"int\"", "\"bool\"", "\"str\""])
        let bom = try runProcess(pprun, ["map", file + ":same", "--input", "-"], stdin: "\u{FEFF}5\n")
        #expect(bom.lines == ["5"], "\(bom.stderr)")
    }

    @Test func spreadIsOneRuleForArgsAndLines() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let arg = try runProcess(pprun, ["map", file + ":pair", "[1,2]"])
        #expect(arg.lines == ["[1,2]"], "\(arg.stderr)")
        let line = try runProcess(pprun, ["map", file + ":pair", "--input", "-"], stdin: "[1,2]\n")
        #expect(line.lines == ["[1,2]"])
        let noSpread = try runProcess(pprun, ["map", file + ":kind", "--no-spread", "[1,2]"])
        #expect(noSpread.lines == ["\"list\""])
        let noSpreadLine = try runProcess(pprun, ["map", file + ":kind", "--no-spread", "--input", "-"], stdin: "[1,2]\n")
        #expect(noSpreadLine.lines == ["\"list\""])
    }

    @Test func csvAndKwargs() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let csv = try dir.write("people.csv", "\u{FEFF}name,age\r\nann,3\n\"b, \"\"c\"\"\",4\n\"multi\nline\",5\n")
        let r = try runProcess(pprun, ["map", file + ":person", "--input", csv, "--csv"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == ["\"ann:3\"", "\"b, \\\"c\\\":4\"", "\"multi\\nline:5\""])
        let short = try runProcess(pprun, ["map", file + ":person", "--input", "-", "--csv"], stdin: "name,age\nann\n")
        #expect(short.status == 1)
        #expect(short.stderr.contains("stdin:2: ann: has 1 fields, the header has 2"), "\(short.stderr)")
        let kwargs = try runProcess(pprun, ["map", file + ":sub", "--kwargs", "{\"b\":1,\"a\":5}", "[7,2]"])
        #expect(kwargs.lines == ["4", "5"], "\(kwargs.stderr)")
        let object = try runProcess(pprun, ["map", file + ":kind", "{\"b\":1}"])
        #expect(object.lines == ["\"dict\""])
        let bad = try runProcess(pprun, ["map", file + ":sub", "--kwargs", "{\"c\":1}"])
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("unexpected keyword argument 'c'"), "\(bad.stderr)")
    }

    @Test func unorderedPrintsAsJobsFinish() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let env = ["GATE": dir.path + "/gate"]
        let unordered = try runProcess(pprun, ["map", file + ":gate", "-j", "2", "--unordered", "first", "second"], environment: env)
        #expect(unordered.status == 0, "\(unordered.stderr)")
        #expect(unordered.lines == ["\"second\"", "\"first\""])
        try FileManager.default.removeItem(atPath: dir.path + "/gate")
        let ordered = try runProcess(pprun, ["map", file + ":gate", "-j", "2", "first", "second"], environment: env)
        #expect(ordered.lines == ["\"first\"", "\"second\""])
    }

    @Test func tagPrintsInputsWithValuesAndErrors() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let r = try runProcess(pprun, ["map", file + ":fails_on_two", "--tag", "1", "2", "x"])
        #expect(r.status == 1)
        #expect(r.lines == [
            "{\"input\":1,\"value\":1}",
            "{\"input\":2,\"error\":{\"kind\":\"python exception\",\"message\":\"two is not allowed\",\"type\":\"ValueError\"}}",
            "{\"input\":\"x\",\"value\":\"x\"}",
        ])
        let bad = try runProcess(pprun, ["map", file + ":same", "--with-input", "--input", "-"], stdin: "{oops\n")
        #expect(bad.lines == ["{\"input\":\"{oops\",\"error\":{\"kind\":\"bad arguments\",\"message\":\"not valid JSON: each input line must be one JSON value, e.g. 42, \\\"text\\\" or [1, 2] (--lines: each line is one string)\",\"type\":null}}"])
    }

    @Test func joblogAndResume() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let log = dir.path + "/run.log"
        let env = ["STATE": dir.path]
        let first = try runProcess(pprun, ["map", file + ":logged", "--range", "0:5", "--joblog", log], environment: env)
        #expect(first.status == 1)
        #expect(first.lines == ["0", "1", "3", "4"])
        let records = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(records.count == 5)
        #expect(Set(records.map { $0["seq"] as! Int }) == [1, 2, 3, 4, 5])
        let failed = records.filter { $0["status"] as? String == "failed" }
        #expect(failed.count == 1)
        #expect(failed.first?["input"] as? Int == 2)
        #expect((failed.first?["error"] as? String)?.contains("ValueError: not yet") == true)
        #expect(records.allSatisfy { $0["node"] as? String == "local" && $0["attempts"] as? Int == 1 && $0["seconds"] is Double && $0["ended"] is Double })

        #expect(FileManager.default.createFile(atPath: dir.path + "/fixed", contents: nil))
        let resumed = try runProcess(pprun, ["map", file + ":logged", "--range", "0:5", "--joblog", log, "--resume"], environment: env)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.lines == ["2"])
        let ran = try String(contentsOfFile: dir.path + "/ran", encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(ran.sorted() == ["0", "1", "2", "2", "3", "4"])
        #expect(try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").count == 6)

        let noLog = try runProcess(pprun, ["map", file + ":logged", "1", "--resume"])
        #expect(noLog.status == 64)
        #expect(noLog.stderr.contains("--resume needs --joblog FILE"))
    }

    @Test func retriesRunFailedJobsAgain() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let log = dir.path + "/run.log"
        let retried = try runProcess(pprun, ["map", file + ":flaky", "--range", "0:4", "--retries", "1", "--joblog", log], environment: ["STATE": dir.path])
        #expect(retried.status == 0, "\(retried.stderr)")
        #expect(retried.lines == ["0", "1", "2", "3"])
        #expect(!retried.stderr.contains("first try"))
        #expect(try String(contentsOfFile: log, encoding: .utf8).components(separatedBy: "\"attempts\":2").count == 5)
        let state = try TemporaryDirectory()
        defer { state.remove() }
        let once = try runProcess(pprun, ["map", file + ":flaky", "--range", "0:4"], environment: ["STATE": state.path])
        #expect(once.status == 1)
        #expect(once.lines.isEmpty)
    }

    @Test func haltOnErrorAndMaxFailures() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let halt = try runProcess(pprun, ["map", file + ":fails_on", "--range", "0:1000", "-j", "1", "--halt-on-error"])
        #expect(halt.status == 1)
        #expect(halt.lines == ["0", "1", "2"])
        #expect(halt.stderr.contains("pprun: stopped after 1 failed job (--max-failures 1); 4 of 1000 inputs done"), "\(halt.stderr)")
        let two = try runProcess(pprun, ["map", file + ":fails_on", "--range", "0:1000", "-j", "1", "--max-failures", "2"])
        #expect(two.status == 1)
        #expect(two.lines == ["0", "1", "2", "4", "5", "6", "7", "8", "9", "10", "11", "12"])
        #expect(two.stderr.contains("stopped after 2 failed jobs"))
    }

    @Test func repeatedErrorsAreSummarisedAndInputsCut() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let r = try runProcess(pprun, ["map", file + ":missing_module", "--range", "0:50"])
        #expect(r.status == 1)
        #expect(r.stderr.components(separatedBy: "job failed for input").count - 1 == 3)
        #expect(r.stderr.components(separatedBy: "Traceback (most recent call last)").count - 1 == 1)
        #expect(r.stderr.contains("pprun: and 47 more jobs failed with the same ModuleNotFoundError: No module named 'nosuchmodule_pp'"), "\(r.stderr)")
        #expect(r.stderr.contains("50 of 50 jobs failed"))

        let long = String(repeating: "x", count: 1_000_000)
        let cut = try runProcess(pprun, ["map", file + ":boom", "--input", "-", "--lines"], stdin: long + "\n")
        #expect(cut.status == 1)
        #expect(cut.stderr.contains("job failed for input stdin:1: " + String(repeating: "x", count: 100) + "... (999900 more characters): python exception: ValueError: boom"), "\(cut.stderr.prefix(300))")
        #expect(cut.stderr.utf8.count < 2000)
        let badLine = try runProcess(pprun, ["map", file + ":same", "--input", "-"], stdin: "{" + long + "\n")
        #expect(badLine.stderr.utf8.count < 2000)
        #expect(badLine.stderr.contains("more characters): not valid JSON"))
    }

    @Test func nanAndNumpy() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let nan = try runProcess(pprun, ["map", file + ":nan", "1"])
        #expect(nan.status == 1)
        #expect(nan.stderr.contains("NaN and infinity have no JSON form: return None or a string such as 'nan' for them"), "\(nan.stderr)")
        guard (try? runPython("import numpy; print('yes')")) == ["yes"] else { return }  // numpy is optional
        let np = try runProcess(pprun, ["map", file + ":numpy_values", "2"])
        #expect(np.status == 0, "\(np.stderr)")
        #expect(np.lines == ["[2,[0,2,4],0.5]"])
    }

    @Test func closedStdoutStopsTheRun() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        // Inputs 0-4 return at once; from 5 on each job blocks, so no result is ever
        // written after the fifth: pprun must see that head closed the pipe without a
        // write failing. Bound: jobs started = the 5 printed + at most one per worker
        // (each worker's first job from 5 on blocks it, so none behind it starts).
        let script = "set -o pipefail; '\(pprun)' map '\(file):started' --range 0:1000 -j 2 | head -n 5; echo \"status=${PIPESTATUS[0]}\" >&2"
        let r = try runProcess("/bin/bash", ["-c", script], environment: ["STATE": dir.path])
        #expect(r.lines == ["0", "1", "2", "3", "4"])
        #expect(r.stderr.contains("status=141"), "\(r.stderr)")
        let started = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix("started-") }
        #expect(Set(0..<5).isSubset(of: Set(started.map { Int($0.dropFirst(8))! })))
        #expect(started.count <= 5 + 2, "\(started.sorted())")

        // Fast jobs: a write fails (EPIPE) long before the 100,000 inputs are done.
        let fast = try runProcess("/bin/bash", ["-c", "set -o pipefail; '\(pprun)' map '\(file):same' --range 0:100000 -j 2 | head -n 1; echo \"status=${PIPESTATUS[0]}\" >&2"])
        #expect(fast.lines == ["0"])
        #expect(fast.stderr.contains("status=141"), "\(fast.stderr)")
    }

    @Test func quietLogLevelAndSilenceWhenOff() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        // A discovery port of its own: no beacon of another test's node is heard.
        let port = String(Int.random(in: 40_000..<60_000))
        let off = try runProcess(pprun, ["map", file + ":same", "1"], environment: ["PP_DNSSD": "off", "PP_BROADCAST": "off", "PP_DISCOVERY_PORT": port])
        #expect(off.status == 0)
        #expect(off.stderr.isEmpty, "\(off.stderr)")
        let info = try runProcess(pprun, ["map", file + ":same", "1"], environment: ["PP_DNSSD": "off", "PP_LOG_LEVEL": "info"])
        #expect(info.stderr.contains("DNS-SD off (PP_DNSSD=off)"), "\(info.stderr)")
        let quiet = try runProcess(pprun, ["map", file + ":same", "1", "-q"], environment: ["PP_LOG_LEVEL": "info"])
        #expect(quiet.stderr.isEmpty, "\(quiet.stderr)")
        #expect(quiet.lines == ["1"])
        let bad = try runProcess(pprun, ["map", file + ":same", "1"], environment: ["PP_LOG_LEVEL": "loud"])
        #expect(bad.status == 64)
        #expect(bad.stderr.contains("PP_LOG_LEVEL='loud' is not a level: give trace, debug, info, notice, warning, error or critical"))
        let one = try runProcess(pprun, ["map", file + ":pid", "--range", "0:20", "-j", "1"])
        #expect(Set(one.lines).count == 1, "\(one.stdout)")
    }

    @Test func negativeNumbersNeedDoubleDash() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let r = try runProcess(pprun, ["map", file + ":same", "-5"])
        #expect(r.status == 64)
        #expect(r.stderr.contains("-5 was taken for an option; put -- before ARGs that start with -"), "\(r.stderr)")
        let ok = try runProcess(pprun, ["map", file + ":same", "--", "-5", "-2.5"])
        #expect(ok.lines == ["-5", "-2.5"], "\(ok.stderr)")
    }

    @Test func keywordArgumentsAndJoblogThroughANode() throws {
        let secret = "map-flags-node-secret-0123456789"
        let node = try NodeProcess(secret: secret)
        defer { node.stop() }
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let csv = try dir.write("people.csv", "name,age\nann,3\nbob,4\n")
        let log = dir.path + "/run.log"
        let remote = ["-j", "0", "--no-discover", "--node", node.address, "--joblog", log]
        let r = try runProcess(pprun, ["map", file + ":person", "--input", csv, "--csv", "--tag"] + remote, environment: ["PP_SECRET": secret])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == ["{\"input\":{\"age\":\"3\",\"name\":\"ann\"},\"value\":\"ann:3\"}", "{\"input\":{\"age\":\"4\",\"name\":\"bob\"},\"value\":\"bob:4\"}"])
        #expect(try String(contentsOfFile: log, encoding: .utf8).components(separatedBy: "\"node\":\"\(node.address)\"").count == 3)
        let kwargs = try runProcess(pprun, ["map", file + ":sub", "--kwargs", "{\"a\":5,\"b\":1}"] + remote, environment: ["PP_SECRET": secret])
        #expect(kwargs.lines == ["4"], "\(kwargs.stderr)")
    }

    @Test func unicodeEscapedInputIsDecoded() throws {
        let (dir, file) = try workFile()
        defer { dir.remove() }
        let r = try runProcess(pprun, ["map", file + ":same", "--input", "-"], stdin: "\"\\u00e9\\ud83d\\ude00\"\n")
        #expect(r.lines == ["\"é😀\""], "\(r.stderr)")
    }
}

@Suite("pprun progress bar")
struct ProgressBarTests {
    /// Runs pprun with stderr on a pseudo-terminal `columns` wide (made by script(1)),
    /// stdout to a file; returns what the terminal got.
    private func terminalOutput(_ arguments: [String], columns: Int, in dir: TemporaryDirectory) throws -> (status: Int32, stdout: String, terminal: String) {
        let command = "stty cols \(columns) rows 24; exec '\(pprun)' " + arguments.map { "'\($0)'" }.joined(separator: " ") + " > '\(dir.path)/out'"
        let r = try runProcess("/usr/bin/script", ["-qefc", command, "/dev/null"], environment: ["PP_DNSSD": "off"])
        return (r.status, try String(contentsOfFile: dir.path + "/out", encoding: .utf8), r.stdout)
    }

    @Test func narrowTerminalKeepsTheBarOnOneLine() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", flagsWork)
        let r = try terminalOutput(["map", file + ":nap", "--range", "0:300", "-j", "2", "--progress", "--no-discover"], columns: 30, in: dir)
        #expect(r.status == 0, "\(r.terminal)")
        #expect(r.stdout.split(separator: "\n").count == 300)
        let text = r.terminal.replacingOccurrences(of: "\u{1B}[2K", with: "")
        let draws = text.split(omittingEmptySubsequences: true) { $0 == "\r" || $0 == "\n" }
        #expect(draws.contains { $0.hasPrefix("[") && $0.contains("300/300") }, "\(draws)")
        #expect(draws.allSatisfy { $0.count <= 29 }, "\(draws)")
        // One line in all: the summary; redraws stay on the bar's line.
        #expect(text.utf8.filter { $0 == 10 }.count == 1, "\(text.debugDescription)")
        #expect(draws.last?.hasPrefix("pprun: 300 jobs in") == true, "\(draws)")
    }
}
