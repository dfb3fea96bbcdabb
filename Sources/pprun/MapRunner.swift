import Dispatch
import Foundation
import ParallelPython
import Synchronization

/// Feeds inputs to the job server from a producer thread (at most `window` jobs
/// outstanding) and prints results in input order as soon as order allows.
final class MapRunner: Sendable {
    struct Summary {
        var total = 0
        var failed = 0
    }

    private enum Event: Sendable {
        case finished(index: Int, display: String, outcome: Result<JobOutcome, InputError>)
        case end(total: Int)
    }

    private let server: JobServer
    private let function: PythonFunction
    private let progress: Progress?
    private let window: Int
    private let counters: RunCounters
    private static let batchSize = 256

    init(server: JobServer, function: PythonFunction, progress: Progress?, counters: RunCounters, window: Int = 16_384) {
        self.server = server
        self.function = function
        self.progress = progress
        self.counters = counters
        self.window = window
    }

    func run(_ inputs: InputSource) async -> Summary {
        let (events, sink) = AsyncStream.makeStream(of: Event.self)
        let slots = DispatchSemaphore(value: self.window)
        let producer = Thread { [self] in
            self.produce(inputs, slots: slots, sink: sink)
        }
        producer.stackSize = 1 << 20
        producer.start()

        var summary = Summary()
        var pending: [Int: Event] = [:]
        var next = 0
        var total: Int?
        var out = OutputBuffer()
        for await event in events {
            switch event {
            case .finished(let index, _, _): pending[index] = event
            case .end(let n): total = n
            }
            while let ready = pending.removeValue(forKey: next) {
                if case .finished(_, let display, let outcome) = ready {
                    if !self.emit(display: display, outcome: outcome, to: &out) { summary.failed += 1 }
                }
                next += 1
                slots.signal()
            }
            if out.hasPending { self.progress?.clear() }
            out.flush()
            self.progress?.update(done: next, failed: summary.failed)
            if let total, next >= total { break }
        }
        summary.total = next
        self.progress?.finish()
        return summary
    }

    /// Runs on the producer thread.
    private func produce(_ inputs: InputSource, slots: DispatchSemaphore, sink: AsyncStream<Event>.Continuation) {
        var batch: [(arguments: JobArguments, display: String, index: Int)] = []
        var count = 0
        func submitPending() {
            guard !batch.isEmpty else { return }
            let (inputs, counters) = (batch, self.counters)
            self.server.submitBatch(self.function, arguments: inputs.map(\.arguments)) { i, outcome in
                counters.finished.add(1, ordering: .relaxed)
                sink.yield(.finished(index: inputs[i].index, display: inputs[i].display, outcome: .success(outcome)))
            }
            batch.removeAll(keepingCapacity: true)
        }
        inputs.forEach(beforeBlocking: submitPending) { input in
            slots.wait()
            count += 1
            self.counters.submitted.add(1, ordering: .relaxed)
            switch input.arguments {
            case .failure(let error):
                self.counters.finished.add(1, ordering: .relaxed)
                sink.yield(.finished(index: input.index, display: input.display, outcome: .failure(error)))
            case .success(let args):
                batch.append((args, input.display, input.index))
                if batch.count >= Self.batchSize { submitPending() }
            }
        }
        submitPending()
        sink.yield(.end(total: count))
    }

    /// Prints one finished input; returns whether it succeeded.
    private func emit(display: String, outcome: Result<JobOutcome, InputError>, to out: inout OutputBuffer) -> Bool {
        switch outcome {
        case .failure(let error):
            self.progress?.clear()
            Console.error("pprun: input \(display): \(error.message)")
            return false
        case .success(let outcome):
            if !outcome.stdout.isEmpty || !outcome.stderr.isEmpty {
                self.progress?.clear()
                Console.error(outcome.stdout + outcome.stderr, newline: false)
            }
            switch outcome.result {
            case .success(let bytes):
                out.append(bytes)
                return true
            case .failure(let error):
                self.progress?.clear()
                var text = "pprun: job failed for input \(display): \(error)"
                if !error.traceback.isEmpty { text += "\n" + error.traceback.trimmingSuffixNewlines() }
                Console.error(text)
                return false
            }
        }
    }
}

/// Results waiting to be written to stdout in one call.
struct OutputBuffer {
    private var bytes: [UInt8] = []

    var hasPending: Bool { !self.bytes.isEmpty }

    mutating func append(_ line: [UInt8]) {
        self.bytes.append(contentsOf: line)
        self.bytes.append(10)
        if self.bytes.count >= 1 << 16 { self.flush() }
    }

    mutating func flush() {
        guard !self.bytes.isEmpty else { return }
        Console.writeAll(fd: 1, self.bytes)
        self.bytes.removeAll(keepingCapacity: true)
    }
}

extension String {
    func trimmingSuffixNewlines() -> String {
        var s = self
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }
}
