import Dispatch
import Foundation
import ParallelPython
import Synchronization

/// How far a run got: read by the signal handler while the run goes on.
final class RunCounters: Sendable {
    /// Inputs that have ended (with a result or an error).
    let finished = Atomic<Int>(0)
    /// Inputs read and submitted so far.
    let submitted = Atomic<Int>(0)
    /// The number of inputs when known before reading them.
    let total: Int?

    init(total: Int?) {
        self.total = total
    }
}

/// SIGINT, SIGTERM and SIGHUP stop `pprun`: it kills its workers' process groups (and
/// what their jobs started), says how far it got, and exits 130, 143 or 129.
enum Interruption {
    /// The signals handled, and the status each one exits with (128 + signal).
    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    /// Installs the handlers; keep the returned sources alive for as long as they apply.
    static func install(_ counters: RunCounters) -> [any DispatchSourceSignal] {
        self.signals.map { number in
            // The default action would kill us before the source sees the signal.
            _ = signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { Self.stop(number, counters) }
            source.resume()
            return source
        }
    }

    private static func stop(_ number: Int32, _ counters: RunCounters) -> Never {
        let done = counters.finished.load(ordering: .relaxed)
        let total = counters.total ?? counters.submitted.load(ordering: .relaxed)
        let clear = Console.stderrIsTerminal ? "\r\u{1B}[2K" : ""
        Console.error("\(clear)pprun: interrupted: \(done) of \(total) done")
        Stop.now(status: 128 + number)
    }
}
