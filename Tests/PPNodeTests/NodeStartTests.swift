// ppnode's start: bad starts exit 2 with the cause and the fix and leave no worker
// behind; the secret file (explicit paths must exist, the default one is created once
// even by nodes starting together, links and modes); the pp-compatible port off unless
// asked for. Real ppnode processes on loopback, ephemeral ports.

import Foundation
import PPCore
import PPTesting
import Testing

/// A `--python` that records each worker's pid in `pids` before it becomes python3
/// (`exec` keeps the pid), so a test can check the node's workers are gone.
struct RecordingPython {
    let path: String
    let pidFile: String

    init(in dir: TemporaryDirectory, exitStatus: Int? = nil) throws {
        self.pidFile = dir.path + "/pids"
        let body = exitStatus.map { "exit \($0)" } ?? "exec python3 \"$@\""
        self.path = try dir.write("python-\(exitStatus.map(String.init) ?? "ok").sh", "#!/bin/sh\necho $$ >> '\(self.pidFile)'\n\(body)\n")
        chmod(self.path, 0o755)
    }

    /// The pids of the workers started so far.
    var pids: [Int32] {
        ((try? String(contentsOfFile: self.pidFile, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    /// The recorded workers that still exist (as processes or unreaped zombies).
    var survivors: [Int32] {
        self.pids.filter { kill($0, 0) == 0 || errno != ESRCH }
    }
}

/// The TCP ports process `pid` listens on (its socket descriptors matched against the
/// LISTEN entries of /proc/net/tcp and tcp6).
func listeningPorts(of pid: Int32) -> Set<Int> {
    let fdDir = "/proc/\(pid)/fd"
    let inodes = Set(((try? FileManager.default.contentsOfDirectory(atPath: fdDir)) ?? []).compactMap { fd -> String? in
        guard let link = try? FileManager.default.destinationOfSymbolicLink(atPath: fdDir + "/" + fd), link.hasPrefix("socket:[") else { return nil }
        return String(link.dropFirst(8).dropLast())
    })
    var ports: Set<Int> = []
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = (try? String(contentsOfFile: table, encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ")
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            guard f.count > 9, f[3] == "0A", inodes.contains(String(f[9])), let port = Int(f[1].split(separator: ":").last ?? "", radix: 16) else { continue }
            ports.insert(port)
        }
    }
    return ports
}

@Suite("ppnode start, secrets and the pp port", .serialized)
struct NodeStartTests {
    /// Runs ppnode to its exit with the test secret, loopback broadcast and no DNS-SD.
    func ppnode(_ arguments: [String], environment: [String: String] = [:]) throws -> ProcessResult {
        var env = ["PP_SECRET": secret, "PP_BROADCAST": "127.255.255.255", "PP_DNSSD": "off"]
        for (k, v) in environment { env[k] = v }
        return try runProcess(builtCommand("ppnode"), arguments, environment: env)
    }

    @Test func portInUseExitsTwoAndStopsItsWorkers() throws {
        let first = try NodeProcess(["--workers", "1"], secret: secret)
        defer { first.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let python = try RecordingPython(in: dir)
        let r = try ppnode(["--host", "127.0.0.1", "--port", String(first.port), "--workers", "2", "--python", python.path])
        #expect(r.status == 2, "\(r.stderr)")
        #expect(r.stderr.contains("ppnode: cannot listen on 127.0.0.1:\(first.port): address already in use; stop the other ppnode (or whatever holds the port) or pick another --port"), "\(r.stderr)")
        #expect(!r.stderr.contains("ppnode ready") && !r.stderr.contains("broadcast beacons on"))
        // The node waited for its workers before it exited (they may not have started).
        #expect(python.survivors.isEmpty, "workers left: \(python.survivors)")
        // The first node still serves.
        let check = try runProcess(builtCommand("pprun"), ["map", try dir.write("w.py", work) + ":square", "3", "--workers", "0", "--node", first.address, "--no-discover"], environment: ["PP_SECRET": secret])
        #expect(check.status == 0 && check.lines == ["9"], "\(check.stderr)")
    }

    @Test func badHostExitsTwo() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let python = try RecordingPython(in: dir)
        // 203.0.113.7 is TEST-NET-3: never an address of this machine.
        let foreign = try ppnode(["--host", "203.0.113.7", "--port", "0", "--workers", "1", "--python", python.path])
        #expect(foreign.status == 2, "\(foreign.stderr)")
        #expect(foreign.stderr.contains("ppnode: cannot listen on 203.0.113.7:0: 203.0.113.7 is not an address of this machine; give one of its addresses to --host, or 0.0.0.0 for every interface"), "\(foreign.stderr)")
        let unknown = try ppnode(["--host", "not-a-host.invalid", "--port", "0", "--workers", "1", "--python", python.path])
        #expect(unknown.status == 2, "\(unknown.stderr)")
        #expect(unknown.stderr.contains("ppnode: cannot listen on not-a-host.invalid:0: 'not-a-host.invalid' is neither an IP address nor a name this machine can resolve"), "\(unknown.stderr)")
        #expect(python.survivors.isEmpty, "workers left: \(python.survivors)")
    }

    @Test func noWorkerCanStartExitsTwoBeforeAdvertising() throws {
        let missing = try ppnode(["--host", "127.0.0.1", "--port", "0", "--workers", "2", "--python", "/nonexistent/python3"])
        #expect(missing.status == 2, "\(missing.stderr)")
        #expect(missing.stderr.contains("ppnode: no Python worker could start: cannot start '/nonexistent/python3': No such file or directory; install python3 or point --python / PP_PYTHON at an interpreter"), "\(missing.stderr)")
        // Never ready, never advertised.
        #expect(!missing.stderr.contains("ppnode ready") && !missing.stderr.contains("broadcast beacons on"), "\(missing.stderr)")
        // An interpreter that starts and dies before it is ready: the same, with its status.
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let dying = try RecordingPython(in: dir, exitStatus: 3)
        let r = try ppnode(["--host", "127.0.0.1", "--port", "0", "--workers", "2", "--python", dying.path])
        #expect(r.status == 2, "\(r.stderr)")
        #expect(r.stderr.contains("ppnode: no Python worker could start: '\(dying.path)' exited"), "\(r.stderr)")
        #expect(r.stderr.contains("exited with status 3 before it was ready; install python3 or point --python / PP_PYTHON at an interpreter"), "\(r.stderr)")
        #expect(!r.stderr.contains("ppnode ready"))
        #expect(dying.pids.count >= 3, "\(dying.pids)")  // the pool's start-failure limit
        #expect(dying.survivors.isEmpty, "workers left: \(dying.survivors)")
    }

    @Test func clientWeightsAreChecked() throws {
        for value in ["10.0.0.5=0", "10.0.0.5", "=2", "10.0.0.5=lots", "10.0.0.5=101"] {
            let r = try ppnode(["--port", "0", "--client-weights", value])
            #expect(r.status == 2, "\(value): \(r.stderr)")
            #expect(r.stderr.contains("--client-weights: '\(value)' is not a list of ADDRESS=WEIGHT pairs, such as 10.0.0.5=2,10.0.0.7=0.5 (weights from 0.01 to 100)"), "\(r.stderr)")
        }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let conf = try dir.write("ppnode.conf", "client-weights = 10.0.0.5=2, x\n")
        let file = try ppnode(["--port", "0", "--config", conf])
        #expect(file.status == 2 && file.stderr.contains("ppnode.conf:1 (client-weights): '10.0.0.5=2, x' is not a list"), "\(file.stderr)")
    }

    @Test func maxFrameIsBounded() throws {
        for (value, shown) in [("5GiB", "5GiB"), ("4294967296", "4294967296"), ("65535", "65535"), ("-1", "-1"), ("lots", "lots")] {
            let r = try ppnode(["--port", "0", "--max-frame=\(value)"])
            #expect(r.status == 2, "\(value): \(r.stderr)")
            #expect(r.stderr.contains("--max-frame: '\(shown)' is not a frame limit ppnode supports; give 65536 (64 KiB) to 1073741824 (1 GiB) bytes"), "\(r.stderr)")
        }
        let env = try ppnode(["--port", "0"], environment: ["PP_MAX_FRAME": "2GiB"])
        #expect(env.status == 2 && env.stderr.contains("PP_MAX_FRAME: '2GiB' is not a frame limit"), "\(env.stderr)")
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let conf = try dir.write("ppnode.conf", "max-frame = 8GiB\n")
        let file = try ppnode(["--port", "0", "--config", conf])
        #expect(file.status == 2 && file.stderr.contains("ppnode.conf:1 (max-frame): '8GiB' is not a frame limit"), "\(file.stderr)")
        // The largest limit is accepted and the node serves (a limit over 4 GiB used to
        // crash it at its first client).
        let node = try NodeProcess(["--max-frame", "1GiB", "--workers", "1"], secret: secret)
        defer { node.stop() }
        let r = try runProcess(builtCommand("pprun"), ["map", try dir.write("w.py", work) + ":square", "4", "--workers", "0", "--node", node.address, "--no-discover"], environment: ["PP_SECRET": secret])
        #expect(r.status == 0 && r.lines == ["16"], "\(r.stderr)")
    }

    @Test func explicitSecretFileMustExist() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let home = dir.path + "/home"
        let missing = dir.path + "/no-such/secret"
        // No PP_SECRET (env -u), a fresh HOME: only the explicit path can supply a secret.
        func run(_ arguments: [String], _ extra: [String: String] = [:]) throws -> ProcessResult {
            var env = ["HOME": home, "XDG_CONFIG_HOME": "", "PP_SECRET_FILE": "", "PP_BROADCAST": "127.255.255.255", "PP_DNSSD": "off"]
            for (k, v) in extra { env[k] = v }
            return try runProcess("/usr/bin/env", ["-u", "PP_SECRET", builtCommand("ppnode"), "--port", "0", "--host", "127.0.0.1"] + arguments, environment: env)
        }
        let viaEnv = try run([], ["PP_SECRET_FILE": missing])
        #expect(viaEnv.status == 2, "\(viaEnv.stderr)")
        #expect(viaEnv.stderr.contains("ppnode: the secret file \(missing) (from PP_SECRET_FILE) does not exist; fix the path or copy your cluster's secret file there"), "\(viaEnv.stderr)")
        let viaFlag = try run(["--secret-file", missing])
        #expect(viaFlag.status == 2)
        #expect(viaFlag.stderr.contains("ppnode: the secret file \(missing) (from --secret-file) does not exist"), "\(viaFlag.stderr)")
        let conf = try dir.write("ppnode.conf", "secret-file = \(missing)\n")
        let viaConfig = try run(["--config", conf])
        #expect(viaConfig.status == 2)
        #expect(viaConfig.stderr.contains("ppnode: the secret file \(missing) (from \(conf):1 (secret-file)) does not exist"), "\(viaConfig.stderr)")
        // No secret was created anywhere: not at the explicit path, not at the default.
        #expect(!FileManager.default.fileExists(atPath: missing))
        #expect(!FileManager.default.fileExists(atPath: home + "/.config/ppnode/secret"))
    }

    @Test func eightNodesStartingTogetherAgreeOnOneSecret() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let config = dir.path + "/config"
        let environment = ["HOME": dir.path + "/home", "XDG_CONFIG_HOME": config, "PP_SECRET_FILE": ""]
        let nodes = NodeCollector()
        let threads = (0..<8).map { _ in
            Thread {
                let result = Result { try NodeProcess(["--workers", "1"], secret: nil, environment: environment) }
                nodes.append(result)
            }
        }
        for t in threads { t.start() }
        nodes.waitForCount(8)
        let started = nodes.all.compactMap { try? $0.get() }
        defer { for n in started { n.stop() } }
        #expect(started.count == 8, "\(nodes.all.compactMap { if case .failure(let e) = $0 { "\(e)" } else { nil } })")
        let file = config + "/ppnode/secret"
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let keyID = try ClusterSecret(text: text, origin: "t").keyID
        for n in started {
            #expect(n.logText.contains("secret.keyid=\(keyID)"), "\(n.logText)")
        }
        #expect(started.filter { $0.logText.contains("(created now)") }.count == 1)
        // Mode 0600, directory 0700, no temporary file left.
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: config + "/ppnode") == ["secret"])
        #expect((try FileManager.default.attributesOfItem(atPath: config + "/ppnode")[.posixPermissions] as? Int) == 0o700)
    }

