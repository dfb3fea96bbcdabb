import Dispatch
import Foundation
import ParallelPython
import Synchronization

/// Feeds inputs to the job server from a producer thread (at most `window` jobs
/// outstanding) and prints results in input order as soon as order allows.
struct MapRunner: Sendable {
    private enum Event: Sendable {
        case finished(index: Int, display: String, outcome: Result<JobOutcome, InputError>)
        case end(total: Int)
    }

    let server: JobServer
    let function: PythonFunction
    let progress: Progress?
    let counters: RunCounters
    private static let window = 16_384
    private static let batchSize = 256

    /// Runs every input; returns how many there were and how many failed.
    func run(_ inputs: InputSource) async -> (total: Int, failed: Int) {
        let (events, sink) = AsyncStream.makeStream(of: Event.self)
        let slots = DispatchSemaphore(value: Self.window)
        let producer = Thread { self.produce(inputs, slots: slots, sink: sink) }
        producer.stackSize = 1 << 20
        producer.start()

        var failed = 0
        var pending: [Int: (display: String, outcome: Result<JobOutcome, InputError>)] = [:]
        var next = 0
        var total: Int?
        var out: [UInt8] = []
        for await event in events {
            switch event {
            case .finished(let index, let display, let outcome): pending[index] = (display, outcome)
            case .end(let n): total = n
            }
            while let (display, outcome) = pending.removeValue(forKey: next) {
                if !self.emit(display: display, outcome: outcome, to: &out) { failed += 1 }
                if out.count >= 1 << 16 { self.write(&out) }
                next += 1
                slots.signal()
            }
            self.write(&out)
            self.progress?.update(done: next, failed: failed)
            if let total, next >= total { break }
        }
        self.progress?.finish()
        return (next, failed)
    }

    /// Runs on the producer thread.
    private func produce(_ inputs: InputSource, slots: DispatchSemaphore, sink: AsyncStream<Event>.Continuation) {
        var batch: [(arguments: JobArguments, display: String, index: Int)] = []
        func submitPending() {
            guard !batch.isEmpty else { return }
            let (inputs, counters) = (batch, self.counters)
            self.server.submitBatch(self.function, arguments: inputs.map(\.arguments)) { i, outcome in
                counters.finished.add(1, ordering: .relaxed)
                sink.yield(.finished(index: inputs[i].index, display: inputs[i].display, outcome: .success(outcome)))
            }
            batch.removeAll(keepingCapacity: true)
        }
        inputs.forEach(beforeBlocking: submitPending) { index, display, arguments in
            slots.wait()
            self.counters.submitted.add(1, ordering: .relaxed)
            switch arguments {
            case .failure(let error):
                self.counters.finished.add(1, ordering: .relaxed)
                sink.yield(.finished(index: index, display: display, outcome: .failure(error)))
            case .success(let args):
                batch.append((args, display, index))
                if batch.count >= Self.batchSize { submitPending() }
            }
        }
        submitPending()
        sink.yield(.end(total: self.counters.submitted.load(ordering: .relaxed)))
    }

    /// Prints one finished input: its value to `out`, what it printed and why it failed
    /// to stderr. Returns whether it succeeded.
    private func emit(display: String, outcome: Result<JobOutcome, InputError>, to out: inout [UInt8]) -> Bool {
        var value: [UInt8]?
        var text = ""
        switch outcome {
        case .failure(let error):
            text = "pprun: input \(display): \(error.message)\n"
        case .success(let outcome):
            text = outcome.stdout + outcome.stderr
            switch outcome.result {
            case .success(let bytes):
                value = bytes
            case .failure(let error):
                var traceback = error.traceback
                while traceback.hasSuffix("\n") { traceback.removeLast() }
                text += "pprun: job failed for input \(display): \(error)\n" + (error.traceback.isEmpty ? "" : traceback + "\n")
            }
        }
        if !text.isEmpty {
            self.progress?.clear()
            Console.error(text, newline: false)
        }
        guard let value else { return false }
        out += value
        out.append(10)
        return true
    }

    /// Writes the results in `out` to stdout in one call (the progress bar cleared
    /// first), and empties it.
    private func write(_ out: inout [UInt8]) {
        guard !out.isEmpty else { return }
        self.progress?.clear()
        Console.writeAll(fd: 1, out)
        out.removeAll(keepingCapacity: true)
    }
}
