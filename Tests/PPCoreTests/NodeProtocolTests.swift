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
        guard case .hello(2, 3, 65_536, "me") = try roundTrip(.hello(minVersion: 2, maxVersion: 3, maxFrame: 65_536, name: "me")) else {
            Issue.record("hello")
            return
        }
        guard case .welcome(2, 128, 1024, let info) = try roundTrip(.welcome(version: 2, window: 128, maxFrame: 1024, info: Array("{}".utf8))), info == Array("{}".utf8) else {
            Issue.record("welcome")
            return
        }
        guard case .submit(let jobs) = try roundTrip(.submit([WireJob(id: 9, digest: digest, timeoutMilliseconds: 5, arguments: JobArguments(jsonArray: Array("[1]".utf8)))])) else {
            Issue.record("submit")
            return
        }
        #expect(jobs.count == 1 && jobs[0].id == 9 && jobs[0].digest == digest && jobs[0].timeoutMilliseconds == 5 && jobs[0].arguments.json == Array("[1]".utf8))
        guard case .results(let results) = try roundTrip(.results([JobResult(id: 3, code: .pythonException, nanoseconds: 42, stdout: [65], stderr: [], payload: Array("{}".utf8), executor: "")])) else {
            Issue.record("results")
            return
        }
        #expect(results[0].id == 3 && results[0].code == .pythonException && results[0].nanoseconds == 42 && results[0].stdout == [65] && results[0].payload == Array("{}".utf8))
        guard case .window(64) = try roundTrip(.window(64)) else { Issue.record("window"); return }
        guard case .stop(id: 77) = try roundTrip(.stop(id: 77)) else { Issue.record("stop"); return }
        guard case .error(4, "too big") = try roundTrip(.error(code: 4, message: "too big")) else { Issue.record("error"); return }
    }

    @Test func frameNamesAreSpelledAsTheProtocolDocumentSpellsThem() {
        #expect(NodeProtocol.Kind.hello.name == "HELLO")
        #expect(NodeProtocol.Kind.statsRequest.name == "STATS_REQUEST")
        #expect(NodeMessage.goodbye(reason: "").kind.name == "GOODBYE")
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
            // Either a message, a wait for more bytes, or a NodeProtocolError (the
            // decoder's typed throws): never a trap.
            while true {
                do {
                    guard try decoder.decode(buffer: &buffer) != nil else { break }
                } catch {
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
        // Reading PP_BROADCAST and interfaces is PPRuntime's: PPRuntimeTests.
    }

    @Test func dnssdTXTCarriesTheBeaconButItsPort() throws {
        var beacon = NodeBeacon(id: "ab12", name: "n1", port: 7345, keyid: "k", protocol: 1, cores: 8, workers: 6, version: "0.1.0", arch: "x86_64", os: "Linux 6.1.0")
        beacon.python = "3.11.2"
        beacon.impl = "cpython"
        let txt = beacon.txt
        #expect(NodeBeacon(datagram: beacon.datagram)?.impl == "cpython")
        #expect(txt["port"] == nil && txt["python"] == "3.11.2" && txt["impl"] == "cpython" && txt["cores"] == "8" && txt["arch"] == "x86_64" && txt["os"] == "Linux 6.1.0")
        #expect(NodeBeacon(txt: txt, port: 7345, serviceName: "n1") == beacon)
        // Another program's service under our type, or a bad port, is not a node.
        #expect(NodeBeacon(txt: ["name": "x"], port: 7345, serviceName: "x") == nil)
        #expect(NodeBeacon(txt: txt, port: 0, serviceName: "n1") == nil)
    }

    @Test func secretsHaveDistinctKeysAndAreChecked() throws {
        let s1 = try ClusterSecret(text: "0123456789abcdef-one", origin: "t")
        let s2 = try ClusterSecret(text: "0123456789abcdef-two", origin: "t")
        #expect(s1.keyID != s2.keyID && s1.keyID.count == 16 && s1.keys.tlsKey != s2.keys.tlsKey)
        #expect(throws: SecretError.self) { try ClusterSecret(text: "  \n", origin: "t") }
        #expect(throws: SecretError.self) { try ClusterSecret(text: "short", origin: "t") }
        // Unicode white space around the secret is not part of it (as Foundation's
        // whitespacesAndNewlines trimmed it), white space inside is.
        let padded = try ClusterSecret(text: "\u{2028} \t0123456789abcdef-one\r\n\u{85}\u{3000}", origin: "t")
        #expect(padded.bytes == s1.bytes && padded.keyID == s1.keyID)
        #expect(try ClusterSecret(text: " 0123456789 abcdef ", origin: "t").bytes == Array("0123456789 abcdef".utf8))
    }

    @Test func opaqueArgumentsKeepTheirFlagOnTheWire() throws {
        let digest = SHA256Digest(hashing: Array("x".utf8))
        let jobs = [
            WireJob(id: 1, digest: digest, timeoutMilliseconds: 1500, arguments: JobArguments(opaque: [0, 0xff, 10])),
            WireJob(id: 2, digest: digest, timeoutMilliseconds: 0, arguments: JobArguments(jsonArray: Array("[1]".utf8))),
        ]
        guard case .submit(let back) = try roundTrip(.submit(jobs)) else { Issue.record("submit"); return }
        #expect(back[0].arguments.isOpaque && back[0].arguments.json == [0, 0xff, 10] && back[0].timeoutMilliseconds == 1500)
        #expect(!back[1].arguments.isOpaque && back[1].timeoutMilliseconds == 0)
    }

    @Test func resultsAreSplitSoNoFrameExceedsTheLimit() throws {
        let results = (0..<50).map { JobResult(id: UInt64($0), code: nil, nanoseconds: 1, stdout: [], stderr: [], payload: Array(repeating: UInt8(ascii: "1"), count: 100), executor: "") }
        var buffer = ByteBuffer()
        NodeMessage.writeResults(results, maxFrame: 1000, to: &buffer)
        var decoder = NodeMessageDecoder(maxFrame: 1000)
        var ids: [UInt64] = []
        var frames = 0
        while let message = try decoder.decode(buffer: &buffer) {
            guard case .results(let batch) = message else { Issue.record("not RESULTS"); return }
            frames += 1
            ids += batch.map(\.id)
        }
        #expect(ids == (0..<50).map(UInt64.init))
        #expect(frames == 8)  // 7 results of 129 bytes fit in 9 + 7 * 129 = 912 <= 1000: 8 frames for 50
    }

    @Test func jsonCheckAcceptsOneValueOnly() {
        for good in ["1", "-0.5e+3", " \"a\\n\\u00e9\" ", "[1,[2,{\"k\":null}],true,false]", "{}", "[]", "\"\u{e9}\""] {
            #expect(JSONCheck.isSingleValue(Array(good.utf8)), "\(good)")
        }
        for bad in ["", "1\n2", "1 2", "\"a\nb\"", "[1,]", "{\"a\"}", "01", "1.", "nul", "[", "\"\\x\"", "NaN", "{\"a\":1}}"] {
            #expect(!JSONCheck.isSingleValue(Array(bad.utf8)), "\(bad)")
        }
        let deep = String(repeating: "[", count: 600) + String(repeating: "]", count: 600)
        #expect(!JSONCheck.isSingleValue(Array(deep.utf8)))
    }

    @Test func peerTextIsEscapedAndCut() {
        #expect(PeerText.cut("a\nb\u{1b}[31m") == "a\\nb\\u{1b}[31m")
        #expect(PeerText.cut(String(repeating: "x", count: 300), limit: 10) == "xxxxxxxxxx... (290 more characters)")
    }

    @Test func keyDerivation() {
        // Generated secrets (64 hex digits) are derived fast; others with scrypt.
        let generated = ClusterKeys(secret: Array(String(repeating: "ab", count: 32).utf8))
        let chosen = ClusterKeys(secret: Array("correct horse battery staple".utf8))
        #expect(!generated.stretched && chosen.stretched)
        #expect(generated.keyID.count == 16 && chosen.keyID.count == 16 && generated.keyID != chosen.keyID)
        #expect(generated.tlsKey.count == 32 && generated.tlsKey != chosen.tlsKey)
        #expect(ClusterKeys(secret: Array("correct horse battery staple".utf8)) == chosen)
        // The key id is neither the old unsalted SHA-256 prefix nor part of the TLS key.
        let old = Hex.encode(SHA256Digest(hashing: Array("ppnode key id\u{0}".utf8) + Array("correct horse battery staple".utf8)).bytes.prefix(8))
        #expect(chosen.keyID != old)
        #expect(!Hex.encode(chosen.tlsKey).contains(chosen.keyID))
    }
}
