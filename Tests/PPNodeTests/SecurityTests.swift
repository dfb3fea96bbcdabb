import Foundation
import PPCore
import PPTesting
import ParallelPython
import Testing

/// Resident memory of a process in KiB (`VmRSS`), or nil when it is gone.
func residentKiB(_ pid: Int32) -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
    else { return nil }
    return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
}

/// The TLS key of the test secret, as `openssl -psk` takes it, and its identity.
func opensslPSK(_ text: String) throws -> (hex: String, identity: String) {
    let keys = try ClusterSecret(text: text, origin: "test").keys
    return (Hex.encode(keys.tlsKey), keys.tlsIdentity)
}

/// Writes `script` to a temporary file and starts `python3 FILE ARGS`, its stdout piped.
func startPython(_ script: String, _ arguments: [String], in dir: TemporaryDirectory) throws -> (Process, Pipe) {
    let file = try dir.write("helper-\(UUID().uuidString.prefix(8)).py", script)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", file] + arguments
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    return (p, out)
}

/// Reads one line from `pipe` (the helper prints its port first).
func firstLine(_ pipe: Pipe) -> String {
    var bytes: [UInt8] = []
    let handle = pipe.fileHandleForReading
    while true {
        let d = handle.readData(ofLength: 1)
        if d.isEmpty || d.first == 0x0a { break }
        bytes += d
    }
    return String(decoding: bytes, as: UTF8.self)
}

func stopProcess(_ p: Process) {
    if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    p.waitUntilExit()
}

@Suite("TLS on the wire and strangers on the LAN", .serialized)
struct SecurityTests {
    @Test func opensslClientTalksToANodeWithTheDerivedKey() throws {
        let node = try NodeProcess(secret: secret)
        defer { node.stop() }
        let psk = try opensslPSK(secret)
        // A HELLO frame of protocol 3 from s_client: the node answers WELCOME with its
        // info JSON, which s_client prints.
        let hello = "import struct,sys,time; name=b'openssl'; body=b'\\x01PPNP'+struct.pack('>HHI',3,3,1<<20)+bytes([len(name)])+name; sys.stdout.buffer.write(struct.pack('>I',len(body))+body); sys.stdout.flush(); time.sleep(2)"
        let r = try runProcess(
            "/bin/sh",
            ["-c", "python3 -c \"\(hello)\" | openssl s_client -connect \(node.address) -tls1_3 -psk \(psk.hex) -psk_identity \(psk.identity) -brief"]
        )
        let all = r.stdout + r.stderr
        #expect(all.contains("Protocol version: TLSv1.3"), "\(all)")
        #expect(all.contains("Server Temp Key: X25519"), "\(all)")
        #expect(r.stdout.contains("\"keyid\":\"\(psk.identity.dropFirst(8))\""), "\(r.stdout)")
        #expect(node.logText.contains("client authenticated"))

        // The same with another key: no handshake, and the node names both key ids.
        let wrong = try opensslPSK(otherSecret)
        let w = try runProcess(
            "/bin/sh",
            ["-c", "sleep 1 | openssl s_client -connect \(node.address) -tls1_3 -psk \(wrong.hex) -psk_identity \(wrong.identity) -brief"]
        )
        #expect(!(w.stdout + w.stderr).contains("Protocol version: TLSv1.3"))
        #expect(node.logText.contains("the client has key id \(wrong.identity.dropFirst(8)), this node has key id \(psk.identity.dropFirst(8))"), "\(node.logText)")
    }

