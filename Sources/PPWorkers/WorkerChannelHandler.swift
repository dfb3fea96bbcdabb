import NIOCore
import PPCore

/// Passes a worker's decoded messages and the end of its stdout to the pool driver;
/// lives on the pool's loop.
final class WorkerChannelHandler: ChannelInboundHandler {
    typealias InboundIn = WorkerMessage

    private let driver: PoolDriver
    private let index: Int

    init(driver: PoolDriver, index: Int) {
        self.driver = driver
        self.index = index
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.driver.received(Self.unwrapInboundIn(data), index: self.index)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.driver.readComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.driver.protocolFailure(index: self.index, message: "\(error)")
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.driver.channelClosed(index: self.index)
    }
}
