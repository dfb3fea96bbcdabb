import PPCore
import PPTesting
import ParallelPython
import Testing

/// Large arguments travel by digest: once per node, once per worker, however many jobs
/// share them (docs/PROTOCOL.md "Large arguments travel once per node").
@Suite("Large arguments", .serialized)
struct LargeArgumentTests {
    static let function = PythonFunction(name: "measure", source: "def measure(big, i):\n    return len(big) * 1000 + i\n")

    /// The arguments of job `i`: a shared string of `size` characters, then `i`.
    static func arguments(_ big: RawJSON, _ i: Int) throws -> JobArguments {
        try JobArguments([big, i])
    }

    @Test func twoHundredJobsSharingTwentyMegabytesMoveThemOncePerNode() async throws {
        let a = try NodeProcess(secret: secret), b = try NodeProcess(secret: secret)
        defer { a.stop(); b.stop() }
        let size = 20 << 20
        let big = RawJSON(bytes: [UInt8(ascii: "\"")] + [UInt8](repeating: UInt8(ascii: "a"), count: size) + [UInt8(ascii: "\"")])
        let server = JobServer(configuration: .init(
            workers: 0, nodes: [try NodeAddress(parsing: a.address), try NodeAddress(parsing: b.address)],
            secret: try ClusterSecret(text: secret, origin: "test"), discover: false
        ))
        // One job at a time: each encodes its arguments, which the server splits at once.
        var handles: [JobHandle<Int>] = []
        for i in 0..<200 { handles.append(server.submit(Self.function, arguments: try Self.arguments(big, i), as: Int.self)) }
        var values: [Int] = []
        for h in handles { values.append(try await h.value) }
        #expect(values == (0..<200).map { size * 1000 + $0 })

        let stats = await server.nodeStatistics()
        #expect(stats.count == 2)
        for (name, s) in stats {
            guard case .object(let o) = s else { Issue.record("no stats from \(name)"); continue }
            // Both nodes ran jobs, and each received the argument (the JSON string, with
            // its quotes) once.
            guard case .int(let jobs) = o["jobs_received"] else { Issue.record("\(name): \(s)"); continue }
            #expect(jobs > 0, "\(name): \(s)")
            #expect(o["blobs_received"] == .int(1), "\(name): \(s)")
            #expect(o["blob_bytes_received"] == .int(size + 2), "\(name): \(s)")
        }
        await server.shutdown()
    }

    @Test func localWorkersLoadALargeArgumentAndOpaqueBytesToo() async throws {
        let server = JobServer(configuration: .init(workers: 2, discover: false))
        let big = RawJSON("[" + Array(repeating: "1", count: 600_000).joined(separator: ",") + "]")
        var handles: [JobHandle<Int>] = []
        for i in 0..<20 { handles.append(server.submit(Self.function, arguments: try Self.arguments(big, i), as: Int.self)) }
        var values: [Int] = []
        for h in handles { values.append(try await h.value) }
        #expect(values == (0..<20).map { 600_000 * 1000 + $0 })

        // Opaque bytes (the Python package's pickles) above the threshold move as a whole.
        let opaque = PythonFunction(name: "echo_len", source: "def echo_len(b):\n    return str(len(b)).encode()\n")
        let bytes = [UInt8](repeating: 3, count: 3 << 20)
        let lengths = await server.mapResults(opaque, arguments: Array(repeating: JobArguments(opaque: bytes), count: 4), as: Int.self)
        #expect(lengths.map { try? $0.get() } == Array(repeating: 3 << 20, count: 4))
        await server.shutdown()
    }
}
