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
        guard length <= UInt64(self.maxFrame) else {
            throw PPCompatError(description: "a pp frame of \(length) bytes is over the limit of \(self.maxFrame) (--max-frame)")
        }
        guard buffer.readableBytes >= 8 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 8)
        context.fireChannelRead(Self.wrapInboundOut(buffer.readBytes(length: Int(length))!))
        return .continue
    }
}

/// A pp frame too large.
struct PPCompatError: Error, CustomStringConvertible {
    let description: String
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

/// One ppft connection: the driver of a `PPSessionStateMachine`, which holds the
/// protocol. This handler passes frames and pool results to the machine and executes
/// its actions: writes, pool jobs, the handshake timer, the listener's counters and
/// logs.
///
/// `@unchecked Sendable` is safe because it is confined to the node's loop (its
/// channel's loop; pool completions hop there).
final class PPSession: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = [UInt8]
    typealias OutboundOut = ByteBuffer

    private let node: NodeServer
    private var compat: PPCompatService { self.node.pp }
    private let logger: Logger
    private var machine: PPSessionStateMachine
    private var context: ChannelHandlerContext?
    private var handshakeTimer: Scheduled<Void>?
    /// Whom its jobs run for in the pool's fair share: Parallel Python clients open a
    /// connection per job, so a client is its host (`"pp 10.0.0.5"`).
    private let owner: String
    private let ownerWeight: Double

    init(node: NodeServer, peer: String, host: String) {
        self.node = node
        self.owner = "pp \(host)"
        self.ownerWeight = node.configuration.clientWeights[host] ?? 1
        var logger = node.configuration.logger
        logger[metadataKey: LogKey.ppPeer] = "\(peer)"
        self.logger = logger
        self.machine = PPSessionStateMachine(
            version: node.configuration.ppVersion,
            challenge: PPSessionStateMachine.challenge(from: randomBytes(16)),
            secret: node.configuration.secret.bytes,
            workers: node.workers
        )
    }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        self.compat.connections += 1
        self.execute(self.machine.connected())
        let limit = self.node.configuration.handshakeTimeout
        self.handshakeTimer = context.eventLoop.scheduleTask(in: TimeAmount(limit)) { [self] in
            self.execute(self.machine.handshakeTimedOut())
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.machine.closed()
        self.context = nil
        self.handshakeTimer?.cancel()
        self.compat.connections -= 1
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let action = self.machine.received(
            Self.unwrapInboundIn(data),
            bundle: { self.compat.bundle(md5: $0, sfunc: $1) },
            cachedBundle: { self.compat.cached(md5: $0) }
        )
        self.execute(action)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is PPCompatError || error is ByteToMessageDecoderError {
            self.logger.warning("pp client error; closing its connection", metadata: [LogKey.error: "\(error)"])
        }
        self.machine.closed()
        self.context?.close(promise: nil)
    }

    // MARK: Actions

    private func execute(_ action: PPSessionStateMachine.Action) {
        switch action {
        case .none:
            break
        case .send(let payloads, let run):
            self.send(payloads)
            if let run { self.run(run) }
        case .sendJobTime:
            self.send([Array(String(self.compat.jobSeconds).utf8)])
        case .close(let why):
            switch why {
            case .wrongSecret:
                self.compat.authFailures += 1
                self.logger.warning("pp client refused: wrong secret (the pp secret is the text of this node's secret file)")
                self.send([Array("FAILED".utf8)])
            case .handshakeTimeout:
                self.logger.notice("pp client did not authenticate within \(self.node.configuration.handshakeTimeout) (--handshake-timeout); closing")
            case .unknownConnectionType(let type):
                self.logger.warning("pp client sent an unknown connection type; closing", metadata: [LogKey.connectionType: "\(type)"])
            case .protocolError(let what):
                self.logger.warning("pp client sent \(what); closing its connection")
            }
            self.context?.close(promise: nil)
        }
    }

    private func run(_ run: PPSessionStateMachine.Run) {
        let started = ContinuousClock.now
        let loop = self.node.loop
        var job = Job(id: self.node.pool.jobIDs.next(), bundle: run.bundle, arguments: run.arguments, timeout: nil) { [self] result in
            loop.execute {
                self.compat.jobsDone += 1
                self.compat.jobSeconds += (ContinuousClock.now - started) / .seconds(1)
                self.execute(self.machine.jobFinished(result))
            }
        }
        job.owner = self.owner
        job.ownerWeight = self.ownerWeight
        self.node.pool.submit(job)
    }

    /// Writes frames with one write and one flush.
    private func send(_ payloads: [[UInt8]]) {
        guard let context = self.context, !payloads.isEmpty else { return }
        var buffer = context.channel.allocator.buffer(capacity: payloads.reduce(0) { $0 + $1.count + 8 })
        for p in payloads {
            buffer.writeInteger(UInt64(p.count))
            buffer.writeBytes(p)
        }
        context.writeAndFlush(Self.wrapOutboundOut(buffer), promise: nil)
    }
}

/// Shared state of the pp-compatible listener: counters and the function cache.
/// Confined to the node's loop.
final class PPCompatService: @unchecked Sendable {
    var connections = 0
    var authFailures = 0
    var jobsDone = 0
    var jobSeconds = 0.0
    /// Functions by the md5 ppft names them with, bounded in bytes.
    private var bundles = BoundedCache<String, FunctionBundle>(capacity: 64 << 20)

    /// The bundle for a function message, shared by all pp connections (bounded).
    func bundle(md5: String, sfunc: [UInt8]) -> FunctionBundle {
        if let b = self.bundles.get(md5) { return b }
        let b = PPAdapter.bundle(sfunc: sfunc)
        self.bundles.insert(md5, b, cost: b.spec.count)
        return b
    }

    func cached(md5: String) -> FunctionBundle? { self.bundles.get(md5) }
}
