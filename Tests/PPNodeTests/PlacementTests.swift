import Foundation
import PPTesting
import ParallelPython
import Synchronization
import Testing

/// Placement by capability with real nodes: node `a`'s workers see a helper module
/// (through PYTHONPATH, which workers honour), node `b`'s do not.
@Suite("Placement by capability", .serialized)
struct PlacementTests {
    /// Starts nodes `a` (with the helper module) and `b` (without) and runs `body`.
    private func withNodes(_ body: (NodeProcess, NodeProcess, TemporaryDirectory) async throws -> Void) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let modules = dir.path + "/modules"
        try FileManager.default.createDirectory(atPath: modules, withIntermediateDirectories: false)
        try "def double(x):\n    return 2 * x\n".write(toFile: modules + "/ppplace_helper.py", atomically: false, encoding: .utf8)
        let a = try NodeProcess(["--name", "a", "--workers", "2"], secret: secret, environment: ["PYTHONPATH": modules])
        defer { a.stop() }
        let b = try NodeProcess(["--name", "b", "--workers", "2"], secret: secret)
        defer { b.stop() }
        try await body(a, b, dir)
    }

    /// A job server with one local worker (which lacks the module too) and nodes `a`, `b`.
    private func server(_ a: NodeProcess, _ b: NodeProcess) throws -> JobServer {
        JobServer(configuration: .init(workers: 1, nodes: [try NodeAddress(parsing: a.address), try NodeAddress(parsing: b.address)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false))
    }

    /// Runs `function` on 0..<n and returns each job's outcomes (to check each ends once).
    private func run(_ server: JobServer, _ function: PythonFunction, _ n: Int) async throws -> [[JobOutcome]] {
        // Both nodes connected first, so that each gets jobs.
        while await server.activeExecutors().count < 3 { try await Task.sleep(for: .milliseconds(20)) }
        let outcomes = Mutex([[JobOutcome]](repeating: [], count: n))
        let done = Mutex(0)
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            server.submitBatch(function, arguments: try! (0..<n).map { try JobArguments(single: $0) }) { index, outcome in
                outcomes.withLock { $0[index].append(outcome) }
                if done.withLock({ $0 += 1; return $0 == n }) { c.resume() }
            }
        }
        await server.waitAll()
        return outcomes.withLock { $0 }
    }

    @Test func jobsRunOnTheNodeThatCanImportTheirModule() async throws {
        try await self.withNodes { a, b, _ in
            let server = try self.server(a, b)
            let f = PythonFunction(name: "f", source: "import ppplace_helper\n\ndef f(x):\n    return ppplace_helper.double(x)\n")
            let outcomes = try await self.run(server, f, 60)
            await server.shutdown()
            #expect(outcomes.allSatisfy { $0.count == 1 })
            for (i, o) in outcomes.enumerated() {
                #expect((try? o[0].result.get()) == Array(String(2 * i).utf8), "\(o[0].result)")
                #expect(o[0].executor == a.address)
            }
        }
    }

    @Test func whenNoExecutorCanImportItEachJobFailsOnceNamingEveryExecutor() async throws {
        try await self.withNodes { a, b, _ in
            let server = try self.server(a, b)
            let f = PythonFunction(name: "f", source: "import ppplace_missing\n\ndef f(x):\n    return x\n")
            let outcomes = try await self.run(server, f, 20)
            await server.shutdown()
            #expect(outcomes.allSatisfy { $0.count == 1 })
            let missing = "ModuleNotFoundError: No module named 'ppplace_missing'"
            for o in outcomes {
                guard case .failure(let error) = o[0].result else {
                    Issue.record("job succeeded")
                    continue
                }
                #expect(error.code == .functionUnavailable)
                #expect(error.message.hasPrefix("no executor can run the function: "), "\(error.message)")
                for name in ["local", "a (\(a.address))", "b (\(b.address))"] {
                    #expect(error.message.contains("\(name): \(missing)"), "\(error.message)")
                }
            }
        }
    }

    @Test func pprunRequirementFlags() async throws {
        try await self.withNodes { a, b, dir in
            let file = try dir.write("work.py", "import sys\n\ndef where(x):\n    return [x, 'ppplace_helper' in sys.modules]\n")
            let common = ["--workers", "0", "--node", a.address, "--node", b.address, "--no-discover", "--stats"]
            // Only a has the module: every job runs there.
            let ok = try runProcess(builtCommand("pprun"), ["map", file + ":where", "--range", "0:40", "--requires-module", "ppplace_helper", "--requires-python", ">=3.6"] + common, environment: ["PP_SECRET": secret])
            #expect(ok.status == 0, "\(ok.stderr)")
            #expect(ok.lines == (0..<40).map { "[\($0),true]" })
            let servers = ok.stderr.split(separator: "\n").compactMap { $0.split(separator: "| ").last.map(String.init) }
            #expect(servers.contains(a.address) && !servers.contains(b.address), "\(ok.stderr)")
            // No Python is that new: every job fails, naming both nodes and their versions.
            let none = try runProcess(builtCommand("pprun"), ["map", file + ":where", "--range", "0:3", "--requires-python", ">=99"] + common, environment: ["PP_SECRET": secret])
            #expect(none.status == 1)
            #expect(none.lines.isEmpty)
            #expect(none.stderr.contains("no executor can run the function: a (\(a.address)): needs Python >=99; "), "\(none.stderr)")
            #expect(none.stderr.contains("; b (\(b.address)): needs Python >=99; "), "\(none.stderr)")
            #expect(none.stderr.contains("pprun: 3 of 3 jobs failed"), "\(none.stderr)")
            // A range that does not parse is refused before anything runs.
            let bad = try runProcess(builtCommand("pprun"), ["map", file + ":where", "1", "--requires-python", "3.9+"] + common, environment: ["PP_SECRET": secret])
            #expect(bad.status == 64)
            #expect(bad.stderr.contains("'3.9+' is not a Python version range; write clauses such as '>=3.9,<3.13'"), "\(bad.stderr)")
        }
    }
}
