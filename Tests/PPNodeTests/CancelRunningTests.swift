import Foundation
import PPCore
import PPTesting
import ParallelPython
import Testing

private let code = """
    import os, time

    def pid(x):
        return os.getpid()

    def sleeper(started):
        open(started, "w").close()
        time.sleep(60)
        return "ran to the end"
    """

@Suite("Stopping a running job")
struct CancelRunningTests {
    /// Runs a 60 s job, stops it once it runs, and checks that it ends once as
    /// cancelled long before its 60 s and that its worker was replaced (the next job
    /// runs in another process) — on the client's own worker or on a node.
    private func stopsARunningJob(_ server: JobServer) async throws {
        let pid = PythonFunction(name: "pid", source: code)
        let before = try await server.map(pid, [0], as: Int.self)[0]

        let started = FileManager.default.temporaryDirectory.appendingPathComponent("pp-started-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: started) }
        let job = try server.submit(PythonFunction(name: "sleeper", source: code), started, as: String.self)
        #expect(waitFor(seconds: 60) { FileManager.default.fileExists(atPath: started) })

        let stopAt = ContinuousClock.now
        #expect(await job.stop() == false)  // it was running, not queued
        let result = await job.result
        let took = ContinuousClock.now - stopAt
        guard case .failure(let error) = result else {
            Issue.record("the stopped job ended with \(result)")
            return
        }
        #expect(error.code == .cancelled)
        #expect(error.message.contains("cancelled while it ran"), "\(error.message)")
        print("stopped a running 60 s job in \(took)")
        #expect(took < .seconds(30), "the job was not stopped: it ended after \(took)")

        // The slot is free again, and a new worker runs the next job.
        let after = try await server.map(pid, [0], as: Int.self)[0]
        #expect(after != before, "the worker that ran the stopped job still runs jobs")
        #expect(kill(pid_t(before), 0) != 0, "the worker that ran the stopped job is still alive")
    }

    @Test func onTheClientsOwnWorker() async throws {
        let server = JobServer(configuration: .init(workers: 1, discover: false))
        try await self.stopsARunningJob(server)
        await server.shutdown()
    }

    @Test func onANode() async throws {
        let node = try NodeProcess(["--workers", "1"], secret: secret)
        defer { node.stop() }
        let server = JobServer(
            configuration: .init(workers: 0, nodes: [try NodeAddress(parsing: node.address)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false)
        )
        try await self.stopsARunningJob(server)
        await server.shutdown()
    }
}
