// The machine's floor for a round trip through a node: the same three processes and
// the same hops as (c), with nothing but blocking system calls between them.
//
// ppbench (the client) opens a TCP connection on loopback to a child ppbench started
// with `--floor-node` (the node), both speak TLS 1.3 with the cluster's pre-shared key
// through the product's own OpenSSL context (`pp_tls_ctx_new`), and the node hands
// each request to a Python worker over a pair of pipes and sends its answer back. A
// request is 32 bytes: a number, which the worker's `f(x) = x + 1` turns into the
// answer. No event loop, no poll, no frames, no pickling, no thread hand-off inside
// a process: one `write` and one `read` per hop, as a hand-written C program would.
//
// Whatever our round trip costs above this is ours (event loops, frames, scheduling,
// Swift concurrency); this much is the kernel's, OpenSSL's and Python's on this
// machine, and no design with a separate node process and Python workers goes below it.
// `localRoundTrips` is the local mode's floor the same way: the caller writes each
// request straight into the worker's pipe.

import COpenSSL
import Foundation
import PPCore

enum Floor {
    /// Bytes of a request and of an answer.
    static let size = 32

    /// The worker: reads a request, answers `f(x) = x + 1`, until its input ends.
    static let worker = """
        import os
        def f(x):
            return x + 1
        read, write = os.read, os.write
        while True:
            b = read(0, \(size))
            if len(b) < \(size):
                break
            write(1, b"%-\(size)d" % f(int(b)))
        """

    /// The node's side, in the child `ppbench --floor-node SECRET PYTHON`: prints its
    /// port, serves one connection until it closes, then exits.
    static func node(secret: String, python: String) -> Never {
        do {
            let keys = try ClusterSecret(text: secret, origin: "ppbench").keys
            let listener = try listen()
            try Array("\(try port(of: listener))\n".utf8).withUnsafeBytes { try writeAll(1, $0) }
            let worker = try FloorWorker(python: python)
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { throw FloorError("accept: \(errnoText())") }
            noDelay(fd)
            let tls = try BlockingTLS(fd: fd, keys: keys, server: true)
            var buffer = [UInt8](repeating: 0, count: size)
            while try tls.receive(&buffer) {
                try worker.exchange(&buffer)
                try tls.send(buffer)
            }
            worker.finish()
            exit(0)
        } catch {
            FileHandle.standardError.write(Data("ppbench --floor-node: \(error)\n".utf8))
            exit(1)
        }
    }

