import Foundation
import PPCore
import Testing

/// The pp-compatible session, driven as a value: frames in, actions out.
@Suite("pp session state machine")
struct PPSessionStateMachineTests {
    typealias Machine = PPSessionStateMachine

    static let secret = Array("pp-test-secret".utf8)
    static let challenge = Array("abcdefghijklmnop".utf8)
    static let sfunc = Array("pickled function tuple".utf8)

    /// The node-wide function cache the machine asks for.
    struct Cache {
        var bundles: [String: FunctionBundle] = [:]
        var made = 0
    }

    struct Unexpected: Error, CustomStringConvertible {
        let description: String
        init(_ action: Machine.Action) { self.description = "unexpected action \(action)" }
    }

    static func receive(_ machine: inout Machine, _ frame: [UInt8], cache: inout Cache) -> Machine.Action {
        machine.received(
            frame,
            bundle: { md5, sfunc in
                if let b = cache.bundles[md5] { return b }
                cache.made += 1
                let b = FunctionBundle(name: "_pp_call", source: "# \(sfunc.count) bytes\n")
                cache.bundles[md5] = b
                return b
            },
            cachedBundle: { cache.bundles[$0] }
        )
    }

    static func machine() -> Machine {
        Machine(version: "1.7.8", challenge: Self.challenge, secret: Self.secret, workers: 3)
    }

    /// A machine past the challenge, with its connection type named.
    static func authenticated(_ type: String, cache: inout Cache) throws -> Machine {
        var machine = Self.machine()
        _ = machine.connected()
        let answer = Array(PPWire.answer(challenge: Self.challenge, secret: Self.secret).utf8)
        guard case .send([Array("OK".utf8)], run: nil) = Self.receive(&machine, answer, cache: &cache) else { throw Unexpected(.none) }
        #expect(machine.isInHandshake)
        #expect(Self.receive(&machine, Array(type.utf8), cache: &cache).isSendOrNone)
        #expect(!machine.isInHandshake)
        return machine
    }

    static func closing(_ action: Machine.Action) throws -> Machine.Closing {
        guard case .close(let why) = action else { throw Unexpected(action) }
        return why
    }

    static func run(_ action: Machine.Action) throws -> Machine.Run {
        guard case .send([], run: let run?) = action else { throw Unexpected(action) }
        return run
    }

    /// The job's answer and the job that runs next.
    static func reply(_ action: Machine.Action) throws -> (payload: [UInt8], next: Machine.Run?) {
        guard case .send(let payloads, let next) = action, payloads.count == 1 else { throw Unexpected(action) }
        return (payloads[0], next)
    }

    /// What the adapter returns for a job: the base64 of `bytes` as a JSON string.
    static func adapterResult(_ bytes: [UInt8]) -> JobResult {
        JobResult(id: 1, code: nil, payload: Array("\"\(Data(bytes).base64EncodedString())\"".utf8), executor: "n1")
    }

    @Test func connectingSendsTheVersionAndTheChallenge() throws {
        var machine = Self.machine()
        guard case .send(let frames, run: nil) = machine.connected() else { throw Unexpected(.none) }
        #expect(frames == [Array("1.7.8".utf8), Self.challenge])
        #expect(machine.isInHandshake)
    }

    @Test func aWrongAnswerIsRefused() throws {
        var cache = Cache()
        var machine = Self.machine()
        _ = machine.connected()
        #expect(try Self.closing(Self.receive(&machine, Array("0123".utf8), cache: &cache)) == .wrongSecret)
        // Closed: nothing more is read.
        #expect(Self.receive(&machine, Array("STAT".utf8), cache: &cache).isNone)
        #expect(machine.handshakeTimedOut().isNone)
    }

    @Test func statConnectionsGetWorkersThenJobTime() throws {
        var cache = Cache()
        var machine = Self.machine()
        _ = machine.connected()
        _ = Self.receive(&machine, Array(PPWire.answer(challenge: Self.challenge, secret: Self.secret).utf8), cache: &cache)
        guard case .send([Array("3".utf8)], run: nil) = Self.receive(&machine, Array("STAT".utf8), cache: &cache) else { throw Unexpected(.none) }
        guard case .sendJobTime = Self.receive(&machine, Array("TIME".utf8), cache: &cache) else { throw Unexpected(.none) }
    }

