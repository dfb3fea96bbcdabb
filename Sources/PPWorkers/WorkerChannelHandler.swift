import NIOCore
import PPCore

/// Passes a worker's decoded messages and the end of its stdout to the pool;
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
        self.pool.received(Self.unwrapInboundIn(data), index: self.index)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.pool.readComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.pool.protocolFailure(index: self.index, message: "\(error)")
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.pool.channelClosed(index: self.index)
    }
}