    @Test func symlinkedSecretsAreCheckedAtTheirTarget() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let target = try dir.write("real-secret", "a-linked-secret-0123456789\n")
        chmod(target, 0o600)
        let link = dir.path + "/secret-link"
        symlink(target, link)
        let node = try NodeProcess(["--secret-file", link, "--workers", "1"], secret: nil)
        defer { node.stop() }
        #expect(node.logText.contains("secret.keyid=\(try ClusterSecret(text: "a-linked-secret-0123456789", origin: "t").keyID)"), "\(node.logText)")

        let open = try dir.write("open-secret", "an-open-secret-0123456789\n")
        chmod(open, 0o644)
        let openLink = dir.path + "/open-link"
        symlink(open, openLink)
        let r = try runProcess("/usr/bin/env", ["-u", "PP_SECRET", builtCommand("ppnode"), "--port", "0", "--secret-file", openLink])
        #expect(r.status == 2)
        let real = try #require(realpath(open, nil).map { p in defer { free(p) }; return String(cString: p) })
        #expect(r.stderr.contains("ppnode: the secret file \(openLink) (a link to \(real)) has mode 0644: group or others may read or change it; run chmod 600 \(real)"), "\(r.stderr)")

        let dangling = dir.path + "/dangling"
        symlink(dir.path + "/nowhere", dangling)
        let d = try runProcess("/usr/bin/env", ["-u", "PP_SECRET", builtCommand("ppnode"), "--port", "0", "--secret-file", dangling])
        #expect(d.status == 2)
        #expect(d.stderr.contains("the secret file \(dangling) is a symbolic link to \(dir.path)/nowhere, which does not exist"), "\(d.stderr)")

