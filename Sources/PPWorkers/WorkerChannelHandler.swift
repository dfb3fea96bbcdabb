import NIOCore
import PPCore

/// Passes a worker's decoded messages and the end of its stdout to the pool's machine;
/// lives on the pool's loop.
final class WorkerChannelHandler: ChannelInboundHandler {
    typealias InboundIn = WorkerMessage

    private let pool: WorkerPool
    private let index: Int

    init(pool: WorkerPool, index: Int) {
        self.pool = pool
        self.index = index
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.pool.handle { $0.received(Self.unwrapInboundIn(data), from: self.index, now: .now()) }
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