    @Test func ourClientTalksToOpenSSLServer() async throws {
        let psk = try opensslPSK(secret)
        let port = Int.random(in: 40_000...49_999)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        server.arguments = ["s_server", "-accept", "127.0.0.1:\(port)", "-tls1_3", "-nocert", "-psk", psk.hex, "-psk_identity", psk.identity, "-naccept", "1"]
        // s_server quits when its stdin ends: give it a pipe that stays open.
        let stdin = Pipe()
        let output = Pipe()
        server.standardInput = stdin
        server.standardOutput = output
        server.standardError = output
        try server.run()
        defer { stopProcess(server) }
        try await Task.sleep(for: .milliseconds(500))
        var configuration = JobServer.Configuration(workers: 0, nodes: [NodeAddress(host: "127.0.0.1", port: port)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false)
        configuration.noExecutorTimeout = .seconds(2)
        let client = JobServer(configuration: configuration)
        let f = PythonFunction(name: "one", source: "def one():\n    return 1\n")
        _ = await client.mapResults(f, arguments: [JobArguments.none], as: Int.self)
        await client.shutdown()
        stopProcess(server)
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        // s_server prints the suite and the plaintext it received: our HELLO.
        #expect(text.contains("TLS_AES_128_GCM_SHA256") || text.contains("TLS_CHACHA20_POLY1305_SHA256"), "\(text)")
        #expect(text.contains("PPNP"), "\(text)")
    }

    @Test func onPathProxySeesNoPlaintextAndItsInjectionsFail() throws {
        let node = try NodeProcess(secret: secret)
        defer { node.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let pwned = dir.path + "/pwned"
        let record = dir.path + "/wire.bin"
        let (proxy, proxyOut) = try startPython(Self.proxy, [String(node.port), record, pwned], in: dir)
        defer { stopProcess(proxy) }
        let proxyPort = firstLine(proxyOut)
        let file = try dir.write("tagger.py", "def tag_MARKERSOURCE(s):\n    return s.upper()\n")
        let inputs = (0..<300).map { "\"MARKERARG-\($0)\"" }.joined(separator: "\n") + "\n"
        let r = try runProcess(
            builtCommand("pprun"),
            ["map", file + ":tag_MARKERSOURCE", "--input", "-", "--workers", "0", "--node", "127.0.0.1:" + proxyPort, "--no-discover"],
            stdin: inputs,
            environment: ["PP_SECRET": secret]
        )
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == (0..<300).map { "\"MARKERARG-\($0)\"".uppercased() })
        let wire = (try? Data(contentsOf: URL(fileURLWithPath: record))) ?? Data()
        #expect(wire.count > 5_000)
        let seen = String(decoding: wire, as: UTF8.self)
        #expect(!seen.contains("MARKERSOURCE") && !seen.contains("MARKERARG") && !seen.contains("PPNP"))
        // Its injected frames broke the TLS stream (both ways), ran nothing, and pprun
        // reconnected.
        #expect(!FileManager.default.fileExists(atPath: pwned))
        #expect(node.logText.contains("TLS record failed"), "\(node.logText)")
        #expect(!node.logText.contains("pwned"))
    }

    @Test func strangersAnnouncingHugeFramesKeepTheNodeSmall() throws {
        let node = try NodeProcess(secret: secret)
        defer { node.stop() }
        let pid = node.process.processIdentifier
        var peers: [RawPeer] = []
        defer { for p in peers { p.close() } }
        let chunk = [UInt8](repeating: 0x41, count: 1 << 20)
        for _ in 0..<16 {
            let peer = try RawPeer(port: node.port)
            // A native frame header announcing 64 MiB, then a few MiB of it.
            peer.send([0x04, 0x00, 0x00, 0x00, 0x10])
            for _ in 0..<4 { peer.send(chunk) }
            peers.append(peer)
        }
        var peak = 0
        for _ in 0..<20 {
            peak = max(peak, residentKiB(pid) ?? 0)
            usleep(50_000)
        }
        #expect(peak > 0 && peak < 100 * 1024, "node resident \(peak) KiB")
        // A good client is still served.
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("work.py", work)
        let r = try runProcess(builtCommand("pprun"), ["map", file + ":square", "--range", "0:20", "--workers", "0", "--node", node.address, "--no-discover"], environment: ["PP_SECRET": secret])
        #expect(r.status == 0 && r.lines == (0..<20).map { String($0 * $0) }, "\(r.stderr)")
    }

    @Test func handshakesAreCappedPerSourceAddress() throws {
        let node = try NodeProcess(secret: secret)
        defer { node.stop() }
        // 20 idle connections from one address: 16 are kept for their handshake, the
        // others closed at once.
        let peers = try (0..<20).map { _ in try RawPeer(port: node.port) }
        defer { for p in peers { p.close() } }
        #expect(waitFor(seconds: 10) { node.logText.components(separatedBy: "connection refused").count - 1 >= 4 }, "\(node.logText)")
        #expect(node.logText.contains("16 connections from 127.0.0.1 are already in their handshake (cap 16)"))
    }

    @Test func aSilentNodeFailsTheClientsHandshakeInTime() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // Accepts and never speaks.
        let (silent, silentOut) = try startPython(
            "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen(4)\nprint(s.getsockname()[1], flush=True)\nconns = []\nwhile True:\n    c, _ = s.accept()\n    conns.append(c)\n",
            [],
            in: dir
        )
        defer { stopProcess(silent) }
        let port = try #require(Int(firstLine(silentOut)))
        var configuration = JobServer.Configuration(workers: 0, nodes: [NodeAddress(host: "127.0.0.1", port: port)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false)
        configuration.noExecutorTimeout = .seconds(7)
        let client = JobServer(configuration: configuration)
        let f = PythonFunction(name: "one", source: "def one():\n    return 1\n")
        let r = await client.mapResults(f, arguments: [JobArguments.none], as: Int.self)
        await client.shutdown()
        guard case .failure(let e) = r[0] else { Issue.record("a silent node ran a job"); return }
        #expect(e.code == .noExecutor && e.message.contains("no TLS handshake and WELCOME from the node within 5 s"), "\(e)")
    }

    @Test func discoveryListensOnlyOnTheInterfaceOfHost() throws {
        let port = Int.random(in: 40_000...49_999)
        let node = try NodeProcess(secret: secret, environment: ["PP_BROADCAST": "127.255.255.255", "PP_DISCOVERY_PORT": String(port)])
        defer { node.stop() }
        #expect(waitFor(seconds: 10) { node.logText.contains("broadcast beacons on") })
        // --host 127.0.0.1 (the harness's): the UDP socket is bound to the device lo.
        let ss = try runProcess("/usr/bin/env", ["ss", "-ulpn", "sport = :\(port)"])
        let line = ss.lines.first { $0.contains("pid=\(node.process.processIdentifier),") } ?? ""
        #expect(line.contains("%lo:\(port)"), "\(ss.stdout)")
    }

    @Test func forgedBeaconsKeepPprunSmall() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let port = Int.random(in: 40_000...49_999)
        let keyID = try ClusterSecret(text: secret, origin: "t").keyID
        // Ten fake nodes with our (public) key id: each accepts connections and streams
        // a 64 MiB frame's worth of bytes at whoever connects.
        let (fakes, fakesOut) = try startPython(Self.fakeNodes, [String(port), keyID], in: dir)
        defer { stopProcess(fakes) }
        #expect(firstLine(fakesOut) == "ready")
        let file = try dir.write("work.py", work)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: builtCommand("pprun"))
        p.arguments = ["map", file + ":slow_square", "--range", "0:100", "--workers", "1"]
        var env = ProcessInfo.processInfo.environment
        env["PP_SECRET"] = secret
        env["PP_BROADCAST"] = "127.255.255.255"
        env["PP_DISCOVERY_PORT"] = String(port)
        env["PP_DNSSD"] = "off"
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        defer { stopProcess(p) }
        let errText = LockedText()
        Thread {
            while true {
                let d = err.fileHandleForReading.availableData
                if d.isEmpty { break }
                errText.append(String(decoding: d, as: UTF8.self))
            }
        }.start()
        var peak = 0
        while p.isRunning {
            peak = max(peak, residentKiB(p.processIdentifier) ?? 0)
            usleep(20_000)
        }
        let lines = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(p.terminationStatus == 0, "\(errText.text)")
        #expect(lines == (0..<100).map { String($0 * $0) })
        #expect(peak > 0 && peak < 100 * 1024, "pprun resident \(peak) KiB")
        #expect(errText.text.contains("TLS handshake failed"), "\(errText.text)")
    }

    @Test func aNodeWithTheKeyCannotInjectOutputOrHoldATimedJob() async throws {
        // The worst node: it holds the key (openssl s_server with the derived PSK), then
        // offers a window of 2^32-1, answers job 1 with two JSON values ("a line
        // injected into pprun's output"), and keeps the connection alive with pings
        // but never answers job 2, which has a timeout.
        let psk = try opensslPSK(secret)
        let port = Int.random(in: 40_000...49_999)
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // The script's frames go to s_server's stdin through a pipe; s_server sends
        // them once a client is connected.
        let (frames, framesOut) = try startPython(Self.fakeNodeScript, [], in: dir)
        defer { stopProcess(frames) }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        server.arguments = ["s_server", "-accept", "127.0.0.1:\(port)", "-tls1_3", "-nocert", "-psk", psk.hex, "-psk_identity", psk.identity, "-naccept", "1", "-quiet"]
        server.standardInput = framesOut
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { stopProcess(server) }
        // Wait until s_server listens (it accepts one connection only: do not probe it).
        let listening = String(format: ":%04X 00000000:0000 0A", port)
        for _ in 0..<500 where !((try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8)) ?? "").contains(listening) {
            try await Task.sleep(for: .milliseconds(10))
        }
        var configuration = JobServer.Configuration(workers: 0, nodes: [NodeAddress(host: "127.0.0.1", port: port)], secret: try ClusterSecret(text: secret, origin: "test"), discover: false)
        configuration.noExecutorTimeout = .seconds(30)
        let client = JobServer(configuration: configuration)
        let f = PythonFunction(name: "echo", source: "def echo(x):\n    return x\n")
        let first = try client.submit(f, 1, as: Int.self)
        let second = try client.submit(f, 2, as: Int.self, timeout: .seconds(1))
        let one = await first.result
        let two = await second.result
        await client.shutdown()
        guard case .failure(let e1) = one, case .failure(let e2) = two else {
            Issue.record("the fake node's answers were accepted: \(one) \(two)")
            return
        }
        #expect(e1.code == .protocolError && e1.message.contains("not one JSON value"), "\(e1)")
        #expect(e2.code == .timeout && e2.message.contains("the client stopped waiting"), "\(e2)")
    }

    @Test func aResultTooLargeFailsAloneAndNothingReruns() throws {
        let node = try NodeProcess(secret: secret)
        defer { node.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("big.py", """
            import os
            def big(x, marker):
                with open(marker, "a") as f:
                    f.write("%d\\n" % x)
                return "x" * (70 << 20) if x == 3 else x
            """)
        let marker = dir.path + "/ran"
        let inputs = (0..<8).map { "[\($0), \"\(marker)\"]" }.joined(separator: "\n") + "\n"
        let r = try runProcess(
            builtCommand("pprun"),
            ["map", file + ":big", "--input", "-", "--workers", "0", "--node", node.address, "--no-discover"],
            stdin: inputs,
            environment: ["PP_SECRET": secret]
        )
        #expect(r.status == 1)
        #expect(r.lines == ["0", "1", "2", "4", "5", "6", "7"], "\(r.stdout.prefix(200))")
        #expect(r.stderr.contains("result too large (") && r.stderr.contains("limit 67108864)"), "\(r.stderr.prefix(2000))")
        // Every job ran exactly once: the big result did not break the connection.
        let ran = (try? String(contentsOfFile: marker, encoding: .utf8)) ?? ""
        let runs: [String] = ran.split(separator: "\n").map(String.init).sorted()
        let expected: [String] = (0..<8).map { String($0) }
        #expect(runs == expected)
    }

    /// The fake node's frames on stdout, for s_server to send once a client is
    /// connected: WELCOME, a bad RESULTS 1.5 s later, then a PING every 0.3 s for 12 s.
    static let fakeNodeScript = #"""
        import struct, sys, time
        def frame(kind, body):
            return struct.pack(">IB", len(body) + 1, kind) + body
        sys.stdout.buffer.write(frame(0x04, struct.pack(">HII", 3, 0xFFFFFFFF, 1 << 20) + b"{}"))
        sys.stdout.flush()
        time.sleep(1.5)  # the client has connected and sent its jobs by then
        payload = b'1\n"injected"'
        result = struct.pack(">QBQ", 1, 0, 5) + struct.pack(">II", 0, 0) + struct.pack(">I", len(payload)) + payload
        sys.stdout.buffer.write(frame(0x20, struct.pack(">I", 1) + result))
        sys.stdout.flush()
        for i in range(40):
            time.sleep(0.3)
            sys.stdout.buffer.write(frame(0x13, struct.pack(">Q", i)))
            sys.stdout.flush()
        """#

    /// A TCP proxy that records every byte and, on the first connection, injects a
    /// forged BUNDLE + SUBMIT (plaintext, protocol 2) and a forged TLS record into
    /// both directions.
    static let proxy = #"""
        import hashlib, json, os, socket, struct, sys, threading
        node_port, record, pwned = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        spec = json.dumps({"name": "pwn", "source": "def pwn():\n    open(%r, 'w').write('x')\n" % pwned}).encode()
        digest = hashlib.sha256(spec).digest()
        def frame(kind, body):
            return struct.pack(">IB", len(body) + 1, kind) + body
        forged = frame(0x11, digest + spec) + frame(0x10, struct.pack(">I", 1) + struct.pack(">Q", 1 << 40) + digest + struct.pack(">II", 0, 2) + b"[]")
        forged += b"\x17\x03\x03\x00\x40" + os.urandom(64)
        log = open(record, "wb")
        lock = threading.Lock()
        def pump(src, dst, inject):
            sent, done = 0, False
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    with lock:
                        log.write(data)
                        log.flush()
                    dst.sendall(data)
                    sent += len(data)
                    if inject and not done and sent > 2000:
                        done = True
                        dst.sendall(forged)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        print(srv.getsockname()[1], flush=True)
        first = True
        while True:
            c, _ = srv.accept()
            n = socket.create_connection(("127.0.0.1", node_port))
            threading.Thread(target=pump, args=(c, n, first), daemon=True).start()
            threading.Thread(target=pump, args=(n, c, first), daemon=True).start()
            first = False
        """#

    /// Ten fake nodes: TCP listeners that stream junk after a 64 MiB frame header, and
    /// beacons for them carrying the real cluster's key id, every 0.2 s for 30 s.
    static let fakeNodes = #"""
        import json, socket, sys, threading, time
        port, keyid = int(sys.argv[1]), sys.argv[2]
        def serve(srv):
            while True:
                c, _ = srv.accept()
                def flood(c=c):
                    try:
                        c.sendall(b"\x04\x00\x00\x00\x04")
                        junk = b"A" * 65536
                        for _ in range(1024):
                            c.sendall(junk)
                    except OSError:
                        pass
                    c.close()
                threading.Thread(target=flood, daemon=True).start()
        ports = []
        for _ in range(10):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            ports.append(s.getsockname()[1])
            threading.Thread(target=serve, args=(s,), daemon=True).start()
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        print("ready", flush=True)
        for _ in range(150):
            for i, p in enumerate(ports):
                beacon = {"id": "fake%d" % i, "name": "fake%d" % i, "port": p, "keyid": keyid, "protocol": 3,
                          "cores": 64, "workers": 64, "version": "0.1.0"}
                b.sendto(b"SPPNB\x01" + json.dumps(beacon).encode(), ("127.255.255.255", port))
            time.sleep(0.2)
        """#
}

/// Text appended by one thread and read by another.
final class LockedText: @unchecked Sendable {
    private let lock = NSLock()
    private var value = ""
    func append(_ s: String) {
        self.lock.lock()
        self.value += s
        self.lock.unlock()
    }
    var text: String {
        self.lock.lock()
        defer { self.lock.unlock() }
        return self.value
    }
}
