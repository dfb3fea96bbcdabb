import NIOCore
import PPCore
import Testing

@Suite("Native protocol codec")
struct NodeProtocolTests {
    func roundTrip(_ message: NodeMessage) throws -> NodeMessage? {
        var buffer = ByteBuffer()
        message.write(to: &buffer)
        var decoder = NodeMessageDecoder()
        let decoded = try decoder.decode(buffer: &buffer)
        #expect(buffer.readableBytes == 0)
        return decoded
    }

    @Test func messagesRoundTrip() throws {
        let digest = SHA256Digest(hashing: Array("x".utf8))
        let nonce = [UInt8](repeating: 7, count: 32)
        guard case .hello(1, 1, nonce, "abcd", "me") = try roundTrip(.hello(minVersion: 1, maxVersion: 1, nonce: nonce, keyID: "abcd", name: "me")) else {
            Issue.record("hello")
            return
        }
        guard case .submit(let jobs) = try roundTrip(.submit([WireJob(id: 9, digest: digest, timeoutMilliseconds: 5, arguments: JobArguments(jsonArray: Array("[1]".utf8)))])) else {
            Issue.record("submit")
            return
        }
        #expect(jobs.count == 1 && jobs[0].id == 9 && jobs[0].digest == digest && jobs[0].timeoutMilliseconds == 5 && jobs[0].arguments.json == Array("[1]".utf8))
        guard case .results(let results) = try roundTrip(.results([WireResult(id: 3, status: 1, nanoseconds: 42, stdout: [65], stderr: [], payload: Array("{}".utf8))])) else {
            Issue.record("results")
            return
        }
        #expect(results[0].id == 3 && results[0].status == 1 && results[0].nanoseconds == 42 && results[0].stdout == [65] && results[0].payload == Array("{}".utf8))
        guard case .window(64) = try roundTrip(.window(64)) else { Issue.record("window"); return }
        guard case .error(4, "too big") = try roundTrip(.error(code: 4, message: "too big")) else { Issue.record("error"); return }
    }

    @Test func lengthIsCheckedBeforeTheBody() {
        var decoder = NodeMessageDecoder(maxFrame: 1024)
        var buffer = ByteBuffer(bytes: [0, 0, 0x04, 0x01, 0x10])
        #expect(throws: NodeProtocolError.self) { try decoder.decode(buffer: &buffer) }
    }

    @Test func countsThatCannotFitAreRefused() {
        // A SUBMIT claiming 2^32-1 jobs in a 10-byte body must not reserve anything.
        var decoder = NodeMessageDecoder()
        var buffer = ByteBuffer(bytes: [0, 0, 0, 10, 0x10, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0])
        #expect(throws: NodeProtocolError.self) { try decoder.decode(buffer: &buffer) }
    }

    @Test func randomBytesNeverCrash() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<5_000 {
            let length = Int.random(in: 0..<64, using: &generator)
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if bytes.count >= 4 { bytes[0] = 0; bytes[1] = 0 }  // mostly plausible lengths
            var decoder = NodeMessageDecoder(maxFrame: 1 << 16)
            var buffer = ByteBuffer(bytes: bytes)
            // Either a message, a wait for more bytes, or a typed error: never a trap.
            while true {
                do {
                    guard try decoder.decode(buffer: &buffer) != nil else { break }
                } catch is NodeProtocolError {
                    break
                } catch {
                    Issue.record("untyped error \(error)")
                    break
                }
            }
        }
    }

    @Test func beaconsParseAndRejectOthers() throws {
        let b = NodeBeacon(id: "n1", name: "host", port: 7340, keyid: "abcd", protocol: 1, cores: 4, workers: 4, version: "0.1.0")
        #expect(b.datagram.first == UInt8(ascii: "S"))
        #expect(NodeBeacon(datagram: b.datagram) == b)
        #expect(NodeBeacon(datagram: Array("S60000".utf8)) == nil)  // ppft's own beacon
        #expect(NodeBeacon(datagram: NodeBeacon.probe) == nil)
        #expect(NodeBeacon(datagram: b.datagram + [UInt8](repeating: 32, count: 2_000)) == nil)
        #expect(NodeBeacon.isProbe(NodeBeacon.probe))
        #expect(!NodeBeacon.isProbe(b.datagram))
        #expect(try BroadcastTarget.fromEnvironment(["PP_BROADCAST": "off"]) == .off)
        #expect(try BroadcastTarget.fromEnvironment(["PP_BROADCAST": "127.255.255.255"]) == .address("127.255.255.255"))
        #expect(try BroadcastTarget.fromEnvironment([:]) == .address("255.255.255.255"))
        #expect(throws: BroadcastError.self) { try BroadcastTarget.fromEnvironment(["PP_BROADCAST": "lan"]) }
        // Loopback has no broadcast address: naming it is an error, not a silent default.
        #expect(throws: BroadcastError.self) { try BroadcastTarget.parse("lo", origin: "--broadcast") }
    }

    @Test func dnssdTXTCarriesTheBeaconButItsPort() throws {
        var beacon = NodeBeacon(id: "ab12", name: "n1", port: 7345, keyid: "k", protocol: 1, cores: 8, workers: 6, version: "0.1.0")
        beacon.python = "3.11.2"
        let txt = beacon.txt
        #expect(txt["port"] == nil && txt["python"] == "3.11.2" && txt["cores"] == "8" && txt["arch"] != nil)
        #expect(NodeBeacon(txt: txt, port: 7345, serviceName: "n1") == beacon)
        // Another program's service under our type, or a bad port, is not a node.
        #expect(NodeBeacon(txt: ["name": "x"], port: 7345, serviceName: "x") == nil)
        #expect(NodeBeacon(txt: txt, port: 0, serviceName: "n1") == nil)
    }

    @Test func proofsDependOnSecretNonceAndDirection() throws {
        let s1 = try ClusterSecret(text: "0123456789abcdef-one", origin: "t")
        let s2 = try ClusterSecret(text: "0123456789abcdef-two", origin: "t")
        let a = [UInt8](repeating: 1, count: 32), b = [UInt8](repeating: 2, count: 32)
        let p = NodeProtocol.nodeProof(s1, clientNonce: a, nodeNonce: b, version: 1)
        #expect(p == NodeProtocol.nodeProof(s1, clientNonce: a, nodeNonce: b, version: 1))
        #expect(p != NodeProtocol.nodeProof(s2, clientNonce: a, nodeNonce: b, version: 1))
        #expect(p != NodeProtocol.nodeProof(s1, clientNonce: b, nodeNonce: a, version: 1))
        #expect(p != NodeProtocol.clientProof(s1, clientNonce: a, nodeNonce: b, version: 1))
        #expect(s1.keyID != s2.keyID && s1.keyID.count == 16)
        #expect(throws: SecretError.self) { try ClusterSecret(text: "  \n", origin: "t") }
        #expect(throws: SecretError.self) { try ClusterSecret(text: "short", origin: "t") }
    }
}
