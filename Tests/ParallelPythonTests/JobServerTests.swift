import Foundation
import PPTesting
import ParallelPython
import Synchronization
import Testing

let source = """
    import time

    def add(a, b):
        return a + b

    def square(x):
        return x * x

    def nap(s, value):
        time.sleep(s)
        return value

    def fail(x):
        raise RuntimeError("no %s" % x)

    def wait_for(path, value):
        import os
        for _ in range(6000):  # at most 60 s: a loaded machine must not end it early
            if os.path.exists(path):
                return value
            time.sleep(0.01)
        return -1

    def point(p):
        return {"x": p["x"] * 2, "y": p["y"] * 2}
    """

@Suite("JobServer local mode")
struct JobServerTests {
    let add = PythonFunction(name: "add", source: source)
    let square = PythonFunction(name: "square", source: source)
    let nap = PythonFunction(name: "nap", source: source)
    let fail = PythonFunction(name: "fail", source: source)

    @Test func submitAwaitAndCallback() async throws {
        let server = JobServer(workers: 2)
        let seen = Mutex<[Result<Int, JobError>]>([])
        let h = try server.submit(self.add, 2, 3, as: Int.self) { r in seen.withLock { $0.append(r) } }
        #expect(try await h.value == 5)
        let s = try server.submit(self.add, "a", "b", as: String.self)
        #expect(try await s.value == "ab")
        await server.waitAll()
        #expect(seen.withLock { $0.count } == 1)
        #expect(try seen.withLock { try $0[0].get() } == 5)
        await server.shutdown()
    }

    @Test func codableArgumentsAndResults() async throws {
        struct Point: Codable, Sendable, Equatable { var x: Int; var y: Int }
        let server = JobServer(workers: 1)
        let point = PythonFunction(name: "point", source: source)
        #expect(try await server.submit(point, Point(x: 1, y: 2), as: Point.self).value == Point(x: 2, y: 4))
        let any = try await server.submit(point, Point(x: 3, y: 4), as: JSONValue.self).value
        #expect(any == .object(["x": .int(6), "y": .int(8)]))
        // A result that does not decode as the asked type is an error, not a crash.
        let wrong = await (try server.submit(point, Point(x: 1, y: 1), as: [Int].self)).result
        guard case .failure(let e) = wrong else { Issue.record("expected failure"); return }
        #expect(e.code == .resultNotJSON)
        await server.shutdown()
    }

    @Test func mapKeepsInputOrder() async throws {
        let server = JobServer(workers: 2)
        let inputs = Array(0..<300)
        #expect(try await server.map(self.square, inputs, as: Int.self) == inputs.map { $0 * $0 })
        // Results as they complete: every index exactly once.
        let args = (0..<20).map { JobArguments(jsonArray: Array("[\(Double(20 - $0) / 1000), \($0)]".utf8)) }
        var seen: [Int] = []
        for await (index, result) in server.resultsAsCompleted(self.nap, arguments: args, as: Int.self) {
            #expect(try result.get() == index)
            seen.append(index)
        }
        #expect(seen.sorted() == Array(0..<20))
        await server.shutdown()
    }

    @Test func failuresAreReportedPerJob() async throws {
        let server = JobServer(workers: 2)
        let results = await server.mapResults(self.fail, arguments: [try JobArguments(single: "x")], as: JSONValue.self)
        guard case .failure(let e) = results[0] else { Issue.record("expected failure"); return }
        #expect(e.code == .pythonException)
        #expect(e.pythonType == "RuntimeError")
        #expect(e.message == "no x")
        #expect(e.traceback.contains("in fail"))
        await #expect(throws: JobError.self) { try await server.map(self.fail, [1, 2], as: Int.self) }
        await server.shutdown()
    }

    @Test func groupsAndWait() async throws {
        let server = JobServer(workers: 2)
        let done = Mutex(0)
        for i in 0..<6 {
            try server.submit(self.nap, 0.05, i, as: Int.self, group: "slow") { _ in done.withLock { $0 += 1 } }
        }
        try server.submit(self.square, 3, as: Int.self, group: "fast")
        await server.wait(group: "slow")
        #expect(done.withLock { $0 } == 6)
        await server.wait(group: "fast")
        await server.wait(group: "never-used")
        await server.shutdown()
    }

    @Test func workersResizeAndStatistics() async throws {
        let server = JobServer(workers: 1)
        #expect(await server.workers() == 1)
        server.setWorkers(3)
        #expect(await server.workers() == 3)
        _ = try await server.map(self.square, Array(0..<50), as: Int.self)
        let stats = await server.statistics()
        #expect(stats.totalJobs == 50)
        #expect(stats.executors.map(\.name) == ["local"])
        let table = await server.statisticsTable()
        #expect(table.contains("job count | % of all jobs | job time sum | time per job | job server"))
        #expect(table.contains("        50 |        100.00 |"))
        #expect(table.contains("local/1"))
        await server.shutdown()
    }

    @Test func cancelQueuedJob() async throws {
        let server = JobServer(workers: 1)
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let gate = dir.path + "/go"
        let waitFor = PythonFunction(name: "wait_for", source: source)
        // The first job holds the only worker until the test creates the gate file.
        let running = try server.submit(waitFor, gate, 1, as: Int.self)
        let queued = try server.submit(waitFor, gate, 2, as: Int.self)
        #expect(await queued.cancel())
        guard case .failure(let e) = await queued.result else { Issue.record("expected cancel"); return }
        #expect(e.code == .cancelled)
        try dir.write("go", "")
        #expect(try await running.value == 1)
        #expect(await running.cancel() == false)
        await server.shutdown()
    }

    @Test func loadReportsBrokenFunctions() async throws {
        let server = JobServer(workers: 1)
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("m.py", "def ok(x):\n    return x\n")
        try await server.load(try PythonFunction(file: file, name: "ok"))
        await #expect(throws: JobError.self) { try await server.load(try PythonFunction(file: file, name: "missing")) }
        #expect(throws: PythonFunctionError.self) { try PythonFunction(file: dir.path + "/absent.py", name: "f") }
        #expect(throws: PythonFunctionError.self) { try PythonFunction(spec: "no-colon") }
        #expect(throws: PythonFunctionError.self) { try PythonFunction(spec: file + ":1bad") }
        await server.shutdown()
    }
}
