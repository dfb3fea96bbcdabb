// Discovery across hosts: each host is a network namespace on one bridge with its own
// D-Bus and avahi-daemon (scripts/netlab; ../shared/NETLAB.md). Needs root.

import Foundation
import PPTesting
import Synchronization
import Testing

/// One result line of `where`: `[i, host address, pid of the ppnode that ran it]`.
struct Placement: Hashable {
    var index: Int
    var address: String
    var node: Int32

    init?(_ line: String) {
        guard let a = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [Any], a.count == 3,
            let i = a[0] as? Int, let address = a[1] as? String, let pid = a[2] as? Int
        else { return nil }
        self.index = i
        self.address = address
        self.node = Int32(pid)
    }
}

/// Python: where a job ran (its host's address on the lab network and its node's pid).
/// Jobs from `gate_from` on wait (at most 60 s) for the file `gate` to exist.
/// A job `where(i)` that returns `[i, its host's lab address, its worker's parent pid]`
/// after `seconds`. `gates` hold jobs back: job `i` first waits (at most 60 s) until the
/// file of the gate with the largest `from` at or below `i` exists.
func placementSource(gates: [(from: Int, path: String)] = [], seconds: Double = 0) -> String {
    let list = gates.sorted { $0.from > $1.from }.map { "(\($0.from), \"\($0.path)\")" }.joined(separator: ", ")
    return """
    import os, socket, time

    GATES = [\(list)]

    def where(i):
        for start, path in GATES:
            if i >= start:
                for _ in range(6000):
                    if os.path.exists(path):
                        break
                    time.sleep(0.01)
                break
        time.sleep(\(seconds))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("10.88.0.254", 9))
        address = s.getsockname()[0]
        s.close()
        return [i, address, os.getppid()]
    """
}

let labSecret = "netlab-secret-0123456789abcdef"
let strangerSecret = "another-cluster-secret-987654321"

