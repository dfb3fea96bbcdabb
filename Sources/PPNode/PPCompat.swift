import Foundation
import Logging
import NIOCore
import NIOPosix
import PPCore
import PPRuntime
import PPWorkers

// The pp-compatible listener: speaks Parallel Python's (ppft 1.7.8) wire protocol so
// unchanged `pp.Server(ppservers=...)` programs run their jobs on this node's
// WorkerPool. Protocol notes: docs/PP-COMPAT.md.

/// Turns a ppft function message (a pickle of `(name, sources, imports)`) into one of
/// our function bundles: a small adapter that unpickles the function once per worker,
/// runs it on unpickled arguments, and returns the pickled `(result, output)` pair,
/// base64-encoded, just as ppft's own workers answer.
enum PPAdapter {
    static let functionName = "_pp_call"

    static let source = #"""
        import base64 as _pp_b64
        import io as _pp_io
        import sys as _pp_sys
        import types as _pp_types
        try:
            import dill as _pp_pickle
        except ImportError:
            import pickle as _pp_pickle

        # ppft runs jobs in its worker's __main__: dill unpickles classes and functions
        # of the client's __main__ into the worker's, and their globals are its dict.
        # Each pp function gets a __main__ of its own, swapped in while it loads and runs.
        _pp_main = _pp_types.ModuleType("__main__")
        _pp_ns = _pp_main.__dict__
        _pp_fname = None

        def _pp_loads(data):
            # dill resolves the client's __main__ to its unpickler's _main.
            if getattr(_pp_pickle, "__name__", "") == "dill":
                unpickler = _pp_pickle.Unpickler(_pp_io.BytesIO(data))
                unpickler._main = _pp_main
                return unpickler.load()
            return _pp_pickle.loads(data)

        def _pp_load():
            global _pp_fname
            fname, sources, imports = _pp_pickle.loads(_pp_b64.b64decode(_PP_SFUNC))
            for module in imports:
                try:
                    if not module.startswith("from ") and not module.startswith("import "):
                        module = "import " + module
                    exec(module, _pp_ns)
                except BaseException:
                    print("An error has occured during the module import")
                    _pp_sys.excepthook(*_pp_sys.exc_info())
            for source in sources:
                try:
                    exec(compile(source, "<string>", "exec"), _pp_ns)
                except BaseException:
                    print("An error has occured during the function import")
                    _pp_sys.excepthook(*_pp_sys.exc_info())
            _pp_fname = fname if isinstance(fname, str) else fname.decode()

