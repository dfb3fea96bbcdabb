internal import DequeModule
internal import Foundation

/// One connection of the pp-compatible listener (Parallel Python's protocol, ppft
/// 1.7.8; docs/PP-COMPAT.md), as a value: the SHA-1 challenge, the connection type
/// (STAT or EXEC), function messages ("N" + pickle, "H" + md5), and the jobs of an EXEC
/// connection, run one after another (ppft waits for each result anyway).
///
/// It does no I/O: the driver (`PPSession` in PPNode) passes in frames (the payloads of
/// ppft's 8-byte-length frames) and pool results, and executes the `Action`s. The
/// node-wide function cache and counters stay with the driver; the cache is passed in
/// as lookups when a function message needs it.
public struct PPSessionStateMachine: Sendable {
    /// What the driver does after an event.
    public enum Action: Sendable {
        /// Nothing.
        case none
        /// Send these frames' payloads (the job's answer, ...), in one write; then run
        /// `run` on the pool, if there is one, and call `jobFinished(_:)` when it ends.
        case send([[UInt8]], run: Run? = nil)
        /// Send the node's total job time in seconds, as text (ppft's answer to "TIME"
        /// on a STAT connection); the total is node-wide.
        case sendJobTime
        /// Close the connection.
        case close(Closing)
    }

    /// A job for the node's pool.
    public struct Run: Sendable {
        /// The adapter bundle of the ppft function.
        public var bundle: FunctionBundle
        /// The pickled arguments, base64 in a JSON array (the adapter's one argument).
        public var arguments: JobArguments
    }

    /// Why the connection closes.
    public enum Closing: Sendable, Equatable {
        /// The answer to the challenge is wrong: send "FAILED" first.
        case wrongSecret
        /// No answer and connection type within the handshake timeout.
        case handshakeTimeout
        /// A connection type other than STAT and EXEC (its first bytes, cut).
        case unknownConnectionType(String)
        /// A frame that breaks the protocol (what it was).
        case protocolError(String)
    }

    private enum Phase: Sendable {
        case awaitingAnswer, awaitingType, stat, exec, closed
    }

    /// The version string the listener announces.
    public let version: String
    /// The challenge sent to this connection.
    public let challenge: [UInt8]
    private let expectedAnswer: [UInt8]
    private let workers: Int
    private var phase = Phase.awaitingAnswer
    /// Function messages seen on this connection, by MD5 (ppft's "H" messages name
    /// them); kept here so the node-wide cache may drop them.
    private var functions: [String: FunctionBundle] = [:]
    /// The function of the next frame's arguments.
    private var pendingFunction: FunctionBundle?
    /// Jobs received and not yet running.
    private var queue = Deque<Run>()
    /// A job of this connection runs.
    public private(set) var running = false

    /// Creates the machine of a new connection.
    ///
    /// - Parameters:
    ///   - version: the ppft version string to announce (clients require their own).
    ///   - challenge: the challenge to send (`challenge(from:)` of random bytes).
    ///   - secret: the node's secret, which the answer must prove.
    ///   - workers: the node's workers (what a STAT connection is told first).
    public init(version: String, challenge: [UInt8], secret: [UInt8], workers: Int) {
        self.version = version
        self.challenge = challenge
        self.expectedAnswer = Array(PPWire.answer(challenge: challenge, secret: secret).utf8)
        self.workers = workers
    }

    /// A challenge of letters, as ppft's server makes, from random bytes the driver
    /// draws (16 of them); the machine itself reads no randomness.
    public static func challenge(from random: [UInt8]) -> [UInt8] {
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        return random.map { letters[Int($0) % letters.count] }
    }

    /// Whether the connection has not yet authenticated and named its type.
    public var isInHandshake: Bool {
        switch self.phase {
        case .awaitingAnswer, .awaitingType: true
        case .stat, .exec, .closed: false
        }
    }

    // MARK: Events

    /// The connection is up: send the version and the challenge.
    public mutating func connected() -> Action {
        .send([Array(self.version.utf8), self.challenge])
    }

    /// The handshake timer fired: a connection still in its handshake is closed, so
    /// idle unauthenticated connections do not pile up.
    public mutating func handshakeTimedOut() -> Action {
        self.isInHandshake ? self.close(.handshakeTimeout) : .none
    }

