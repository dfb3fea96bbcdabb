import Foundation
import PPTesting
import Testing

let pprun = builtCommand("pprun")

let work = """
    import sys, time

    def inc(x):
        return x + 1

    def kind(x):
        return type(x).__name__

    def pair(a, b):
        return [a, b]

    def fails_on_two(x):
        if x == 2:
            raise ValueError("two is not allowed")
        return x

    def shout(x):
        print("working on", x)
        return x

    def nap(s):
        time.sleep(s)
        return s
    """

@Suite("pprun command")
struct PPRunTests {
    @Test func sumPrimesMatchesSerialPython() throws {
        let example = repositoryRoot + "/examples/sum_primes.py"
        let r = try runProcess(pprun, ["map", example + ":sum_primes", "--range", "100000:100800:100", "--workers", "2"])
        #expect(r.status == 0, "\(r.stderr)")
        let serial = try runPython("import sys; sys.path.insert(0, '\(repositoryRoot)/examples')\nfrom sum_primes import sum_primes\nfor n in range(100000, 100800, 100): print(sum_primes(n))")
        #expect(r.lines == serial)
        #expect(r.lines.first == "454396537")
    }

    @Test func argsAreJSONOrStrings() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(pprun, ["map", file + ":kind", "--no-spread", "1", "2.5", "abc", "\"quoted\"", "[1,2]", "{\"a\":1}", "null", "true"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == ["\"int\"", "\"float\"", "\"str\"", "\"str\"", "\"list\"", "\"dict\"", "\"NoneType\"", "\"bool\""])
    }

