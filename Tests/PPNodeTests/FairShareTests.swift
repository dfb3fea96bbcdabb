import NIOCore
import PPCore
import PPTesting
import ParallelPython
import Synchronization
import Testing

private let jobs = """
    import time

    def half_second(x):
        time.sleep(0.5)
        return x

    def tiny(x):
        return x
    """

@Suite("Fair share between the clients of a node")
struct FairShareTests {
    /// One client keeps 2,000 half-second jobs queued; another sends 20 tiny jobs later.
    /// The node's pool takes the next job from the client that used the least worker
    /// time lately, so the second client's jobs run as soon as a worker is free instead
    /// of behind the first one's queue. First come, first served, the 20 jobs took 4.6
    /// to 5.5 s (about ten job-times), during which the first client finished about 18
    /// jobs; now the first finishes a few.
    @Test func shortJobsOfASecondClientAreNotStarvedByAnotherClientsLongQueue() async throws {
        let node = try NodeProcess(["--workers", "2"], secret: secret)
        defer { node.stop() }
        let configuration = JobServer.Configuration(
            workers: 0, nodes: [try NodeAddress(parsing: node.address)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false
        )
        let busy = JobServer(configuration: configuration)
        let polite = JobServer(configuration: configuration)
        let tiny = PythonFunction(name: "tiny", source: jobs)
        // The second client is connected before: what is measured is the node's
        // choice of jobs, not a TLS handshake on a loaded machine.
        #expect(try await polite.map(tiny, [0], as: Int.self) == [0])
        let busyDone = Atomic<Int>(0)
        let half = PythonFunction(name: "half_second", source: jobs)
        for i in 0..<2_000 {
            try busy.submit(half, i, as: Int.self) { _ in busyDone.add(1, ordering: .relaxed) }
        }
        // Both workers are busy with the first client's jobs, and it has more queued.
        #expect(waitFor(seconds: 60) { busyDone.load(ordering: .relaxed) >= 2 })

        let before = busyDone.load(ordering: .relaxed)
        let start = ContinuousClock.now
        let values = try await polite.map(tiny, Array(0..<20), as: Int.self)
        let took = ContinuousClock.now - start
        let during = busyDone.load(ordering: .relaxed) - before
        #expect(values == Array(0..<20))
        print("second client: 20 tiny jobs in \(took) (\(Double(took / .milliseconds(500))) job-times); first client finished \(during) meanwhile")
        #expect(during <= 8, "the first client finished \(during) half-second jobs while the second's 20 tiny ones waited")

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
        // The busy client has used seconds of worker time and has jobs queued; the
        // polite one (if not forgotten yet: its use is under a millisecond) comes first.
        #expect(used.last.map { $0.seconds > 0.9 && $0.queued > 0 && $0.owner.contains(" #") } == true, "\(clients)")
        #expect(used.count == 1 || used.first!.seconds < 0.1, "\(clients)")
        await polite.shutdown()
        await busy.shutdown()
    }
}
