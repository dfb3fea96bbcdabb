import Foundation
import PPCore
import PPTesting
import ParallelPython
import Testing

/// `ppnodes --why` and `JobServer.nodes()` with real nodes: why each is used or not.
@Suite("Discovery explains itself")
struct DiscoveryWhyTests {
    /// Sends `datagram` to 127.255.255.255:`port` every 50 ms until stopped (a fake
    /// node: no ppnode speaks another protocol version).
    final class BeaconSender: @unchecked Sendable {
        // `stopped` is read by the sending thread and set by the test, under `lock`.
        private let lock = NSLock()
        private var stopped = false
        private let done = DispatchSemaphore(value: 0)

        init(_ datagram: [UInt8], port: Int) {
            Thread { [self] in
                let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                var on: Int32 = 1
                setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &on, socklen_t(MemoryLayout<Int32>.size))
                var to = sockaddr_in()
                to.sin_family = sa_family_t(AF_INET)
                to.sin_port = in_port_t(UInt16(port).bigEndian)
                inet_pton(AF_INET, "127.255.255.255", &to.sin_addr)
                while !self.lock.withLock({ self.stopped }) {
                    _ = withUnsafePointer(to: &to) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, datagram, datagram.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                    }
                    usleep(50_000)
                }
                close(fd)
                self.done.signal()
            }.start()
        }

        func stop() {
            self.lock.withLock { self.stopped = true }
            self.done.wait()
        }
    }

    func environment(_ port: Int, secret: String) -> [String: String] {
        ["PP_BROADCAST": "127.255.255.255", "PP_DISCOVERY_PORT": String(port), "PP_SECRET": secret, "PP_DNSSD": "off"]
    }

    /// The objects of `ppnodes --json`, by address.
    func byAddress(_ stdout: String) throws -> [String: [String: JSONValue]] {
        let list = try JSONDecoder().decode([JSONValue].self, from: Data(stdout.utf8))
        var out: [String: [String: JSONValue]] = [:]
        for case .object(let o) in list { if case .string(let a) = o["address"] { out[a] = o } }
        return out
    }

    @Test func ppnodesWhyNamesEachReason() throws {
        let port = Int.random(in: 40_000...49_999)
        let env = self.environment(port, secret: secret)
        let mine = try NodeProcess(["--name", "mine", "--workers", "1"], secret: secret, environment: env)
        let stranger = try NodeProcess(["--name", "stranger", "--workers", "1"], secret: otherSecret, environment: self.environment(port, secret: otherSecret))
        let standby = try NodeProcess(["--name", "standby", "--workers", "0"], secret: secret, environment: env)
        defer { mine.stop(); stranger.stop(); standby.stop() }
        let keyID = try ClusterSecret(text: secret, origin: "test").keyID
        let future = NodeBeacon(id: "f1", name: "future", port: 9, keyid: keyID, protocol: 99, cores: 1, workers: 1, version: "9.0")
        let sender = BeaconSender(future.datagram, port: port)
        // Nothing listens on port 1 of loopback: a node expected there is refused.
        let r = try runProcess(builtCommand("ppnodes"), ["--why", "--json", "--timeout", "1", "--node", "127.0.0.1:1"], environment: env)
        sender.stop()
        #expect(r.status == 0, "\(r.stderr)")
        let nodes = try self.byAddress(r.stdout)
        let ours = try #require(nodes[mine.address], "\(r.stdout)")
        #expect(ours["status"] == .string("usable") && ours["reason"] == .string("connected") && ours["accepts_secret"] == .bool(true))
        let other = try #require(nodes[stranger.address])
        let otherKeyID = try ClusterSecret(text: otherSecret, origin: "test").keyID
        #expect(other["status"] == .string("other_cluster"))
        #expect(other["reason"] == .string("other cluster (key id \(otherKeyID), ours \(keyID)): give it our secret file, or use its secret"))
        let idle = try #require(nodes[standby.address])
        #expect(idle["status"] == .string("no_workers") && idle["workers"] == .int(0) && idle["usable"] == .bool(false))
        #expect(idle["reason"] == .string("0 workers: it runs no jobs (started with --workers 0); restart it with --workers 1 or more"))
        let fake = try #require(nodes["127.0.0.1:9"])
        #expect(fake["status"] == .string("protocol"))
        #expect(fake["reason"] == .string("protocol 99, we speak \(NodeVerdict.protocols.lowerBound)..\(NodeVerdict.protocols.upperBound): upgrade this client"))
        let expected = try #require(nodes["127.0.0.1:1"])
        #expect(expected["status"] == .string("unreachable") && expected["found_by"] == .array([.string("given")]))
        #expect(expected["reason"]?.description.contains("unreachable at 127.0.0.1:1 from lo: connection refused") == true, "\(expected)")
        #expect(nodes.count == 5)
        // The table says the same in its WHY column.
        let table = try runProcess(builtCommand("ppnodes"), ["--why", "--timeout", "1"], environment: env)
        #expect(table.stdout.contains("no_workers: 0 workers: it runs no jobs"), "\(table.stdout)")
        #expect(table.stdout.contains("other_cluster: other cluster (key id \(otherKeyID)"))
    }

    /// The number of UDP sockets bound to `port` in this network namespace.
    func socketsOn(_ port: Int) -> Int {
        let text = (try? String(contentsOfFile: "/proc/net/udp", encoding: .utf8)) ?? ""
        let suffix = String(format: ":%04X", port)
        return text.split(separator: "\n").dropFirst().filter { $0.split(separator: " ").dropFirst().first?.hasSuffix(suffix) == true }.count
    }

    @Test func aDrainingNodeIsSeenLeavingByItsGoodbyeBeacon() async throws {
        let port = Int.random(in: 40_000...49_999)
        let env = self.environment(port, secret: secret)
        // A client that discovered the node and is connected to it.
        let node = try NodeProcess(["--name", "leaver", "--workers", "1", "--beacon-interval", "0.3"], secret: secret, environment: env)
        defer { node.stop() }
        var configuration = JobServer.Configuration(workers: 0, secret: try ClusterSecret(text: secret, origin: "test"))
        configuration.discoveryPort = port
        configuration.broadcast = .address("127.255.255.255")
        configuration.dnssd = false
        let server = JobServer(configuration: configuration)
        func verdict() async -> NodeVerdict? { await server.nodes().first { $0.sighting.address == node.address } }
        for _ in 0..<400 where await verdict()?.reason != "connected" { try await Task.sleep(for: .milliseconds(50)) }
        let connected = await verdict()
        #expect(connected?.status == .usable && connected?.reason == "connected", "\(String(describing: connected))")
        // ppnodes listening for beacons while the node drains.
        let list = try BackgroundProcess(builtCommand("ppnodes"), ["--why", "--json", "--timeout", "4"], environment: env)
        defer { list.stop() }
        for _ in 0..<400 where self.socketsOn(port) < 3 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(self.socketsOn(port) == 3, "the node, the client and ppnodes listen on the discovery port")
        node.signal(SIGTERM)
        #expect(node.wait() == 0, "\(node.logText)")
        for _ in 0..<400 where await verdict()?.status != .left { try await Task.sleep(for: .milliseconds(50)) }
        let left = await verdict()
        #expect(left?.status == .left && left?.reason.hasPrefix("left (goodbye at ") == true, "\(String(describing: left))")
        await server.shutdown()
        #expect(list.wait() == 0, "it found the node (that left): \(list.stderr)")
        let seen = try self.byAddress(list.stdout)
        #expect(seen[node.address]?["status"] == .string("left"), "\(list.stdout)")
    }
}
