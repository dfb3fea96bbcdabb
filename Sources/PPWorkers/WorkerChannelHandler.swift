import Foundation
import NIOCore
import PPCore

/// Passes a worker's decoded messages to the pool core; lives on the pool's loop.
final class WorkerChannelHandler: ChannelInboundHandler {
    typealias InboundIn = WorkerMessage

    private let core: PoolCore
    private let index: Int

    init(core: PoolCore, index: Int) {
        self.core = core
        self.index = index
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.core.received(Self.unwrapInboundIn(data), index: self.index)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.core.readComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.core.protocolFailure(index: self.index, message: "\(error)")
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.core.channelClosed(index: self.index)
    }
}

/// Reads the worker's hello JSON.
enum HelloJSON {
    static func pythonVersion(_ body: ByteBuffer) -> String? {
        // {"pid":123,"python":"3.11.7",...}: a tiny scan avoids a JSON parser here.
        let text = String(buffer: body)
        guard let range = text.range(of: "\"python\":\"") else { return nil }
        let rest = text[range.upperBound...]
        guard let end = rest.firstIndex(of: "\"") else { return nil }
        return String(rest[..<end])
    }
}
