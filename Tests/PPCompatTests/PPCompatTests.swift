// Parallel Python compatibility: ppft 1.7.8 from PyPI, unchanged but for its server
// address and secret, against ppnode and against ppft's own ppserver.

import Foundation
import PPTesting
import Testing

/// A venv with ppft 1.7.8 and dill from PyPI, made once under .build.
func ppftVenv() throws -> String {
    let venv = repositoryRoot + "/.build/ppft-venv"
    if !FileManager.default.fileExists(atPath: venv + "/bin/ppserver") {
        let r = try runProcess("/bin/sh", ["-c", "python3 -m venv '\(venv)' && '\(venv)/bin/pip' install -q ppft==1.7.8 dill pathos"])
        guard r.status == 0 else { throw CompatError(text: "cannot install ppft from PyPI: \(r.stderr)") }
    }
    return venv
}

struct CompatError: Error, CustomStringConvertible {
    var text: String
    var description: String { self.text }
}

/// ppft's own network server on a free port, stopped (with its workers) by `stop()`.
final class PPServerProcess: @unchecked Sendable {
    let process = Process()
    let port: Int

    init(venv: String, secret: String, workers: Int) throws {
        self.port = Int.random(in: 50_000...59_000)
        self.process.executableURL = URL(fileURLWithPath: venv + "/bin/ppserver")
        self.process.arguments = ["-p", String(self.port), "-i", "127.0.0.1", "-w", String(workers), "-s", secret]
        self.process.standardOutput = FileHandle.nullDevice
        self.process.standardError = FileHandle.nullDevice
        try self.process.run()
        // Ready when the port accepts.
        for _ in 0..<200 {
            if (try? runProcess("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(self.port)"]))?.status == 0 { return }
            usleep(50_000)
        }
        self.stop()
        throw CompatError(text: "ppserver did not start on port \(self.port)")
    }

    func stop() {
        // ppserver ignores SIGTERM; its workers are its children: kill them by pid too.
        let children = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == self.process.processIdentifier
        }
        kill(self.process.processIdentifier, SIGKILL)
        for pid in children { kill(pid, SIGKILL) }
        self.process.waitUntilExit()
    }
}

let compatSecret = "compat-secret-0123456789abcdef"

/// An example of ppft's own with only the server address and the secret changed.
func patchedExample(_ name: String, venv: String, port: Int, into dir: TemporaryDirectory) throws -> String {
    let source = try String(contentsOfFile: venv + "/lib/python3.11/site-packages/ppft/tests/\(name).py", encoding: .utf8)
    let patched = source
        .replacingOccurrences(of: "\nppservers = ()", with: "\nppservers = (\"127.0.0.1:\(port)\",)")
        .replacingOccurrences(of: "ppservers=ppservers)", with: "ppservers=ppservers, secret=\"\(compatSecret)\")")
    return try dir.write("\(name)-\(port).py", patched)
}

/// Whether ppft's quicksort example printed 30 numbers in increasing order (its input
/// is random, so the numbers themselves differ from run to run).
func quicksortPrintedSortedNumbers(_ output: String) -> Bool {
    let line = output.split(separator: "\n").first { $0.hasPrefix("first 30 numbers in increasing order: ") }
    let numbers = line.map { $0.drop { $0 != "[" }.dropFirst().dropLast().split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } } ?? []
    return numbers.count == 30 && numbers == numbers.sorted()
}

/// Output without what depends on time or on the server (timings, statistics).
func comparable(_ output: String) -> [String] {
    output.split(separator: "\n").map(String.init).filter { line in
        !(line.contains("Time elapsed") || line.contains("|") || line.contains("job count") || line.contains("Job execution statistics")
            || line.contains("active tasks") || line.hasPrefix("Starting pp"))
    }
}