    @Test func anUnknownConnectionTypeCloses() throws {
        var cache = Cache()
        var machine = Self.machine()
        _ = machine.connected()
        _ = Self.receive(&machine, Array(PPWire.answer(challenge: Self.challenge, secret: Self.secret).utf8), cache: &cache)
        let why = try Self.closing(Self.receive(&machine, Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8), cache: &cache))
        #expect(why == .unknownConnectionType("GET / HTTP/1.1\\r\\n"))
    }

    @Test func theHandshakeTimerClosesOnlyConnectionsInTheirHandshake() throws {
        var fresh = Self.machine()
        #expect(try Self.closing(fresh.handshakeTimedOut()) == .handshakeTimeout)
        var cache = Cache()
        var answered = Self.machine()
        _ = Self.receive(&answered, Array(PPWire.answer(challenge: Self.challenge, secret: Self.secret).utf8), cache: &cache)
        #expect(try Self.closing(answered.handshakeTimedOut()) == .handshakeTimeout)
        var exec = try Self.authenticated("EXEC", cache: &cache)
        #expect(exec.handshakeTimedOut().isNone)
    }

    @Test func execRunsJobsOneAfterAnother() throws {
        var cache = Cache()
        var machine = try Self.authenticated("EXEC", cache: &cache)
        let md5 = PPWire.md5Hex(Self.sfunc)
        // "N" + the function: made once in the node-wide cache; then its arguments.
        #expect(Self.receive(&machine, [UInt8(ascii: "N")] + Self.sfunc, cache: &cache).isNone)
        #expect(cache.made == 1 && cache.bundles[md5] != nil)
        let first = try Self.run(Self.receive(&machine, Array("args1".utf8), cache: &cache))
        #expect(first.arguments.json == Array("[\"\(Data("args1".utf8).base64EncodedString())\"]".utf8))
        #expect(machine.running)
        // "H" + md5 names the same function; this job waits for the first.
        #expect(Self.receive(&machine, [UInt8(ascii: "H")] + Array(md5.utf8), cache: &cache).isNone)
        #expect(Self.receive(&machine, Array("args2".utf8), cache: &cache).isNone)
        #expect(cache.made == 1)

        let answer = Array("pickled (result, output)".utf8)
        let reply = machine.jobFinished(Self.adapterResult(answer))
        guard case (let payload, next: let next?) = try Self.reply(reply) else { throw Unexpected(reply) }
        #expect(payload == answer)
        #expect(next.bundle.digest == first.bundle.digest)
        #expect(next.arguments.json == Array("[\"\(Data("args2".utf8).base64EncodedString())\"]".utf8))

        // A job that failed in the pool answers ppft with (None, output naming the error).
        let failure = JobResult(id: 2, error: JobError(code: .workerDied, message: "worker died (signal 9)"), executor: "n1")
        let failed = machine.jobFinished(failure)
        guard case (let none, next: nil) = try Self.reply(failed) else { throw Unexpected(failed) }
        let text = String(decoding: none, as: UTF8.self)
        #expect(none.starts(with: [0x80, 0x02, UInt8(ascii: "N")]))
        #expect(text.contains("An error has occured during the function execution\nppnode: ") && text.contains("worker died (signal 9)"), "\(text)")
        #expect(!machine.running)
    }

    @Test func anUnreadableAdapterResultStillAnswers() throws {
        var cache = Cache()
        var machine = try Self.authenticated("EXEC", cache: &cache)
        _ = Self.receive(&machine, [UInt8(ascii: "N")] + Self.sfunc, cache: &cache)
        _ = Self.receive(&machine, Array("args".utf8), cache: &cache)
        let reply = machine.jobFinished(JobResult(id: 1, code: nil, payload: Array("\"not base64!\"".utf8), executor: "n1"))
        guard case (let payload, next: nil) = try Self.reply(reply) else { throw Unexpected(reply) }
        #expect(String(decoding: payload, as: UTF8.self).contains("ppnode: the pp worker returned something unreadable"))
    }

    @Test func aFunctionFromAnotherConnectionIsFoundInTheNodeCache() throws {
        var cache = Cache()
        let md5 = PPWire.md5Hex(Self.sfunc)
        cache.bundles[md5] = FunctionBundle(name: "_pp_call", source: "pass\n")
        var machine = try Self.authenticated("EXEC", cache: &cache)
        #expect(Self.receive(&machine, [UInt8(ascii: "H")] + Array(md5.utf8), cache: &cache).isNone)
        _ = try Self.run(Self.receive(&machine, Array("args".utf8), cache: &cache))
    }

    @Test func badFunctionMessagesClose() throws {
        let cases: [([UInt8], String)] = [
            ([], "an empty function message"),
            (Array("Xfoo".utf8), "a function message that starts with neither N nor H"),
            (Array("H0123456789abcdef0123456789abcdef-and-more".utf8), "a function named by a hash it never sent (H0123456789abcdef0123456789abcdef)"),
        ]
        for (frame, what) in cases {
            var cache = Cache()
            var machine = try Self.authenticated("EXEC", cache: &cache)
            #expect(try Self.closing(Self.receive(&machine, frame, cache: &cache)) == .protocolError(what))
        }
    }

    @Test func aResultAfterTheConnectionClosedIsDropped() throws {
        var cache = Cache()
        var machine = try Self.authenticated("EXEC", cache: &cache)
        _ = Self.receive(&machine, [UInt8(ascii: "N")] + Self.sfunc, cache: &cache)
        _ = try Self.run(Self.receive(&machine, Array("args1".utf8), cache: &cache))
        _ = Self.receive(&machine, [UInt8(ascii: "N")] + Self.sfunc, cache: &cache)
        _ = Self.receive(&machine, Array("args2".utf8), cache: &cache)
        machine.closed()
        #expect(machine.jobFinished(Self.adapterResult([1])).isNone)
        #expect(!machine.running)
    }
}

extension PPSessionStateMachine.Action {
    var isNone: Bool {
        if case .none = self { return true }
        return false
    }

    var isSendOrNone: Bool {
        switch self {
        case .none, .send: true
        default: false
        }
    }
}
