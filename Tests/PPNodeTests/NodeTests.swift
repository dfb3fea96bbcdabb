import Foundation
import NIOCore
import PPCore
import PPTesting
import ParallelPython
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

let secret = "test-secret-0123456789abcdef"
let otherSecret = "another-cluster-secret-987654321"

let work = """
    import os, time

    def slow_square(x):
        time.sleep(0.02)
        return x * x

    def gated_square(x, gate):
        if x >= 10:
            for _ in range(6000):  # at most 60 s
                if os.path.exists(gate):
                    break
                time.sleep(0.01)
        return x * x

    def square(x):
        return x * x

    def whoami(x):
        return [x, os.getppid()]
    """

/// A raw TCP peer for misbehaving on purpose.
struct RawPeer {
    let fd: Int32

    init(port: Int) throws {
        self.fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        // NIO's SocketAddress builds the sockaddr: with NIO in this target, the C
        // structs' members resolve through NIO's C module, which this file cannot name.
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: port)
        let rc = address.withSockAddr { connect(self.fd, $0, socklen_t($1)) }
        guard rc == 0 else { throw CocoaError(.fileReadUnknown) }
        // SO_RCVTIMEO of 15 s, as a timeval's two 64-bit fields.
        var tv: (Int, Int) = (15, 0)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<(Int, Int)>.size))
    }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Reads until the node closes the connection (or 15 s pass).
    func readToEnd() -> (bytes: [UInt8], closed: Bool) {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(self.fd, &buffer, buffer.count, 0)
            if n == 0 { return (out, true) }
            if n < 0 { return (out, false) }
            out += buffer[0..<n]
        }
    }

    /// The ERROR frames (code, message) in `bytes`.
    static func errors(in bytes: [UInt8]) -> [(UInt16, String)] {
        var out: [(UInt16, String)] = []
        var i = 0
        while i + 5 <= bytes.count {
            let n = Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
            guard i + 4 + n <= bytes.count else { break }
            if bytes[i + 4] == 0x05, n >= 3 {
                let code = UInt16(bytes[i + 5]) << 8 | UInt16(bytes[i + 6])
                out.append((code, String(decoding: bytes[(i + 7)..<(i + 4 + n)], as: UTF8.self)))
            }
            i += 4 + n
        }
        return out
    }

    func close() { Glibc.close(self.fd) }
}

extension NodeProcess {
    /// A node on a discovery port of its own: clients of tests running at the same time
    /// (same secret) neither find it nor make it look busy to `signalWhenBusy` before
    /// the test's own client has connected.
    static func `private`(_ arguments: [String] = []) throws -> NodeProcess {
        try NodeProcess(arguments + ["--discovery-port", String(Int.random(in: 20_000...29_999))], secret: secret)
    }
}

/// Sends `signal` to `node` 300 ms after its first client authenticated.
func signalWhenBusy(_ node: NodeProcess, _ signal: Int32) {
    Thread {
        for _ in 0..<500 where !node.logText.contains("client authenticated") { usleep(10_000) }
        usleep(300_000)
        node.signal(signal)
    }.start()
}

/// Runs 200 slow squares with pprun on nodes `a` and `b` only (no discovery: nodes of
/// tests running at the same time share the secret) and checks every result.
func runTwoHundredOn(_ a: NodeProcess, _ b: NodeProcess) throws -> ProcessResult {
    let dir = try TemporaryDirectory()
    defer { dir.remove() }
    let file = try dir.write("work.py", work)
    let r = try runProcess(
        builtCommand("pprun"),
        ["map", file + ":slow_square", "--range", "0:200", "--workers", "0", "--node", a.address, "--node", b.address, "--stats", "--no-discover"],
        environment: ["PP_SECRET": secret]
    )
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.lines == (0..<200).map { String($0 * $0) })
    return r
}

@Suite("ppnode and the native protocol", .serialized)
struct NodeTests {
    @Test func pprunOnTwoNodesRemoteOnly() throws {
        let a = try NodeProcess(secret: secret), b = try NodeProcess(secret: secret)
        defer { a.stop(); b.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(
            builtCommand("pprun"),
            ["map", file + ":slow_square", "--range", "0:60", "--workers", "0", "--node", a.address, "--node", b.address, "--stats", "--no-discover"],
            environment: ["PP_SECRET": secret]
        )
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == (0..<60).map { String($0 * $0) })
        #expect(r.stderr.contains("| \(a.address)"))
        #expect(r.stderr.contains("| \(b.address)"))
        #expect(!r.stderr.contains("| local"))
    }

