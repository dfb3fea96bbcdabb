import NIOCore
import PPCore
import Testing

@Suite("Hashing and bundles")
struct HashingTests {
    @Test func sha256KnownVector() {
        #expect(SHA256Digest(hashing: Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256Digest(hashing: [UInt8]()).hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func bundleDigestCoversEveryPart() {
        let a = FunctionBundle(name: "f", source: "def f(): pass\n")
        #expect(a.digest == FunctionBundle(name: "f", source: "def f(): pass\n").digest)
        #expect(a.digest != FunctionBundle(name: "g", source: "def f(): pass\n").digest)
        #expect(a.digest != FunctionBundle(name: "f", source: "def f(): pass\n", imports: ["math"]).digest)
        #expect(a.digest != FunctionBundle(name: "f", source: "def f(): pass\n", dependencies: ["x = 1"]).digest)
    }
}

@Suite("JSON encoding")
struct JSONTests {
    @Test func stringsAreEscaped() {
        var w = JSONWriter()
        w.string("a\"b\\c\nd\u{1}é")
        #expect(String(decoding: w.bytes, as: UTF8.self) == #""a\"b\\c\nd\u0001é""#)
    }

    @Test func argumentsFastAndSlowPaths() throws {
        struct Point: Codable, Sendable { var x: Int; var y: Int }
        let args = try JobArguments([1, "two", 3.5, true, [1, 2], JSONValue.object(["k": .null]), Point(x: 1, y: 2)])
        #expect(String(decoding: args.json, as: UTF8.self) == #"[1,"two",3.5,true,[1,2],{"k":null},{"x":1,"y":2}]"#)
    }

    @Test func doublesKeepTheirType() {
        var w = JSONWriter()
        w.double(2)
        w.raw(",")
        w.double(.nan)
        #expect(String(decoding: w.bytes, as: UTF8.self) == "2.0,null")
    }
}

@Suite("Large arguments, split")
struct LargeArgumentSplitTests {
    @Test func largeElementsMoveIntoBlobsAndSharedOnesAreHashedOnce() throws {
        var digester = BlobDigester()
        let big = String(repeating: "z", count: 40)
        // From values (element ends known) and from JSON text (scanned): the same split.
        let fromValues = try JobArguments([1, big, "s", [big]]).movingLarge(above: 30, digester: &digester)
        let fromText = JobArguments(jsonArray: Array(" [1, \"\(big)\" ,\"s\", [\"\(big)\"]] ".utf8)).movingLarge(above: 30, digester: &digester)
        for arguments in [fromValues, fromText] {
            #expect(String(decoding: arguments.json, as: UTF8.self) == #"[1,"s"]"#)
            #expect(arguments.blobs.map(\.position) == [1, 3])
            #expect(arguments.blobs.map { String(decoding: $0.bytes, as: UTF8.self) } == ["\"\(big)\"", "[\"\(big)\"]"])
            #expect(arguments.blobs[0].digest == SHA256Digest(hashing: Array("\"\(big)\"".utf8)))
        }
        // Nothing large, or already split: unchanged.
        #expect(try JobArguments([1, 2]).movingLarge(above: 3, digester: &digester).blobs.isEmpty)
        #expect(fromValues.movingLarge(above: 1, digester: &digester) == fromValues)
        // Opaque bytes move as a whole.
        let opaque = JobArguments(opaque: [UInt8](repeating: 7, count: 64)).movingLarge(above: 10, digester: &digester)
        #expect(opaque.json.isEmpty && opaque.isOpaque && opaque.blobs.map(\.position) == [0] && opaque.blobs[0].bytes.count == 64)
        #expect(JSONCheck.arrayElements(Array("[1,]".utf8)) == nil && JSONCheck.arrayElements(Array("[]".utf8)) == [])
    }
}

@Suite("Worker frame decoder")
struct WorkerFrameTests {
    func decodeAll(_ bytes: [UInt8]) throws -> [WorkerMessage] {
        var decoder = WorkerMessageDecoder()
        var buffer = ByteBuffer(bytes: bytes)
        var out: [WorkerMessage] = []
        while let m = try decoder.decode(buffer: &buffer) { out.append(m) }
        return out
    }

    func resultFrame(id: UInt64, status: UInt8, out: String, err: String, payload: String) -> [UInt8] {
        var body = ByteBuffer()
        body.writeInteger(UInt8(ascii: "R"))
        body.writeInteger(id)
        body.writeInteger(status)
        body.writeInteger(UInt64(1234))
        body.writeInteger(UInt32(out.utf8.count))
        body.writeString(out)
        body.writeInteger(UInt32(err.utf8.count))
        body.writeString(err)
        body.writeString(payload)
        var frame = ByteBuffer()
        frame.writeInteger(UInt32(body.readableBytes))
        frame.writeBuffer(&body)
        return Array(frame.readableBytesView)
    }

    @Test func decodesResult() throws {
        let messages = try self.decodeAll(self.resultFrame(id: 7, status: 0, out: "hi\n", err: "", payload: "42"))
        #expect(messages.count == 1)
        guard case .result(let r) = messages[0] else { Issue.record("not a result"); return }
        #expect(r.id == 7)
        #expect(r.succeeded)
        #expect(r.nanoseconds == 1234)
        #expect(r.stdout == Array("hi\n".utf8))
        #expect(r.payload == Array("42".utf8))
    }

    @Test func partialFrameWaits() throws {
        let frame = self.resultFrame(id: 1, status: 0, out: "", err: "", payload: "1")
        for cut in [0, 3, 4, 10, frame.count - 1] {
            #expect(try self.decodeAll(Array(frame.prefix(cut))).isEmpty)
        }
    }

    @Test func oversizedLengthIsRejectedBeforeReading() {
        #expect(throws: WorkerProtocolError.self) { try self.decodeAll([0xff, 0xff, 0xff, 0xff, 82]) }
        #expect(throws: WorkerProtocolError.self) { try self.decodeAll([0, 0, 0, 0]) }
    }

    @Test func truncatedResultAndUnknownTypeAreErrors() {
        #expect(throws: WorkerProtocolError.self) { try self.decodeAll([0, 0, 0, 3, 82, 0, 0]) }
        #expect(throws: WorkerProtocolError.self) { try self.decodeAll([0, 0, 0, 1, 0x5a]) }
        #expect(throws: WorkerProtocolError.self) { try self.decodeAll(self.resultFrame(id: 1, status: 9, out: "", err: "", payload: "")) }
    }

    @Test func errorJSONBecomesJobError() {
        let e = JobError(code: .pythonException, wireJSON: Array(#"{"type":"ValueError","message":"bad","traceback":"Traceback...\n"}"#.utf8))
        #expect(e.pythonType == "ValueError")
        #expect(e.message == "bad")
        #expect(e.traceback == "Traceback...\n")
        #expect(e.description == "python exception: ValueError: bad")
    }
}