    /// A frame arrived.
    ///
    /// - Parameters:
    ///   - frame: its payload.
    ///   - bundle: the node-wide cache's bundle for a function message (md5, pickle),
    ///     made once and shared.
    ///   - cachedBundle: a function another connection sent, if still cached.
    public mutating func received(
        _ frame: [UInt8],
        bundle: (_ md5: String, _ sfunc: [UInt8]) -> FunctionBundle,
        cachedBundle: (_ md5: String) -> FunctionBundle?
    ) -> Action {
        switch self.phase {
        case .awaitingAnswer:
            guard constantTimeEqual(self.expectedAnswer, frame) else { return self.close(.wrongSecret) }
            self.phase = .awaitingType
            return .send([Array("OK".utf8)])
        case .awaitingType:
            switch String(decoding: frame, as: UTF8.self) {
            case "STAT":
                self.phase = .stat
                return .send([Array(String(self.workers).utf8)])
            case "EXEC":
                self.phase = .exec
                return .none
            default:
                return self.close(.unknownConnectionType(PeerText.cut(String(decoding: frame.prefix(16), as: UTF8.self), limit: 16)))
            }
        case .stat:
            // ppft sends "TIME" and expects the job time sum (seconds) as text.
            return .sendJobTime
        case .exec:
            guard let function = self.pendingFunction else {
                return self.receiveFunction(frame, bundle: bundle, cachedBundle: cachedBundle)
            }
            self.pendingFunction = nil
            // The adapter's one argument: the pickled arguments, base64 in a JSON string.
            let argument = "[\"" + Data(frame).base64EncodedString() + "\"]"
            self.queue.append(Run(bundle: function, arguments: JobArguments(jsonArray: Array(argument.utf8))))
            return self.runNext().map { .send([], run: $0) } ?? .none
        case .closed:
            return .none
        }
    }

    private mutating func receiveFunction(
        _ frame: [UInt8],
        bundle: (_ md5: String, _ sfunc: [UInt8]) -> FunctionBundle,
        cachedBundle: (_ md5: String) -> FunctionBundle?
    ) -> Action {
        guard let kind = frame.first else { return self.close(.protocolError("an empty function message")) }
        switch kind {
        case UInt8(ascii: "N"):
            let sfunc = Array(frame.dropFirst())
            let md5 = PPWire.md5Hex(sfunc)
            let function = bundle(md5, sfunc)
            self.functions[md5] = function
            self.pendingFunction = function
            return .none
        case UInt8(ascii: "H"):
            let md5 = String(decoding: frame.dropFirst(), as: UTF8.self)
            guard let function = self.functions[md5] ?? cachedBundle(md5) else {
                return self.close(.protocolError("a function named by a hash it never sent (H\(md5.prefix(32)))"))
            }
            self.pendingFunction = function
            return .none
        default:
            return self.close(.protocolError("a function message that starts with neither N nor H"))
        }
    }

    /// The running job ended.
    ///
    /// - Parameter result: how it ended (the adapter returns the base64 of ppft's
    ///   pickled `(result, output)` pair as a JSON string).
    public mutating func jobFinished(_ result: JobResult) -> Action {
        self.running = false
        guard case .exec = self.phase else { return .none }
        let payload: [UInt8] =
            switch result.outcome.result {
            case .success(let json):
                if json.count >= 2, let decoded = Data(base64Encoded: Data(json.dropFirst().dropLast())) {
                    Array(decoded)
                } else {
                    PPWire.pickledNoneResult(output: "ppnode: the pp worker returned something unreadable\n")
                }
            case .failure(let error): PPWire.pickledNoneResult(output: "An error has occured during the function execution\nppnode: \(error)\n")
            }
        return .send([payload], run: self.runNext())
    }

    /// The connection is gone, or the driver closes it (a decoding error).
    public mutating func closed() {
        self.phase = .closed
        self.queue.removeAll()
    }

    // MARK: Helpers

    private mutating func runNext() -> Run? {
        guard !self.running, case .exec = self.phase, let next = self.queue.popFirst() else { return nil }
        self.running = true
        return next
    }

    private mutating func close(_ why: Closing) -> Action {
        self.phase = .closed
        return .close(why)
    }
}
