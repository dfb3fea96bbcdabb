import Foundation
import NIOCore
import PPCore
import PPTesting
import ParallelPython
import Synchronization
import Testing

private let jobs = """
    import time

    def half_second(x, log):
        with open(log, "a") as f:
            f.write("A")
        time.sleep(0.5)
        return x

    def tiny(x, log):
        with open(log, "a") as f:
            f.write("B")
        return x
    """

@Suite("Fair share between the clients of a node")
struct FairShareTests {
    /// Three clients keep 2,000 half-second jobs each queued; another sends 20 tiny
    /// jobs later. The node's pool takes the next job from the client that used the
    /// least worker time lately, so once the tiny jobs are at the node they start
    /// before any queued half-second job. First come, first served, they waited behind
    /// the busy clients' queued jobs at the node (two per client; before the window
    /// followed the first result, 20 such jobs took 4.6 to 5.5 s, ten job-times).
    /// Each job writes a letter to a log as it starts, and the test writes `S` just
    /// before it submits the tiny jobs, so the test checks the order, not the time.
    @Test func shortJobsOfASecondClientAreNotStarvedByAnotherClientsLongQueue() async throws {
        let node = try NodeProcess(["--workers", "2"], secret: secret)
        defer { node.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let log = dir.path + "/starts"
        let configuration = JobServer.Configuration(
            workers: 0, nodes: [try NodeAddress(parsing: node.address)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false
        )
        let busy = (0..<3).map { _ in JobServer(configuration: configuration) }
        let polite = JobServer(configuration: configuration)
        let tiny = PythonFunction(name: "tiny", source: jobs)
        // The polite client is connected before (its window is deep once it has a
        // result): what is measured is the node's choice of jobs.
        #expect(try await polite.mapResults(tiny, arguments: [JobArguments([0, dir.path + "/warm-up"])], as: Int.self).map { try $0.get() } == [0])
        let busyDone = Atomic<Int>(0)
        let half = PythonFunction(name: "half_second", source: jobs)
        for server in busy {
            for i in 0..<2_000 {
                try server.submit(half, i, log, as: Int.self) { _ in busyDone.add(1, ordering: .relaxed) }
            }
        }
        // Both workers are busy with the busy clients' jobs, and each has more queued
        // at the node.
        #expect(waitFor(seconds: 60) { busyDone.load(ordering: .relaxed) >= 4 })

        let start = ContinuousClock.now
        let marker = FileHandle(forWritingAtPath: log)!
        marker.seekToEndOfFile()
        marker.write(Data("S".utf8))
        marker.closeFile()
        let values = try await polite.mapResults(tiny, arguments: try (0..<20).map { try JobArguments([$0, log]) }, as: Int.self).map { try $0.get() }
        let took = ContinuousClock.now - start
        #expect(values == Array(0..<20))
        let starts = try String(contentsOfFile: log, encoding: .utf8)
        let mark = starts.lastIndex(of: "S")!, first = starts.firstIndex(of: "B")!, last = starts.lastIndex(of: "B")!
        let before = starts[mark..<first].filter { $0 == "A" }.count
        let among = starts[first...last].filter { $0 == "A" }.count
        print("tiny jobs: 20 in \(took) (\(Double(took / .milliseconds(500))) job-times); starts from the marker: \(starts[mark...].prefix(40))")
        #expect(starts.filter { $0 == "B" }.count == 20)
        // First come, first served, the six queued half-second jobs start first.
        #expect(before <= 2, "\(before) queued half-second jobs started before the first tiny one: \(starts[mark...])")
        #expect(among <= 2, "\(among) half-second jobs started among the tiny ones: \(starts[mark...])")

        // STATS shows both clients' use, least first.
        let stats = await polite.nodeStatistics()
        guard case .object(let fields)? = stats.values.first, case .array(let clients)? = fields["clients"] else {
            Issue.record("no clients in STATS: \(stats)")
            return
        }
        let used: [(owner: String, seconds: Double, queued: Int)] = clients.compactMap {
            guard case .object(let c) = $0, case .string(let owner)? = c["owner"], case .int(let queued)? = c["queued"] else { return nil }
            switch c["used_seconds"] {
            case .double(let s)?: return (owner, s, queued)
            case .int(let s)?: return (owner, Double(s), queued)
            default: return nil
            }
        }
        // The busy clients have used seconds of worker time and have jobs queued; the
        // polite one, the node's first session (listed unless forgotten: its use is
        // under a millisecond), used almost nothing.
        #expect(used.last.map { $0.seconds > 0.9 && $0.queued > 0 } == true, "\(clients)")
        #expect(used.allSatisfy { $0.owner.contains(" #") }, "\(clients)")
        #expect(used.filter { $0.owner.hasSuffix(" #1") }.allSatisfy { $0.seconds < 0.1 && $0.queued == 0 }, "\(clients)")
        await polite.shutdown()
        for server in busy { await server.shutdown() }
    }
}