    @Test func bigFunctionTravelsOncePerNode() async throws {
        let a = try NodeProcess(secret: secret), b = try NodeProcess(secret: secret)
        defer { a.stop(); b.stop() }
        let padding = (0..<3_300).map { "# padding line \($0) " + String(repeating: "x", count: 40) }.joined(separator: "\n")
        let f = PythonFunction(name: "inc", source: padding + "\ndef inc(x):\n    return x + 1\n")
        #expect(f.bundle.spec.count > 200_000)
        let server = JobServer(configuration: .init(workers: 0, nodes: [try NodeAddress(parsing: a.address), try NodeAddress(parsing: b.address)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false))
        // Two rounds, so the second finds the bundle cached.
        for _ in 0..<2 {
            #expect(try await server.map(f, Array(0..<500), as: Int.self) == (1...500).map { $0 })
        }
        let stats = await server.nodeStatistics()
        #expect(stats.count == 2)
        for (name, s) in stats {
            guard case .object(let o) = s else { Issue.record("no stats from \(name)"); continue }
            #expect(o["bundles_received"] == .int(1), "\(name): \(s)")
            if case .int(let bytes) = o["bundle_bytes_received"] { #expect(bytes == f.bundle.spec.count) }
            if case .int(let n) = o["jobs_done"] { #expect(n > 0) }
        }
        let total = await server.statistics().executors.reduce(0) { $0 + $1.jobs }
        #expect(total == 1000)
        await server.shutdown()
    }

    @Test func badPeersDoNotDisturbAGoodClient() async throws {
        let node = try NodeProcess(["--handshake-timeout", "1"], secret: secret)
        defer { node.stop() }
        let f = PythonFunction(name: "slow_square", source: work)
        let server = JobServer(configuration: .init(workers: 0, nodes: [try NodeAddress(parsing: node.address)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false))
        async let good = server.map(f, Array(0..<100), as: Int.self)

        // Strangers without the key get no frame at all: everything before the TLS
        // handshake is TLS's, and garbage ends it. An HTTP request, a native frame of an
        // unknown type, an oversized length prefix (plaintext protocol 1 style):
        // closed at once, with nothing but (at most) a TLS alert.
        for bytes in [Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), [0, 0, 0, 3, 0x7f, 0xde, 0xad], [0xff, 0xff, 0xff, 0xf0, 0x01]] {
            let peer = try RawPeer(port: node.port)
            peer.send(bytes)
            let r = peer.readToEnd()
            #expect(r.closed)
            #expect(RawPeer.errors(in: r.bytes).isEmpty && r.bytes.count < 64, "\(r.bytes)")
            peer.close()
        }
        // A truncated TLS record, then silence; a peer that never speaks: the handshake
        // timer closes both.
        let truncated = try RawPeer(port: node.port)
        truncated.send([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        let silent = try RawPeer(port: node.port)
        #expect(truncated.readToEnd().closed)
        #expect(silent.readToEnd().closed)
        for p in [truncated, silent] { p.close() }
        #expect(waitFor(seconds: 10) { node.logText.contains("no TLS handshake and HELLO within 1.0 seconds") }, "\(node.logText)")

        // A client with the wrong secret gets a message naming both key ids, after five
        // seconds (every node known refused its key), not the 30 s of the default.
        let wrongConfig = JobServer.Configuration(workers: 0, nodes: [try NodeAddress(parsing: node.address)], secret: try ClusterSecret(text: otherSecret, origin: "test"), discover: false)
        let wrong = JobServer(configuration: wrongConfig)
        let result = await wrong.mapResults(f, arguments: [try JobArguments(single: 1)], as: Int.self)
        guard case .failure(let e) = result[0] else { Issue.record("the wrong secret ran a job"); return }
        #expect(e.code == .noExecutor)
        let nodeKey = try ClusterSecret(text: secret, origin: "t").keyID
        let ourKey = try ClusterSecret(text: otherSecret, origin: "t").keyID
        // The client knows only its own key id; the node logs both.
        #expect(e.message.contains(ourKey) && e.message.contains("does not accept our key"), "\(e.message)")
        #expect(e.message.hasPrefix("nothing could run the job for 5.0 seconds"), "\(e.message)")
        await wrong.shutdown()

        // Meanwhile the good client got every result.
        #expect(try await good == (0..<100).map { $0 * $0 })
        await server.shutdown()
        let log = node.logText
        #expect(log.contains("key id \(ourKey)") && log.contains("key id \(nodeKey)"))
    }

    @Test func killNineOfOneNodeLosesNothing() throws {
        let a = try NodeProcess.private(), b = try NodeProcess.private()
        defer { a.stop(); b.stop() }
        signalWhenBusy(b, SIGKILL)
        let r = try runTwoHundredOn(a, b)
        #expect(r.stderr.contains("node lost"))
    }

    @Test func frozenNodeIsDroppedByHeartbeat() throws {
        let a = try NodeProcess.private(), b = try NodeProcess.private()
        defer {
            b.signal(SIGCONT)
            a.stop()
            b.stop()
        }
        // SIGSTOP keeps b's connections open but silent: only heartbeats can tell.
        signalWhenBusy(b, SIGSTOP)
        let r = try runTwoHundredOn(a, b)
        #expect(r.stderr.contains("no heartbeat for 3.0 seconds"), "\(r.stderr)")
    }

    @Test func sigtermOnABusyNodeLosesNothing() throws {
        let a = try NodeProcess.private(["--drain-timeout", "5"]), b = try NodeProcess.private()
        defer { a.stop(); b.stop() }
        signalWhenBusy(a, SIGTERM)
        _ = try runTwoHundredOn(a, b)
        #expect(a.wait() == 0)
        #expect(a.logText.contains("shutting down"))
        #expect(a.logText.contains("stopped"))
    }

    @Test func shutdownWithJobsOnANodeEndsEveryJob() async throws {
        let node = try NodeProcess(secret: secret)
        defer { node.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let gate = dir.path + "/go"
        // Jobs 0..<10 run at once; the others wait for the gate file, which appears only
        // after the shutdown: however slowly this test is scheduled, the shutdown finds
        // 10 jobs done and 90 on the node or queued.
        let f = PythonFunction(name: "gated_square", source: work)
        let server = JobServer(configuration: .init(workers: 0, nodes: [try NodeAddress(parsing: node.address)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false))
        let ended = Mutex<[Int: Result<[UInt8], JobError>]>([:])
        server.submitBatch(f, arguments: try (0..<100).map { try JobArguments([$0, gate]) }) { i, outcome in
            ended.withLock { $0[i] = outcome.result }
        }
        for _ in 0..<3000 where ended.withLock({ $0.count }) < 10 { try await Task.sleep(for: .milliseconds(10)) }
        await server.shutdown()
        try dir.write("go", "")
        for _ in 0..<1000 where ended.withLock({ $0.count }) < 100 { try await Task.sleep(for: .milliseconds(10)) }
        let all = ended.withLock { $0 }
        #expect(all.count == 100)
        var values = 0, shut = 0
        for (i, r) in all {
            switch r {
            case .success(let v): #expect(i < 10 && String(decoding: v, as: UTF8.self) == String(i * i), "job \(i)"); values += 1
            case .failure(let e): #expect(i >= 10 && e.code == .shutdown, "job \(i): \(e)"); shut += 1
            }
        }
        #expect(values == 10 && shut == 90, "values \(values), shut down \(shut)")
        // After shutdown, a submit ends at once.
        let late = await server.mapResults(f, arguments: [try JobArguments(single: 1)], as: Int.self)
        guard case .failure(let e) = late[0] else { Issue.record("ran after shutdown"); return }
        #expect(e.code == .shutdown)
    }

    @Test func beaconsAndProbesOnLoopbackBroadcast() throws {
        let discoveryPort = Int.random(in: 40_000...49_999)
        let node = try NodeProcess(
            ["--discovery-port", String(discoveryPort), "--beacon-interval", "0.3"],
            secret: secret,
            environment: ["PP_BROADCAST": "127.255.255.255"]
        )
        defer { node.stop() }
        // A listener on the discovery port hears the periodic beacon; a probe sent to the
        // broadcast address gets an answer at once.
        let lines = try runPython(
            """
            import socket, json
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", \(discoveryPort)))
            s.settimeout(5)
            data, _ = s.recvfrom(2000)
            print(data[:6])
            print(json.dumps(json.loads(data[6:]), sort_keys=True))
            p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            p.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            p.settimeout(5)
            # A short probe gets no answer (the answer would be larger: amplification).
            p.sendto(b"PPNQ\\x02", ("127.255.255.255", \(discoveryPort)))
            p.settimeout(0.5)
            try:
                p.recvfrom(2000)
                print("answered a short probe")
            except socket.timeout:
                pass
            p.settimeout(5)
            p.sendto(b"PPNQ\\x02" + bytes(1395), ("127.255.255.255", \(discoveryPort)))
            data, _ = p.recvfrom(2000)
            print(json.loads(data[6:])["port"])
            """
        )
        #expect(lines.count == 3, "\(lines)")
        guard lines.count == 3 else { return }
        #expect(lines[0] == "b'SPPNB\\x01'")
        let beacon = try JSONDecoder().decode(NodeBeacon.self, from: Data(lines[1].utf8))
        #expect(beacon.port == node.port)
        #expect(beacon.keyid == (try ClusterSecret(text: secret, origin: "t")).keyID)
        #expect(beacon.protocol == 3 && beacon.workers >= 1 && beacon.cores >= 1)
        #expect(lines[2] == String(node.port))
        #expect(node.logText.contains("broadcast beacons on"))
    }

    /// Environment for a node or pprun that discovers on a private port over loopback.
    func discoveryEnvironment(_ port: Int, secret: String) -> [String: String] {
        ["PP_BROADCAST": "127.255.255.255", "PP_DISCOVERY_PORT": String(port), "PP_SECRET": secret]
    }

    @Test func pprunFindsNodesByBroadcast() throws {
        let port = Int.random(in: 40_000...49_999)
        let node = try NodeProcess(["--beacon-interval", "0.3"], secret: secret, environment: discoveryEnvironment(port, secret: secret))
        let stranger = try NodeProcess(["--beacon-interval", "0.3"], secret: otherSecret, environment: discoveryEnvironment(port, secret: otherSecret))
        defer { node.stop(); stranger.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(
            builtCommand("pprun"),
            ["map", file + ":slow_square", "--range", "0:40", "--workers", "0", "--stats"],
            environment: discoveryEnvironment(port, secret: secret)
        )
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == (0..<40).map { String($0 * $0) })
        #expect(r.stderr.contains("| \(node.address)"))
        #expect(!r.stderr.contains("| \(stranger.address)"))
        #expect(r.stderr.contains("node of another cluster ignored"), "\(r.stderr)")
        #expect(!stranger.logText.contains("client authenticated"))
    }

    @Test func aNodeStartedLaterIsUsed() async throws {
        let port = Int.random(in: 40_000...49_999)
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let started = Mutex<NodeProcess?>(nil)
        // The node starts while pprun waits with no executor at all.
        Thread {
            usleep(1_000_000)
            started.withLock { $0 = try? NodeProcess(["--beacon-interval", "0.3"], secret: secret, environment: self.discoveryEnvironment(port, secret: secret)) }
        }.start()
        let r = try runProcess(
            builtCommand("pprun"),
            ["map", file + ":slow_square", "--range", "0:40", "--workers", "0", "--stats"],
            environment: discoveryEnvironment(port, secret: secret)
        )
        let node = started.withLock { $0 }
        defer { node?.stop() }
        #expect(node != nil)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == (0..<40).map { String($0 * $0) })
        if let node { #expect(r.stderr.contains("| \(node.address)")) }
    }

    @Test func ppnodesListsNodesAndTheirCluster() throws {
        let port = Int.random(in: 40_000...49_999)
        let node = try NodeProcess(["--name", "alpha", "--workers", "1", "--pp-port", "0"], secret: secret, environment: discoveryEnvironment(port, secret: secret))
        let stranger = try NodeProcess(["--name", "beta"], secret: otherSecret, environment: discoveryEnvironment(port, secret: otherSecret))
        defer { node.stop(); stranger.stop() }
        let r = try runProcess(builtCommand("ppnodes"), ["--json", "--timeout", "1"], environment: discoveryEnvironment(port, secret: secret))
        #expect(r.status == 0, "\(r.stderr)")
        let list = try JSONDecoder().decode([JSONValue].self, from: Data(r.stdout.utf8))
        #expect(list.count == 2)
        guard list.count == 2, case .object(let a) = list[0], case .object(let b) = list[1] else { return }
        #expect(a["name"] == .string("alpha") && a["address"] == .string(node.address))
        #expect(a["in_cluster"] == .bool(true) && a["accepts_secret"] == .bool(true))
        #expect(a["workers"] == .int(1) && a["cores"] == .int(ProcessInfo.processInfo.activeProcessorCount))
        #expect(a["jobs_done"] == .int(0))
        // The beacon carries the pp-compatible port (from the node's log line).
        let ppPort = try #require(node.ppPort, "\(node.logText)")
        #expect(a["pp_port"] == .int(ppPort), "\(a)")
        #expect(b["name"] == .string("beta") && b["in_cluster"] == .bool(false) && b["accepts_secret"] == .null)
        let table = try runProcess(builtCommand("ppnodes"), ["--timeout", "1"], environment: discoveryEnvironment(port, secret: secret))
        #expect(table.stdout.contains("mine, secret accepted"))
        #expect(table.stdout.contains("other (key id \(try ClusterSecret(text: otherSecret, origin: "t").keyID))"))
        // Nobody on another port: exit status 1 and a message that says where it looked.
        let none = try runProcess(builtCommand("ppnodes"), ["--timeout", "0.3"], environment: discoveryEnvironment(port + 1, secret: secret))
        #expect(none.status == 1)
        #expect(none.stderr.contains("no node answered within 0.3 s"))
    }

    @Test func configAndSecretErrorsAreClear() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let conf = try dir.write("ppnode.conf", "# sample\nport = 0\nworkrs = 2\n")
        let r = try runProcess(builtCommand("ppnode"), ["--config", conf])
        #expect(r.status == 2)
        #expect(r.stderr.contains("ppnode.conf:3: unknown key 'workrs'"))
        let bad = try dir.write("bad.conf", "port = lots\n")
        let r2 = try runProcess(builtCommand("ppnode"), ["--config", bad])
        #expect(r2.stderr.contains("bad.conf:1 (port): 'lots' is not a whole number"))
        let badBroadcast = try runProcess(builtCommand("ppnode"), ["--port", "0"], environment: ["PP_SECRET": secret, "PP_BROADCAST": "lan-please"])
        #expect(badBroadcast.status == 2)
        #expect(badBroadcast.stderr.contains("PP_BROADCAST='lan-please' is neither 'off', an IPv4 address nor an interface"))
        let badVersion = try runProcess(builtCommand("ppnode"), ["--port", "0", "--pp-version", ""], environment: ["PP_SECRET": secret])
        #expect(badVersion.status == 2)
        #expect(badVersion.stderr.contains("--pp-version: '' is not a ppft version string"), "\(badVersion.stderr)")
        let badListPort = try runProcess(builtCommand("ppnodes"), ["--timeout", "0.1"], environment: ["PP_DISCOVERY_PORT": "70000"])
        #expect(badListPort.status == 2)
        #expect(badListPort.stderr.contains("PP_DISCOVERY_PORT='70000' is not a UDP port (1-65535)"), "\(badListPort.stderr)")
        // An interface name stands for its broadcast address; a bad flag names the flag.
        let loBroadcast = try runProcess(builtCommand("ppnode"), ["--port", "0", "--broadcast", "no-such-if0"], environment: ["PP_SECRET": secret])
        #expect(loBroadcast.status == 2)
        #expect(loBroadcast.stderr.contains("--broadcast='no-such-if0' is neither"), "\(loBroadcast.stderr)")
        let short = try runProcess(builtCommand("ppnode"), ["--port", "0"], environment: ["PP_SECRET": "short"])
        #expect(short.status == 2)
        #expect(short.stderr.contains("use at least 16"))
        let open = try dir.write("open-secret", "0123456789abcdef0123")
        chmod(open, 0o644)
        let o = try runProcess(builtCommand("ppnode"), ["--port", "0", "--secret-file", open])
        #expect(o.stderr.contains("chmod 600"))
        // With no secret anywhere, ppnode creates one, mode 0600, and reports its key id.
        let home = dir.path + "/home"
        let node = try NodeProcess([], secret: nil, environment: ["HOME": home, "PP_SECRET_FILE": ""])
        defer { node.stop() }
        let attributes = try FileManager.default.attributesOfItem(atPath: home + "/.config/ppnode/secret")
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect(node.logText.contains("(created now)"))
    }
}
