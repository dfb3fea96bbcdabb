import Foundation
import NIOCore
import NIOPosix
import PPCore
import PPRuntime
import PPTesting
import Testing

@Suite struct EnvironmentSettingsTests {
    @Test func broadcastTargetFromEnvironment() throws {
        #expect(try BroadcastTarget.fromEnvironment(["PP_BROADCAST": "off"]) == .off)
        #expect(try BroadcastTarget.fromEnvironment(["PP_BROADCAST": "127.255.255.255"]) == .address("127.255.255.255"))
        #expect(try BroadcastTarget.fromEnvironment([:]) == .address("255.255.255.255"))
        #expect(throws: BroadcastError.self) { try BroadcastTarget.fromEnvironment(["PP_BROADCAST": "lan"]) }
        // Loopback has no broadcast address: naming it is an error, not a silent default.
        #expect(throws: BroadcastError.self) { try BroadcastTarget.parse("lo", origin: "--broadcast") }
    }

    @Test func discoveryPortFromEnvironment() throws {
        #expect(try NodeBeacon.discoveryPort(fromEnvironment: [:]) == NodeBeacon.defaultPort)
        #expect(try NodeBeacon.discoveryPort(fromEnvironment: ["PP_DISCOVERY_PORT": " 7341 "]) == 7341)
        let error = #expect(throws: BroadcastError.self) { try NodeBeacon.discoveryPort(fromEnvironment: ["PP_DISCOVERY_PORT": "0"]) }
        #expect(error?.message == "PP_DISCOVERY_PORT='0' is not a UDP port (1-65535); unset it for the default 7340")
    }

    @Test func hostInfoIsThisMachines() throws {
        let uname = try runProcess("/bin/uname", ["-m", "-s", "-r"])
        let fields = uname.stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(HostInfo.operatingSystem == "\(fields[0]) \(fields[1])")
        #expect(HostInfo.architecture == fields[2])
    }

    @Test func interfacesAreFound() {
        #expect(NetworkInterfaces.name(owning: "127.0.0.1") == "lo")
        #expect(NetworkInterfaces.name(owning: "192.0.2.1") == nil)  // TEST-NET-1: nobody's
        #expect(NetworkInterfaces.name(owning: "not an address") == nil)
        #expect(NetworkInterfaces.broadcastAddress(ofInterface: "lo") == nil)
        #expect(NetworkInterfaces.broadcastAddress(ofInterface: "no-such-interface") == nil)
    }
}

@Suite struct SecretFileTests {
    @Test func aGoodFileIsRead() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("secret", "  0123456789abcdef-file\n")
        chmod(file, 0o600)
        let loaded = try ClusterSecret.load(file: file, create: false)
        #expect(!loaded.created && loaded.secret.bytes == Array("0123456789abcdef-file".utf8) && loaded.secret.origin == file)
    }

    @Test func anExplicitFileMustExist() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let missing = dir.path + "/missing"
        let error = #expect(throws: SecretError.self) {
            try ClusterSecret.load(file: missing, origin: "ppnode.conf:3 (secret-file)", create: true)
        }
        #expect(error?.message.hasPrefix("the secret file \(missing) (from ppnode.conf:3 (secret-file)) does not exist; fix the path") == true)
        #expect(!FileManager.default.fileExists(atPath: missing))
    }

    @Test func aFileOthersMayReadIsRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("secret", "0123456789abcdef-open\n")
        chmod(file, 0o640)
        let error = #expect(throws: SecretError.self) { try ClusterSecret.load(file: file, create: false) }
        #expect(error?.message == "the secret file \(file) has mode 0640: group or others may read or change it; run chmod 600 \(file)")
    }
}

@Suite struct DiscoverySocketTests {
    /// Opens a socket whose datagrams go to the returned stream.
    private func open(port: Int, binding: DiscoverySocket.Binding = .wildcard) async throws -> (DiscoverySocket, AsyncStream<DiscoverySocket.Datagram>) {
        let (stream, continuation) = AsyncStream.makeStream(of: DiscoverySocket.Datagram.self)
        let socket = try await DiscoverySocket.open(port: port, binding: binding, on: MultiThreadedEventLoopGroup.singleton.next()) { _, datagram in
            continuation.yield(datagram)
        }.get()
        return (socket, stream)
    }

    /// The first datagram of `stream`, or `nil` after two seconds.
    private func first(_ stream: AsyncStream<DiscoverySocket.Datagram>) async -> DiscoverySocket.Datagram? {
        await withTaskGroup(of: DiscoverySocket.Datagram?.self) { group in
            group.addTask { await stream.first { _ in true } }
            group.addTask {
                try? await Task.sleep(for: .seconds(2))
                return nil
            }
            let result = await group.next() ?? nil
            group.cancelAll()
            return result
        }
    }

    @Test func datagramsArriveWithTheirSource() async throws {
        let (a, _) = try await self.open(port: 0)
        let (b, received) = try await self.open(port: 0)
        defer {
            a.close()
            b.close()
        }
        let portB = try #require(b.localAddress?.port)
        try await a.send(NodeBeacon.probe, to: SocketAddress(ipAddress: "127.0.0.1", port: portB)).get()
        let datagram = try #require(await self.first(received))
        #expect(datagram.bytes == NodeBeacon.probe)
        #expect(datagram.source.ipAddress == "127.0.0.1" && datagram.source.port == a.localAddress?.port)
    }

    @Test func socketsShareThePortAndAllHearABroadcast() async throws {
        let (first, heardFirst) = try await self.open(port: 0)
        let port = try #require(first.localAddress?.port)
        let (second, heardSecond) = try await self.open(port: port)
        let (sender, _) = try await self.open(port: 0)
        defer {
            for socket in [first, second, sender] { socket.close() }
        }
        try await sender.send(Array("hello".utf8), to: SocketAddress(ipAddress: "127.255.255.255", port: port)).get()
        #expect(await self.first(heardFirst)?.bytes == Array("hello".utf8))
        #expect(await self.first(heardSecond)?.bytes == Array("hello".utf8))
    }

    @Test func aNodeBindsTheWildcardOnItsHostsInterface() async throws {
        #expect(DiscoverySocket.Binding(listeningOn: "0.0.0.0") == .wildcard)
        #expect(DiscoverySocket.Binding(listeningOn: "127.0.0.1") == .wildcardOnInterface("lo"))
        #expect(DiscoverySocket.Binding(listeningOn: "192.0.2.1") == .address("192.0.2.1"))
        let (onLoopback, received) = try await self.open(port: 0, binding: .wildcardOnInterface("lo"))
        let (sender, _) = try await self.open(port: 0)
        defer {
            onLoopback.close()
            sender.close()
        }
        let port = try #require(onLoopback.localAddress?.port)
        try await sender.send(Array("probe".utf8), to: SocketAddress(ipAddress: "127.0.0.1", port: port)).get()
        #expect(await self.first(received)?.bytes == Array("probe".utf8))
        await #expect(throws: IOError.self) {
            try await self.open(port: 0, binding: .wildcardOnInterface("no-such-interface"))
        }
    }
}