    /// Starts the floor's node and worker, times `count` round trips one at a time
    /// (after 200 to warm up), and returns each time in seconds.
    static func roundTrips(count: Int, secret: String, python: String) throws -> [Double] {
        let keys = try ClusterSecret(text: secret, origin: "ppbench").keys
        let node = Process()
        node.executableURL = URL(fileURLWithPath: "/proc/self/exe")  // this ppbench, wherever it was found
        node.arguments = ["--floor-node", secret, python]
        let out = Pipe()
        node.standardOutput = out
        try node.run()
        defer { node.waitUntilExit() }
        var line = [UInt8]()
        var byte: UInt8 = 0
        while read(out.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != 10 { line.append(byte) }
        guard let port = UInt16(String(decoding: line, as: UTF8.self)) else { node.terminate(); throw FloorError("the floor's node printed no port") }

        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = loopback(port: port)
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { node.terminate(); throw FloorError("connect: \(errnoText())") }
        defer { close(fd) }
        noDelay(fd)
        // A node that stops answering fails the run with a message instead of hanging it.
        var limit = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let tls = try BlockingTLS(fd: fd, keys: keys, server: false)
        return try timed(count: count) { message in
            try tls.send(message)
            guard try tls.receive(&message) else { throw FloorError("the floor's node closed the connection") }
        }
    }

    /// The local mode's floor: the caller writes each request straight into a Python
    /// worker's pipe and reads the answer (no engine, no loop, no frames). Times
    /// `count` round trips after 200 to warm up, in seconds.
    static func localRoundTrips(count: Int, python: String) throws -> [Double] {
        let worker = try FloorWorker(python: python)
        defer { worker.finish() }
        return try timed(count: count) { try worker.exchange(&$0) }
    }

    /// Times `count` calls of `roundTrip` after 200 to warm up, in seconds. Each call
    /// gets request `i` (the number, padded with spaces) and must leave the worker's
    /// answer, `i + 1`, in its place.
    static func timed(count: Int, _ roundTrip: (inout [UInt8]) throws -> Void) throws -> [Double] {
        var message = [UInt8](repeating: 32, count: size)
        var samples: [Double] = []
        samples.reserveCapacity(count)
        for i in 0..<(200 + count) {
            let text = Array(String(i).utf8)
            message.withUnsafeMutableBytes { bytes in
                bytes.initializeMemory(as: UInt8.self, repeating: 32)
                bytes.copyBytes(from: text)
            }
            let start = ContinuousClock.now
            try roundTrip(&message)
            let elapsed = ContinuousClock.now - start
            if i >= 200 { samples.append(seconds(elapsed)) }
            let answer = String(decoding: message, as: UTF8.self)
            guard Int(answer.trimmingCharacters(in: .whitespaces)) == i + 1 else {
                throw FloorError("the floor's worker answered \(answer) to \(i)")
            }
        }
        return samples
    }

    static func listen() throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = loopback(port: 0)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard fd >= 0, bound == 0, Glibc.listen(fd, 1) == 0 else { throw FloorError("listen on 127.0.0.1: \(errnoText())") }
        return fd
    }

    static func port(of fd: Int32) throws -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        guard ok == 0 else { throw FloorError("getsockname: \(errnoText())") }
        return UInt16(bigEndian: address.sin_port)
    }

    static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return address
    }

    static func noDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }
}

/// The floor's Python worker (`Floor.worker`) on a pair of pipes.
struct FloorWorker {
    let process = Process()
    let input = Pipe()
    let output = Pipe()

    init(python: String) throws {
        self.process.executableURL = URL(fileURLWithPath: python)
        self.process.arguments = ["-S", "-c", Floor.worker]
        self.process.standardInput = self.input
        self.process.standardOutput = self.output
        try self.process.run()
    }

    /// Sends `message` to the worker and replaces it with the answer.
    func exchange(_ message: inout [UInt8]) throws {
        try message.withUnsafeBytes { try writeAll(self.input.fileHandleForWriting.fileDescriptor, $0) }
        guard try message.withUnsafeMutableBytes({ try readAll(self.output.fileHandleForReading.fileDescriptor, $0) }) else {
            throw FloorError("the floor's worker ended")
        }
    }

    /// Closes the worker's input (it exits) and waits for it.
    func finish() {
        try? self.input.fileHandleForWriting.close()
        self.process.waitUntilExit()
    }
}

struct FloorError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func errnoText() -> String { String(cString: strerror(errno)) }

/// Writes every byte of `bytes` to `fd`.
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
    var done = 0
    while done < bytes.count {
        let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0, errno == EINTR { continue }
        guard n > 0 else { throw FloorError("write: \(errnoText())") }
        done += n
    }
}