@Suite("discovery across hosts (network namespaces, avahi-daemon per host)", .serialized)
struct NetLabTests {
    @Test func dnssdFindsBothNodesAndBroadcastWorksWithoutAvahi() throws {
        let lab = try Lab(hosts: 3)
        defer { lab.down() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("where.py", placementSource())
        let one = try lab.node(1, ["--name", "one", "--workers", "1", "--broadcast", "eth0"], secret: labSecret)
        let two = try lab.node(2, ["--name", "two", "--workers", "2"], secret: labSecret)
        defer { one.stop(); two.stop() }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        // An interface name stands for its broadcast address.
        #expect(one.logText.contains("broadcast=10.88.0.255:7340"), "\(one.logText)")

        // Nodes are announced once avahi has probed their names (about a second).
        for node in [one, two] {
            #expect(waitFor(seconds: 20) { node.logText.contains("DNS-SD on: registered") }, "\(node.logText)")
        }
        // DNS-SD alone: on another discovery port host 3 hears no beacon and its probe
        // reaches nobody.
        let dnssdOnly = ["PP_SECRET": labSecret, "PP_DISCOVERY_PORT": "7399"]
        let listed = try lab.run(3, "ppnodes", ["--json", "--timeout", "2"], environment: dnssdOnly)
        #expect(listed.status == 0, "\(listed.stderr)")
        let rows = try Self.rows(listed.stdout)
        #expect(rows.count == 2, "\(listed.stdout)")
        for (name, address, workers) in [("one", "10.88.0.1:7340", 1), ("two", "10.88.0.2:7340", 2)] {
            let row = rows.first { $0["name"] as? String == name }
            #expect(row?["address"] as? String == address)
            #expect(row?["cores"] as? Int == cores)
            #expect(row?["workers"] as? Int == workers)
            #expect(row?["found_by"] as? [String] == ["DNS-SD"])
            #expect(row?["in_cluster"] as? Bool == true && row?["accepts_secret"] as? Bool == true)
            #expect((row?["python"] as? String)?.hasPrefix("3.") == true)
            #expect(row?["implementation"] as? String == "cpython")
        }
        // The TXT record as avahi's own tools see it, Python version included (it is
        // added by an update once the first worker has started).
        let browse = try runProcess(lab.script, ["exec", lab.name, "3", "avahi-browse", "-rpt", "_ppnode._tcp"])
        let resolved = browse.lines.filter { $0.hasPrefix("=") }
        #expect(resolved.count == 2, "\(browse.stdout) \(browse.stderr)")
        for line in resolved {
            for key in ["id=", "protocol=3", "cores=\(cores)", "workers=", "arch=", "os=Linux", "python=3.", "keyid="] {
                #expect(line.contains("\"\(key)"), "\(line)")
            }
        }
        let run = try lab.run(3, "pprun", ["map", file + ":where", "--range", "0:30", "--workers", "0"], environment: dnssdOnly)
        #expect(run.status == 0, "\(run.stderr)")
        let placed = run.lines.compactMap(Placement.init)
        #expect(placed.map(\.index) == Array(0..<30))
        #expect(Set(placed.map(\.node)).isSubset(of: [one.process.processIdentifier, two.process.processIdentifier]))

        // Broadcast alone: host 3's avahi-daemon stops; it says DNS-SD is off and why.
        try lab.avahi(3, "stop")
        let byBroadcast = try lab.run(3, "ppnodes", ["--json", "--timeout", "2"], environment: ["PP_SECRET": labSecret])
        #expect(byBroadcast.status == 0, "\(byBroadcast.stderr)")
        #expect(byBroadcast.stderr.contains("DNS-SD off"), "\(byBroadcast.stderr)")
        let rows2 = try Self.rows(byBroadcast.stdout)
        #expect(Set(rows2.compactMap { $0["address"] as? String }) == ["10.88.0.1:7340", "10.88.0.2:7340"])
        #expect(rows2.allSatisfy { $0["found_by"] as? [String] == ["broadcast"] && $0["cores"] as? Int == cores })
        let run2 = try lab.run(3, "pprun", ["map", file + ":where", "--range", "0:30", "--workers", "0"], environment: ["PP_SECRET": labSecret, "PP_LOG_LEVEL": "info"])
        #expect(run2.status == 0, "\(run2.stderr)")
        #expect(run2.stderr.contains("DNS-SD off"), "\(run2.stderr)")
        #expect(run2.lines.compactMap(Placement.init).map(\.index) == Array(0..<30))
    }

    @Test func nodesThatStartDieAndComeBackWhileJobsRun() throws {
        let lab = try Lab(hosts: 3)
        defer { lab.down() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // Gates make each node's share certain: jobs 50-99 wait for `middle`, opened only
        // once the first node is dead, so the second runs them; jobs 100-199 wait for
        // `last`, opened once the second is dead, so only the restarted first runs them.
        let middle = dir.path + "/middle", last = dir.path + "/last"
        let total = 200
        let file = try dir.write("where.py", placementSource(gates: [(50, middle), (100, last)], seconds: 0.01))
        // pprun starts with no node anywhere: its jobs wait.
        let run = try WatchedProcess(
            lab.launcher(3) + [builtCommand("pprun"), "map", file + ":where", "--range", "0:\(total)", "--workers", "0"],
            environment: ["PP_SECRET": labSecret]
        )
        var nodes: [NodeProcess] = []
        defer {
            for n in nodes { n.stop() }
            _ = run.finish(seconds: 0)
        }
        usleep(500_000)
        #expect(run.lines.isEmpty)
        // A node starts half-way through pprun's wait and is used: it runs jobs 0-49,
        // then holds jobs that wait for `middle`.
        let first = try lab.node(1, ["--name", "first", "--workers", "2"], secret: labSecret)
        nodes.append(first)
        #expect(run.wait(seconds: 30) { $0.count >= 50 }, "\(run.stderr)")
        // A second node joins; the first dies with jobs running: they go to the second.
        let second = try lab.node(2, ["--name", "second", "--workers", "2"], secret: labSecret)
        nodes.append(second)
        first.signal(SIGKILL)
        #expect(FileManager.default.createFile(atPath: middle, contents: nil))
        #expect(run.wait(seconds: 30) { $0.count >= 100 }, "\(run.stderr)")
        // The first comes back; then the second dies while it holds gated jobs: only the
        // restarted node can finish them.
        let again = try lab.node(1, ["--name", "first", "--workers", "2"], secret: labSecret)
        nodes.append(again)
        second.signal(SIGKILL)
        #expect(FileManager.default.createFile(atPath: last, contents: nil))
        let status = run.finish(seconds: 60)
        #expect(status == 0, "\(run.stderr)")
        let placed = run.lines.compactMap(Placement.init)
        #expect(placed.count == total, "\(run.stderr)")
        #expect(placed.map(\.index).sorted() == Array(0..<total))
        let node = Dictionary(uniqueKeysWithValues: placed.map { ($0.index, $0.node) })
        #expect((0..<50).allSatisfy { node[$0] == first.process.processIdentifier })
        #expect((50..<100).allSatisfy { node[$0] == second.process.processIdentifier })
        #expect((100..<total).allSatisfy { node[$0] == again.process.processIdentifier })
    }

    @Test func aNodeOfAnotherClusterIsListedAndGetsNoJobs() throws {
        let lab = try Lab(hosts: 3)
        defer { lab.down() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("where.py", placementSource())
        let mine = try lab.node(1, ["--name", "mine"], secret: labSecret)
        let stranger = try lab.node(2, ["--name", "stranger"], secret: strangerSecret)
        defer { mine.stop(); stranger.stop() }
        let listed = try lab.run(3, "ppnodes", ["--json", "--timeout", "2"], environment: ["PP_SECRET": labSecret])
        #expect(listed.status == 0, "\(listed.stderr)")
        let rows = try Self.rows(listed.stdout)
        let other = rows.first { $0["name"] as? String == "stranger" }
        #expect(other?["in_cluster"] as? Bool == false)
        #expect(other?["address"] as? String == "10.88.0.2:7340")
        #expect(rows.first { $0["name"] as? String == "mine" }?["in_cluster"] as? Bool == true)
        let table = try lab.run(3, "ppnodes", ["--timeout", "2"], environment: ["PP_SECRET": labSecret])
        #expect(table.stdout.contains("other (key id"), "\(table.stdout)")
        let run = try lab.run(3, "pprun", ["map", file + ":where", "--range", "0:40", "--workers", "0"], environment: ["PP_SECRET": labSecret])
        #expect(run.status == 0, "\(run.stderr)")
        let placed = run.lines.compactMap(Placement.init)
        #expect(placed.count == 40)
        #expect(placed.allSatisfy { $0.address == "10.88.0.1" })
        #expect(run.stderr.contains("node of another cluster ignored"), "\(run.stderr)")
        #expect(!stranger.logText.contains("client authenticated"))
    }

    static func rows(_ json: String) throws -> [[String: Any]] {
        (try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]]) ?? []
    }
}