        let directory = dir.path + "/a-directory"
        mkdir(directory, 0o700)
        let notFile = try runProcess("/usr/bin/env", ["-u", "PP_SECRET", builtCommand("ppnode"), "--port", "0", "--secret-file", directory])
        #expect(notFile.status == 2)
        #expect(notFile.stderr.contains("the secret file \(directory) is not a regular file"), "\(notFile.stderr)")

        // Another user's file (only root can make one here).
        if geteuid() == 0 {
            let theirs = try dir.write("their-secret", "someone-elses-secret-0123456789\n")
            chmod(theirs, 0o600)
            chown(theirs, 65534, 65534)
            let o = try runProcess("/usr/bin/env", ["-u", "PP_SECRET", builtCommand("ppnode"), "--port", "0", "--secret-file", theirs])
            #expect(o.status == 2)
            #expect(o.stderr.contains("the secret file \(theirs) is owned by"), "\(o.stderr)")
            #expect(o.stderr.contains("uid 65534"), "\(o.stderr)")
            #expect(o.stderr.contains("run chown root \(theirs), or run as its owner"), "\(o.stderr)")
        }
    }

    @Test func ppPortIsClosedUnlessAskedFor() throws {
        let discoveryPort = Int.random(in: 40_000...49_999)
        let env = ["PP_BROADCAST": "127.255.255.255", "PP_DISCOVERY_PORT": String(discoveryPort)]
        let node = try NodeProcess(["--workers", "1"], secret: secret, environment: env)
        defer { node.stop() }
        // One listening socket: the native port. No pp listener, no warning, no pp field.
        #expect(listeningPorts(of: node.process.processIdentifier) == [node.port])
        #expect(node.ppPort == nil)
        #expect(!node.logText.contains("pp-compatible listener ready"))
        #expect(!node.logText.contains("Parallel Python compatible port open"))
        let probe = """
            import socket, json
            p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            p.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            p.settimeout(10)
            p.sendto(b"PPNQ\\x02" + bytes(1395), ("127.255.255.255", \(discoveryPort)))
            while True:
                data, _ = p.recvfrom(2000)
                beacon = json.loads(data[6:])
                if beacon["port"] == int(PORT):
                    print(json.dumps(beacon, sort_keys=True))
                    break
            """
        let closed = try runPython(probe.replacingOccurrences(of: "PORT", with: String(node.port)))
        #expect(closed.count == 1 && !closed[0].contains("\"pp\""), "\(closed)")

        // Asked for: a second listener, the warning, and the pp field in the beacon.
        let open = try NodeProcess(["--workers", "1", "--pp-port", "0"], secret: secret, environment: env)
        defer { open.stop() }
        let ppPort = try #require(open.ppPort, "\(open.logText)")
        #expect(listeningPorts(of: open.process.processIdentifier) == [open.port, ppPort])
        #expect(open.logText.contains("ppft's protocol is unencrypted and unauthenticated after its SHA-1 challenge"), "\(open.logText)")
        #expect(open.logText.contains("anyone who knows the secret can run code as this user"))
        let beacon = try runPython(probe.replacingOccurrences(of: "PORT", with: String(open.port)))
        #expect(beacon.count == 1 && beacon[0].contains("\"pp\": \(ppPort)"), "\(beacon)")

        // --no-pp still works, and contradicts --pp-port.
        let both = try ppnode(["--port", "0", "--pp-port", "0", "--no-pp"])
        #expect(both.status == 2 && both.stderr.contains("--pp-port and --no-pp contradict each other"), "\(both.stderr)")
        let off = try NodeProcess(["--workers", "1", "--no-pp"], secret: secret, environment: ["PP_PP_PORT": "0"])
        defer { off.stop() }
        #expect(off.ppPort == nil && listeningPorts(of: off.process.processIdentifier) == [off.port])
    }
}

/// Collects results from threads.
final class NodeCollector: @unchecked Sendable {
    // Guarded by `condition`.
    private var items: [Result<NodeProcess, any Error>] = []
    private let condition = NSCondition()

    func append(_ item: Result<NodeProcess, any Error>) {
        self.condition.lock()
        self.items.append(item)
        self.condition.broadcast()
        self.condition.unlock()
    }

    func waitForCount(_ n: Int) {
        self.condition.lock()
        while self.items.count < n { self.condition.wait() }
        self.condition.unlock()
    }

    var all: [Result<NodeProcess, any Error>] {
        self.condition.lock()
        defer { self.condition.unlock() }
        return self.items
    }
}
