import NIOCore
import PPCore

/// Decodes a worker's frames and passes them and the end of its stdout to the pool's
/// machine; lives on the pool's loop.
///
/// It decodes with a `NIOSingleStepByteToMessageProcessor` in place rather than behind
/// a `ByteToMessageHandler`: that handler is generic code of another module and wrapped
/// every result in `NIOAny`, unspecialized, on the hottest path of the local mode.
final class WorkerChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let pool: WorkerPool
    private let index: Int
    private var frames = NIOSingleStepByteToMessageProcessor(WorkerMessageDecoder())

    init(pool: WorkerPool, index: Int) {
        self.pool = pool
        self.index = index
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            // The messages of one read go to the pool together: one clock read and one
            // list of actions for hundreds of tiny jobs' results.
            var messages: [WorkerMessage] = []
            defer {
                if !messages.isEmpty { self.pool.handle { $0.received(messages, from: self.index, now: .now()) } }
            }
            try self.frames.process(buffer: Self.unwrapInboundIn(data)) { message in
                if case .hello(let body) = message { self.pool.learnInterpreter(hello: body) }
                messages.append(message)
            }
        } catch {
            self.errorCaught(context: context, error: error)
        }
    }

    /// The reads of one batch are done: the machine refills workers' pipes, one write each.
    func channelReadComplete(context: ChannelHandlerContext) {
        self.pool.handle { $0.readComplete(now: .now()) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.pool.handle { $0.protocolError("\(error)", worker: self.index) }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.pool.handle { $0.stdoutClosed(worker: self.index) }
    }
}
