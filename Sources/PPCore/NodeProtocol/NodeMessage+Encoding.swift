public import NIOCore

// MARK: - Encoding

extension NodeMessage {
    /// Appends this message as one frame: the length, the type, the body (each frame
    /// type's file gives its body's layout).
    ///
    /// - Parameter buffer: where the frame goes.
    public func write(to buffer: inout ByteBuffer) {
        let start = buffer.writerIndex
        buffer.writeInteger(UInt32(0))  // the length, set below
        buffer.writeInteger(self.kind.rawValue)
        switch self {
        case .hello(let minVersion, let maxVersion, let maxFrame, let name):
            Self.writeHello(minVersion: minVersion, maxVersion: maxVersion, maxFrame: maxFrame, name: name, to: &buffer)
        case .welcome(let version, let window, let maxFrame, let info):
            Self.writeWelcome(version: version, window: window, maxFrame: maxFrame, info: info, to: &buffer)
        case .error(let code, let message):
            Self.writeError(code: code, message: message, to: &buffer)
        case .submit(let jobs):
            Self.writeSubmit(jobs, to: &buffer)
        case .bundle(let digest, let spec):
            Self.writeBundle(digest: digest, spec: spec, to: &buffer)
        case .cancel(let id), .stop(let id):
            Self.writeJobID(id, to: &buffer)
        case .ping(let token), .pong(let token), .statsRequest(let token):
            Self.writeToken(token, to: &buffer)
        case .goodbye(let reason):
            Self.writeGoodbye(reason: reason, to: &buffer)
        case .results(let results):
            Self.writeResultsBody(results, to: &buffer)
        case .need(let digest), .needBlob(let digest):
            Self.writeNeed(digest, to: &buffer)
        case .blob(let digest, let bytes):
            Self.writeBlob(digest: digest, bytes: bytes, to: &buffer)
        case .window(let window):
            Self.writeWindow(window, to: &buffer)
        case .stats(let token, let json):
            Self.writeStats(token: token, json: json, to: &buffer)
        }
        buffer.setInteger(UInt32(buffer.writerIndex - start - 4), at: start)
    }
}