        def _pp_call(sargs):
            out = _pp_io.StringIO()
            saved = _pp_sys.stdout, _pp_sys.stderr
            saved_main = _pp_sys.modules.get("__main__")
            _pp_sys.stdout = _pp_sys.stderr = out
            _pp_sys.modules["__main__"] = _pp_main
            try:
                if _pp_fname is None:
                    _pp_load()
                args = _pp_loads(_pp_b64.b64decode(sargs))
                try:
                    result = _pp_ns[_pp_fname](*args)
                except BaseException:
                    print("An error has occured during the function execution")
                    _pp_sys.excepthook(*_pp_sys.exc_info())
                    result = None
                try:
                    data = _pp_pickle.dumps((result, out.getvalue()), 2)
                except BaseException as e:
                    data = _pp_pickle.dumps((None, out.getvalue() + "ppnode: the result cannot be pickled: %r\n" % (e,)), 2)
            finally:
                _pp_sys.stdout, _pp_sys.stderr = saved
                _pp_sys.modules["__main__"] = saved_main
            return _pp_b64.b64encode(data).decode("ascii")
        """#

    /// The bundle for one ppft function message.
    static func bundle(sfunc: [UInt8]) -> FunctionBundle {
        FunctionBundle(
            name: Self.functionName,
            source: Self.source + "\n_PP_SFUNC = \"\(Data(sfunc).base64EncodedString())\"\n",
            filename: "<pp-compat>"
        )
    }
}

/// Reads ppft frames: an 8-byte big-endian length, then that many bytes. A length over
/// `maxFrame` is an error (the connection is closed), checked before anything is read.
struct PPFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = [UInt8]
    let maxFrame: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt64.self) else { return .needMoreData }
        guard length <= UInt64(self.maxFrame) else { throw PPCompatError.frameTooLarge(length, max: self.maxFrame) }
        guard buffer.readableBytes >= 8 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 8)
        context.fireChannelRead(Self.wrapInboundOut(buffer.readBytes(length: Int(length))!))
        return .continue
    }
}

enum PPCompatError: Error, CustomStringConvertible {
    case frameTooLarge(UInt64, max: Int)

    var description: String {
        switch self {
        case .frameTooLarge(let n, let max): "a pp frame of \(n) bytes is over the limit of \(max) (--max-frame)"
        }
    }
}

/// Re-arms `TCP_QUICKACK` before every read, so the kernel acknowledges at once. ppft
/// clients write a frame's length and its payload in two `send()` calls without
/// `TCP_NODELAY`: with delayed ACKs every job would wait ~40 ms for Nagle.
final class QuickAckHandler: ChannelOutboundHandler, Sendable {
    typealias OutboundIn = Any

    static let option = ChannelOptions.Types.SocketOption(level: .init(rawValue: Int32(IPPROTO_TCP)), name: .init(rawValue: Int32(TCP_QUICKACK)))

    func read(context: ChannelHandlerContext) {
        try? context.channel.syncOptions?.setOption(Self.option, value: 1)
        context.read()
    }
}

/// One ppft connection. Confined to the node's loop (`@unchecked Sendable` for that).
final class PPSession: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = [UInt8]

    private enum Phase {
        case awaitingAnswer
        case awaitingType
        case stat
        case exec
        case closed
    }

    private let node: NodeServer
    private let compat: PPCompatService
    private let logger: Logger
    private var phase = Phase.awaitingAnswer
    private let challenge: [UInt8]
    private var context: ChannelHandlerContext?
    private var handshakeTimer: Scheduled<Void>?
    /// Function messages seen on this connection, by MD5 (ppft's "H" messages).
    private var functions: [String: FunctionBundle] = [:]
    private var pendingFunction: FunctionBundle?
    /// Jobs received, run one after another (ppft waits for each result anyway).
    private var queue: [(FunctionBundle, [UInt8])] = []
    private var running = false
    private let peer: String

    init(node: NodeServer, compat: PPCompatService, peer: String) {
        self.node = node
        self.compat = compat
        self.peer = peer
        var logger = node.configuration.logger
        logger[metadataKey: "pp.peer"] = "\(peer)"
        self.logger = logger
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        self.challenge = randomBytes(16).map { letters[Int($0) % letters.count] }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        self.compat.connections += 1
        self.send([Array(self.compat.version.utf8), self.challenge])
        // A peer that does not authenticate and name its connection type in time is
        // closed: idle unauthenticated connections must not pile up.
        let limit = self.node.configuration.handshakeTimeout
        self.handshakeTimer = context.eventLoop.scheduleTask(in: .nanoseconds(limit.nanosecondsInt64)) { [self] in
            guard self.phase == .awaitingAnswer || self.phase == .awaitingType else { return }
            self.compat.protocolErrors += 1
            self.logger.notice("pp client did not authenticate within \(limit) (--handshake-timeout); closing")
            self.close()
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.phase = .closed
        self.context = nil
        self.handshakeTimer?.cancel()
        self.compat.connections -= 1
        context.fireChannelInactive()
    }

    /// Writes frames with one write and one flush.
    private func send(_ payloads: [[UInt8]]) {
        guard let context = self.context else { return }
        var buffer = context.channel.allocator.buffer(capacity: payloads.reduce(0) { $0 + $1.count + 8 })
        for p in payloads {
            buffer.writeInteger(UInt64(p.count))
            buffer.writeBytes(p)
        }
        context.writeAndFlush(Self.wrapOutboundOut(buffer), promise: nil)
    }

    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = Self.unwrapInboundIn(data)
        switch self.phase {
        case .awaitingAnswer:
            let expected = PPWire.answer(challenge: self.challenge, secret: self.node.configuration.secret.bytes)
            guard constantTimeEqual(Array(expected.utf8), frame) else {
                self.compat.authFailures += 1
                self.logger.warning("pp client refused: wrong secret (the pp secret is the text of this node's secret file)")
                self.send([Array("FAILED".utf8)])
                self.close()
                return
            }
            self.send([Array("OK".utf8)])
            self.phase = .awaitingType
        case .awaitingType:
            switch String(decoding: frame, as: UTF8.self) {
            case "STAT":
                self.phase = .stat
                self.send([Array(String(self.node.workers).utf8)])
            case "EXEC":
                self.phase = .exec
            default:
                self.logger.warning("pp client sent an unknown connection type; closing", metadata: ["type": "\(PeerText.cut(String(decoding: frame.prefix(16), as: UTF8.self), limit: 16))"])
                self.close()
            }
        case .stat:
            // ppft sends "TIME" and expects the job time sum (seconds) as text.
            self.send([Array(String(self.compat.jobSeconds).utf8)])
        case .exec:
            if let function = self.pendingFunction {
                self.pendingFunction = nil
                self.queue.append((function, frame))
                self.runNext()
            } else {
                self.receiveFunction(frame)
            }
        case .closed:
            break
        }
    }

    private func receiveFunction(_ frame: [UInt8]) {
        guard let kind = frame.first else {
            self.protocolError("an empty function message")
            return
        }
        switch kind {
        case UInt8(ascii: "N"):
            let sfunc = Array(frame.dropFirst())
            let md5 = PPWire.md5Hex(sfunc)
            let bundle = self.compat.bundle(md5: md5, sfunc: sfunc)
            self.functions[md5] = bundle
            self.pendingFunction = bundle
        case UInt8(ascii: "H"):
            let md5 = String(decoding: frame.dropFirst(), as: UTF8.self)
            guard let bundle = self.functions[md5] ?? self.compat.cached(md5: md5) else {
                self.protocolError("a function named by a hash it never sent (H\(md5.prefix(32)))")
                return
            }
            self.pendingFunction = bundle
        default:
            self.protocolError("a function message that starts with neither N nor H")
        }
    }

    private func runNext() {
        guard !self.running, !self.queue.isEmpty, self.phase == .exec else { return }
        let (bundle, sargs) = self.queue.removeFirst()
        self.running = true
        let started = ContinuousClock.now
        let argument = "[\"" + Data(sargs).base64EncodedString() + "\"]"
        let id = self.node.pool.jobIDs.next()
        self.node.pool.submit(
            Job(id: id, bundle: bundle, arguments: JobArguments(jsonArray: Array(argument.utf8)), timeout: nil) { [self] result in
                self.node.loop.execute { self.finished(result.outcome, started: started) }
            }
        )
    }

    private func finished(_ outcome: JobOutcome, started: ContinuousClock.Instant) {
        self.running = false
        let elapsed = ContinuousClock.now - started
        self.compat.jobsDone += 1
        self.compat.jobSeconds += Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        guard self.phase == .exec else { return }
        let payload: [UInt8]
        switch outcome.result {
        case .success(let json):
            // The adapter returns a JSON string of base64.
            if json.count >= 2, let decoded = Data(base64Encoded: Data(json.dropFirst().dropLast())) {
                payload = Array(decoded)
            } else {
                payload = PPWire.pickledNoneResult(output: "ppnode: the pp worker returned something unreadable\n")
            }
        case .failure(let error):
            self.compat.jobsFailed += 1
            payload = PPWire.pickledNoneResult(output: "An error has occured during the function execution\nppnode: \(error)\n")
        }
        self.send([payload])
        self.runNext()
    }

    private func protocolError(_ what: String) {
        self.compat.protocolErrors += 1
        self.logger.warning("pp client sent \(what); closing its connection")
        self.close()
    }

    private func close() {
        self.phase = .closed
        self.context?.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is PPCompatError || error is ByteToMessageDecoderError {
            self.compat.protocolErrors += 1
            self.logger.warning("pp client error; closing its connection", metadata: ["error": "\(error)"])
        }
        self.close()
    }
}

/// Shared state of the pp-compatible listener: counters and the function cache.
/// Confined to the node's loop.
final class PPCompatService: @unchecked Sendable {
    let version: String
    var connections = 0
    var authFailures = 0
    var protocolErrors = 0
    var jobsDone = 0
    var jobsFailed = 0
    var jobSeconds = 0.0
    /// Functions by the md5 ppft names them with, bounded in bytes.
    private var bundles = BoundedCache<String, FunctionBundle>(capacity: 64 << 20)

    init(version: String) {
        self.version = version
    }

    /// The bundle for a function message, shared by all pp connections (bounded).
    func bundle(md5: String, sfunc: [UInt8]) -> FunctionBundle {
        if let b = self.bundles.get(md5) { return b }
        let b = PPAdapter.bundle(sfunc: sfunc)
        self.bundles.insert(md5, b, cost: b.spec.count)
        return b
    }

    func cached(md5: String) -> FunctionBundle? { self.bundles.get(md5) }
}