@Suite("Parallel Python (ppft 1.7.8) compatibility", .serialized)
struct PPCompatTests {
    @Test func ppftExamplesPrintTheSameAgainstPpnodeAndPpserver() throws {
        let venv = try ppftVenv()
        // The node's workers use the venv's Python, which has dill (as ppserver's do).
        let node = try NodeProcess(["--pp-port", "0", "--workers", "2", "--python", venv + "/bin/python"], secret: compatSecret)
        defer { node.stop() }
        let server = try PPServerProcess(venv: venv, secret: compatSecret, workers: 2)
        defer { server.stop() }
        let port = try #require(node.ppPort, "\(node.logText)")
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        for example in ["sum_primes", "sum_primes_functor", "callback", "auto_diff", "reverse_md5", "quicksort"] {
            let ours = try runProcess(venv + "/bin/python", [try patchedExample(example, venv: venv, port: port, into: dir), "0"], directory: dir.path)
            let theirs = try runProcess(venv + "/bin/python", [try patchedExample(example, venv: venv, port: server.port, into: dir), "0"], directory: dir.path)
            #expect(ours.status == 0 && theirs.status == 0, "\(example): \(ours.stderr) \(theirs.stderr)")
            #expect(!ours.stdout.contains("An error has occured"), "\(example): \(ours.stdout)")
            if example == "quicksort" {
                // Its input is random: both print 30 numbers in increasing order.
                for out in [ours.stdout, theirs.stdout] { #expect(quicksortPrintedSortedNumbers(out), "\(out)") }
            } else {
                #expect(comparable(ours.stdout) == comparable(theirs.stdout), "\(example)\n--- ppnode:\n\(ours.stdout)\n--- ppserver:\n\(theirs.stdout)")
            }
        }
        #expect(node.logText.contains("pp-compatible listener ready"))
    }

    @Test func failingJobsAndBadClientsBehaveAsWithPpserver() throws {
        let venv = try ppftVenv()
        let node = try NodeProcess(["--pp-port", "0", "--workers", "1", "--python", venv + "/bin/python"], secret: compatSecret)
        defer { node.stop() }
        let server = try PPServerProcess(venv: venv, secret: compatSecret, workers: 1)
        defer { server.stop() }
        let port = try #require(node.ppPort, "\(node.logText)")
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let program = try dir.write("failing.py", """
            import sys, pp
            def bad(x):
                print("before", x)
                return 1 / x
            def good(x):
                return x + 1
            js = pp.Server(0, ppservers=("127.0.0.1:" + sys.argv[1],), secret=sys.argv[2])
            print("result", js.submit(bad, (0,))())
            print("after", js.submit(good, (41,))())
            js.destroy()
            """)
        let ours = try runProcess(venv + "/bin/python", [program, String(port), compatSecret])
        let theirs = try runProcess(venv + "/bin/python", [program, String(server.port), compatSecret])
        for out in [ours, theirs] {
            #expect(out.status == 0, "\(out.stderr)")
            #expect(out.stdout.contains("before 0"), "\(out.stdout)")
            #expect(out.stdout.contains("An error has occured during the function execution"), "\(out.stdout)")
            #expect(out.stdout.contains("ZeroDivisionError: division by zero"), "\(out.stdout)")
            #expect(out.stdout.contains("result None"))
            #expect(out.stdout.contains("after 42"))
        }
        // A wrong secret: the client gets no service, the node keeps serving.
        let wrong = try runProcess("/usr/bin/timeout", ["20", venv + "/bin/python", "-c", """
            import pp, sys, time
            js = pp.Server(0, ppservers=("127.0.0.1:\(port)",), secret="not-the-secret-at-all")
            time.sleep(1)  # its connection thread has tried
            print("nodes", js.get_active_nodes())
            js.destroy()
            """])
        #expect(wrong.stdout.contains("nodes {'local': 0}"), "\(wrong.stdout) \(wrong.stderr)")
        #expect(node.logText.contains("pp client refused: wrong secret"))
        let again = try runProcess(venv + "/bin/python", [program, String(port), compatSecret])
        #expect(again.stdout.contains("after 42"))
    }

    @Test func defaultSecretIsRefusedUnlessAllowed() throws {
        let refused = try NodeProcess(["--pp-port", "0"], secret: "epo20pdosl;dksldkmm")
        defer { refused.stop() }
        #expect(refused.ppPort == nil)
        #expect(refused.logText.contains("pp-compatible listener off: this node's secret is Parallel Python's published default secret"))
        let allowed = try NodeProcess(["--pp-port", "0", "--pp-allow-default-secret"], secret: "epo20pdosl;dksldkmm")
        defer { allowed.stop() }
        #expect(allowed.logText.contains("accepts Parallel Python's published default secret"))
        #expect(waitForPort(allowed))
    }

    @Test func badPeersAreClosedAndTheNodeKeepsServing() throws {
        let venv = try ppftVenv()
        let node = try NodeProcess(["--pp-port", "0", "--workers", "1", "--handshake-timeout", "0.5", "--python", venv + "/bin/python"], secret: compatSecret)
        defer { node.stop() }
        let port = try #require(node.ppPort, "\(node.logText)")
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let peers = try dir.write("peers.py", """
            import hashlib, pickle, socket, struct, sys
            port, secret = int(sys.argv[1]), sys.argv[2].encode()

            def frame(b):
                return struct.pack("!Q", len(b)) + b

            def recv_exact(s, n):
                data = b""
                while len(data) < n:
                    chunk = s.recv(n - len(data))
                    if not chunk:
                        return None
                    data += chunk
                return data

            def recv_frame(s):
                header = recv_exact(s, 8)
                return None if header is None else recv_exact(s, struct.unpack("!Q", header)[0])

            def connect(authenticate=False):
                s = socket.create_connection(("127.0.0.1", port))
                s.settimeout(10)
                version, challenge = recv_frame(s), recv_frame(s)
                if authenticate:
                    s.sendall(frame(hashlib.sha1(challenge + secret).hexdigest().encode()))
                    assert recv_frame(s) == b"OK"
                return s, version

            def closed(s):
                try:
                    return s.recv(1) == b""
                except socket.timeout:
                    return False

            s, version = connect()
            print("version", version.decode())
            print("silent peer closed", closed(s))
            s, _ = connect()
            s.sendall(struct.pack("!Q", 1 << 40))
            print("oversized frame closed", closed(s))
            s, _ = connect(authenticate=True)
            s.sendall(frame(b"BOGUS"))
            print("unknown type closed", closed(s))
            s, _ = connect(authenticate=True)
            s.sendall(frame(b"EXEC") + frame(b"H" + b"0" * 32))
            print("unknown function hash closed", closed(s))
            s, _ = connect(authenticate=True)
            s.sendall(frame(b"EXEC") + frame(b"Nnot a pickle") + frame(b"not pickled arguments"))
            result, output = pickle.loads(recv_frame(s))
            print("junk job result", result)
            print("junk job says", output.splitlines()[0])
            """)
        let r = try runProcess("/usr/bin/timeout", ["60", venv + "/bin/python", peers, String(port), compatSecret])
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.split(separator: "\n").map(String.init) == [
            "version 1.7.8",
            "silent peer closed True",
            "oversized frame closed True",
            "unknown type closed True",
            "unknown function hash closed True",
            "junk job result None",
            "junk job says An error has occured during the function execution",
        ], "\(r.stdout) \(r.stderr)")
        for message in [
            "pp client did not authenticate within 0.5 seconds (--handshake-timeout); closing",
            "is over the limit of",
            "pp client sent an unknown connection type; closing",
            "pp client sent a function named by a hash it never sent",
        ] {
            #expect(node.logText.contains(message), "\(message)\n\(node.logText)")
        }
        // And a real ppft client is still served (from a file: ppft sends functions' source).
        let good = try runProcess("/usr/bin/timeout", ["60", venv + "/bin/python", try dir.write("good.py", """
            import pp
            def inc(x):
                return x + 1
            js = pp.Server(0, ppservers=("127.0.0.1:\(port)",), secret="\(compatSecret)")
            print("after", js.submit(inc, (41,))())
            js.destroy()
            """)])
        #expect(good.stdout.contains("after 42"), "\(good.stdout) \(good.stderr)")
    }

    func waitForPort(_ node: NodeProcess) -> Bool {
        for _ in 0..<100 where node.ppPort == nil { usleep(20_000) }
        return node.ppPort != nil
    }
}