    @Test func rangeAndInputLines() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(pprun, ["map", file + ":inc", "--range", "10:0:-3"])
        #expect(r.lines == ["11", "8", "5", "2"])
        let input = try dir.write("pairs.jsonl", "[1, 2]\n[\"a\", null]\n\n[[1], {\"k\": 2}]\n")
        let p = try runProcess(pprun, ["map", file + ":pair", "--input", input])
        #expect(p.status == 0, "\(p.stderr)")
        #expect(p.lines == ["[1,2]", "[\"a\",null]", "[[1],{\"k\":2}]"])
        let s = try runProcess(pprun, ["map", file + ":inc", "--input", "-"], stdin: (1...2000).map(String.init).joined(separator: "\n"))
        #expect(s.lines == (2...2001).map(String.init))
    }

    @Test func failingJobReportsTracebackOthersRun() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(pprun, ["map", file + ":fails_on_two", "1", "2", "3"])
        #expect(r.status == 1)
        #expect(r.lines == ["1", "3"])
        #expect(r.stderr.contains("job failed for input 2: python exception: ValueError: two is not allowed"))
        #expect(r.stderr.contains("Traceback (most recent call last):"))
        #expect(r.stderr.contains("line 14, in fails_on_two"))
        #expect(r.stderr.contains("1 of 3 jobs failed"))
    }

    @Test func jobOutputGoesToStderr() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(pprun, ["map", file + ":shout", "7"])
        #expect(r.lines == ["7"])
        #expect(r.stderr.contains("working on 7"))
    }

    @Test func syntaxErrorRunsNoJob() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let marker = dir.path + "/ran"
        let file = try dir.write("broken.py", "open('\(marker)', 'w').write('x')\ndef f(x:\n    return x\n")
        let r = try runProcess(pprun, ["map", file + ":f", "1", "2"])
        #expect(r.status == 2)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr.contains("cannot load"))
        #expect(r.stderr.contains("SyntaxError: '(' was never closed"))
        #expect(r.stderr.contains("broken.py\", line 2"))
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    @Test func missingFunctionName() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(pprun, ["map", file + ":nope", "1"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("defines no function named 'nope'"))
        #expect(r.stderr.contains("inc"))
        let noFile = try runProcess(pprun, ["map", dir.path + "/absent.py:f", "1"])
        #expect(noFile.status == 2)
        #expect(noFile.stderr.contains("cannot read"))
        #expect(noFile.stderr.contains("No such file or directory"))
    }

    @Test(arguments: [
        (["map", "x.py:f"], "no inputs"),
        (["map", "x.py:f", "1", "--range", "0:3"], "one way only"),
        (["map", "x.py:f", "--range", "1:x"], "is not START:STOP[:STEP]"),
        (["map", "x.py:f", "--range", "0:9:0"], "step must not be 0"),
        (["map", "x.py:f", "1", "--workers=-1"], "--workers must be 0 or more"),
        (["map", "x.py:f", "1", "--workers", "0", "--no-discover"], "leaves nothing to run jobs"),
        (["map", "x.py:f", "1", "--node", "host:notaport"], "is not a node address"),
        (["map", "x.py:f", "1", "--timeout", "0"], "--timeout must be a positive"),
        (["map", "x.py:f", "1", "--bogus"], "Unknown option '--bogus'"),
        (["map", "x.py:f", "1", "--lines"], "--lines, -0 and --csv describe --input"),
        (["map", "x.py:f", "--input", "-", "--lines", "--csv"], "give one of --lines, -0 and --csv"),
        (["map", "x.py:f", "--range", "0:3", "--strings"], "--strings is for ARGs; for --input use --lines"),
        (["map", "x.py:f", "1", "--retries=-1"], "--retries must be 0 or more"),
        (["map", "x.py:f", "1", "--max-failures", "0"], "--max-failures must be 1 or more"),
        (["map", "x.py:f", "1", "--halt-on-error", "--max-failures", "2"], "give --halt-on-error or --max-failures N, not both"),
        (["frobnicate"], "Unexpected argument 'frobnicate'"),
    ])
    func badFlags(args: [String], message: String) throws {
        let r = try runProcess(pprun, args)
        #expect(r.status == 64, "\(r.stderr)")
        #expect(r.stderr.contains(message), "\(r.stderr)")
    }

    @Test func badDiscoveryEnvironment() throws {
        let broadcast = try runProcess(pprun, ["map", "x.py:f", "1"], environment: ["PP_BROADCAST": "lan"])
        #expect(broadcast.status == 64, "\(broadcast.stderr)")
        #expect(broadcast.stderr.contains("PP_BROADCAST='lan' is neither 'off', an IPv4 address nor an interface"), "\(broadcast.stderr)")
        let port = try runProcess(pprun, ["map", "x.py:f", "1"], environment: ["PP_DISCOVERY_PORT": "99999"])
        #expect(port.status == 64, "\(port.stderr)")
        #expect(port.stderr.contains("PP_DISCOVERY_PORT='99999' is not a UDP port"), "\(port.stderr)")
    }

    @Test func badJSONInputLines() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(pprun, ["map", file + ":inc", "--input", "-"], stdin: "1\n{oops\n3\n[1, \n")
        #expect(r.status == 1)
        #expect(r.lines == ["2", "4"])
        #expect(r.stderr.contains("input stdin:2: {oops: not valid JSON"))
        #expect(r.stderr.contains("input stdin:4: [1,: not valid JSON"))
        #expect(r.stderr.contains("2 of 4 jobs failed"))
        let missing = try runProcess(pprun, ["map", file + ":inc", "--input", dir.path + "/absent.jsonl"])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("cannot open --input"))
    }

    @Test func timeoutAndStats() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(pprun, ["map", file + ":nap", "0.01", "30", "0.02", "--timeout", "0.5", "--stats", "--workers", "2"])
        #expect(r.status == 1)
        #expect(r.lines == ["0.01", "0.02"])
        #expect(r.stderr.contains("job failed for input 30: timeout: the job ran longer than its timeout of 0.5 s"))
        #expect(r.stderr.contains("Job execution statistics:"))
        #expect(r.stderr.contains("| local"))
    }

    @Test func helpHasExamples() throws {
        let r = try runProcess(pprun, ["map", "--help"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("--range"))
        let top = try runProcess(pprun, ["--help"])
        #expect(top.stdout.contains("Examples:"))
    }
}