/// Fills `bytes` from `fd`; false at end of input before the first byte.
func readAll(_ fd: Int32, _ bytes: UnsafeMutableRawBufferPointer) throws -> Bool {
    var done = 0
    while done < bytes.count {
        let n = read(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0, errno == EINTR { continue }
        guard n >= 0 else { throw FloorError("read: \(errnoText())") }
        if n == 0 {
            if done == 0 { return false }
            throw FloorError("the input ended inside a message")
        }
        done += n
    }
    return true
}

/// TLS over a blocking socket, with the product's context and its memory BIOs: what
/// OpenSSL writes goes to the socket at once; what the socket gives goes to OpenSSL.
final class BlockingTLS {
    let fd: Int32
    let ssl: OpaquePointer
    let input: OpaquePointer
    let output: OpaquePointer
    let ctx: OpaquePointer
    let psk: UnsafeMutablePointer<pp_tls_psk>
    let conn: UnsafeMutablePointer<pp_tls_conn>
    var scratch = [UInt8](repeating: 0, count: 16_384)

    init(fd: Int32, keys: ClusterKeys, server: Bool) throws {
        self.fd = fd
        self.psk = .allocate(capacity: 1)
        self.psk.initialize(to: pp_tls_psk())
        withUnsafeMutableBytes(of: &self.psk.pointee.key) { $0.copyBytes(from: keys.tlsKey.prefix(32)) }
        withUnsafeMutableBytes(of: &self.psk.pointee.identity) { $0.copyBytes(from: keys.tlsIdentity.utf8.prefix($0.count - 1)) }
        self.conn = .allocate(capacity: 1)
        self.conn.initialize(to: pp_tls_conn())
        guard let ctx = pp_tls_ctx_new(server ? 1 : 0, self.psk) else { throw FloorError("no TLS context") }
        self.ctx = ctx
        var input: OpaquePointer?, output: OpaquePointer?
        guard let ssl = pp_tls_new(ctx, server ? 1 : 0, self.conn, &input, &output), let input, let output else { throw FloorError("no TLS connection") }
        self.ssl = ssl
        self.input = input
        self.output = output
        while true {
            let r = SSL_do_handshake(ssl)
            try self.flush()
            if r == 1 { break }
            guard SSL_get_error(ssl, r) == SSL_ERROR_WANT_READ, try self.fill() else { throw FloorError("the TLS handshake failed") }
        }
    }

    deinit {
        SSL_free(self.ssl)
        SSL_CTX_free(self.ctx)
        self.psk.deallocate()
        self.conn.deallocate()
    }

    /// Sends what OpenSSL has written.
    func flush() throws {
        while pp_bio_pending(self.output) > 0 {
            let n = self.scratch.withUnsafeMutableBytes { BIO_read(self.output, $0.baseAddress, Int32($0.count)) }
            guard n > 0 else { break }
            try self.scratch.withUnsafeBytes { try writeAll(self.fd, UnsafeRawBufferPointer(rebasing: $0[0..<Int(n)])) }
        }
    }

    /// Gives OpenSSL what one read of the socket returns; false at its end.
    func fill() throws -> Bool {
        let n = self.scratch.withUnsafeMutableBytes { read(self.fd, $0.baseAddress, $0.count) }
        if n < 0, errno == EAGAIN { throw FloorError("the peer sent nothing for 10 s") }
        guard n >= 0 else { throw FloorError("read: \(errnoText())") }
        if n == 0 { return false }
        _ = self.scratch.withUnsafeBytes { BIO_write(self.input, $0.baseAddress, Int32(n)) }
        return true
    }

    /// Encrypts `bytes` as one record and sends it.
    func send(_ bytes: [UInt8]) throws {
        let n = bytes.withUnsafeBytes { SSL_write(self.ssl, $0.baseAddress, Int32($0.count)) }
        guard n == bytes.count else { throw FloorError("SSL_write failed") }
        try self.flush()
    }

    /// Fills `bytes` with decrypted bytes; false when the peer closed first.
    func receive(_ bytes: inout [UInt8]) throws -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { SSL_read(self.ssl, $0.baseAddress! + done, Int32($0.count - done)) }
            if n > 0 {
                done += Int(n)
                continue
            }
            guard SSL_get_error(self.ssl, n) == SSL_ERROR_WANT_READ else { throw FloorError("a TLS record failed") }
            guard try self.fill() else {
                if done == 0 { return false }
                throw FloorError("the connection ended inside a message")
            }
        }
        return true
    }
}
