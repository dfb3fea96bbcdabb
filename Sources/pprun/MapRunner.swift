import Dispatch
import Foundation
import PPCore
import ParallelPython
import Synchronization

/// What `pprun map` does with finished jobs, besides printing their values.
struct MapOptions: Sendable {
    /// Print results as they finish, not in input order (`--unordered`).
    var unordered = false
    /// Print each input with its value or error as one JSON object (`--tag`).
    var tag = false
    /// How many more times a failed job runs (`--retries`).
    var retries = 0
    /// Stop after this many failed inputs (`--max-failures`, `--halt-on-error`).
    var maxFailures: Int?
    /// One record per job (`--joblog`).
    var joblog: JobLog?
    /// Inputs that succeeded in the run `--resume` goes on from: index → input JSON.
    var done: [Int: JSONValue] = [:]
}

/// Feeds inputs to the job server from a producer thread (at most `window` jobs
/// outstanding) and prints results in input order as soon as order allows (or as they
/// finish, with `--unordered`).
struct MapRunner: Sendable {
    /// How an input ended.
    enum Ending: Sendable {
        case job(JobOutcome)
        case input(InputError)
        /// Done in the run `--resume` goes on from.
        case skipped
    }

    private enum Event: Sendable {
        case finished(InputItem, Ending, attempt: Int)
        case end(total: Int)
    }

    let server: JobServer
    let function: PythonFunction
    let progress: Progress?
    let counters: RunCounters
    let options: MapOptions
    private static let window = 16_384
    private static let batchSize = 256

    /// Runs every input; returns how many there were and how many failed.
    func run(_ inputs: InputSource, format: InputFormat) async -> (total: Int, failed: Int) {
        let sink = EventInbox<Event>()
        let slots = Window(Self.window)
        let producer = Thread { self.produce(inputs, format: format, slots: slots, sink: sink) }
        producer.stackSize = 1 << 20
        producer.start()
        // The results are taken on a thread of their own (it waits on a condition, not
        // in the cooperative pool).
        return await withCheckedContinuation { c in
            let consumer = Thread { c.resume(returning: self.consume(sink: sink, slots: slots)) }
            consumer.stackSize = 1 << 20
            consumer.start()
        }
    }

    /// Prints results as they come (in input order unless `--unordered`) until all are
    /// in; returns how many inputs there were and how many failed.
    private func consume(sink: EventInbox<Event>, slots: Window) -> (total: Int, failed: Int) {
        var report = FailureReport()
        var pending: [Int: (InputItem, Ending)] = [:]
        var (next, done, total): (Int, Int, Int?) = (0, 0, nil)
        var out: [UInt8] = []
        func finish(_ item: InputItem, _ ending: Ending) {
            self.emit(item, ending, report: &report, to: &out)
            if out.count >= 1 << 16 { self.write(&out) }
            done += 1
            if let maxFailures = self.options.maxFailures, report.failed >= maxFailures {
                self.write(&out)
                self.progress?.finish(done: done, failed: report.failed)
                report.printSummary()
                let of = self.counters.total.map(String.init) ?? "\(self.counters.submitted.load(ordering: .relaxed)) read"
                Console.error("pprun: stopped after \(report.failed) failed \(report.failed == 1 ? "job" : "jobs") (--max-failures \(maxFailures)); \(done) of \(of) inputs done")
                Stop.now(status: ExitCodes.jobFailed)
            }
        }
        // Events come in bursts (all that arrived since the last look): one wake-up, one
        // write, one progress update and one release of window slots per burst.
        while total.map({ done < $0 }) ?? true {
            let before = done
            for event in sink.take() {
                switch event {
                case .finished(let item, let ending, let attempt):
                    if case .job(let outcome) = ending, case .failure(let error) = outcome.result, attempt <= self.options.retries, Self.isRetryable(error) {
                        self.submit([(item, attempt + 1)], sink: sink)
                        continue
                    }
                    self.counters.finished.add(1, ordering: .relaxed)
                    self.options.joblog?.record(item, ending, attempts: attempt)
                    if self.options.unordered {
                        finish(item, ending)
                    } else if item.index == next {
                        // In order already (the common case): no detour through `pending`.
                        finish(item, ending)
                        next += 1
                        while let (item, ending) = pending.removeValue(forKey: next) {
                            finish(item, ending)
                            next += 1
                        }
                    } else {
                        pending[item.index] = (item, ending)
                    }
                case .end(let n): total = n
                }
            }
            self.write(&out)
            slots.release(done - before)
            self.progress?.update(done: done, failed: report.failed)
        }
        // Every result is out: a reader that leaves now cut nothing short.
        Stop.outputComplete.store(true, ordering: .relaxed)
        self.progress?.finish(done: done, failed: report.failed)
        report.printSummary()
        return (done, report.failed)
    }

    /// Failures that may go another way on another try: not a function that does not
    /// load, nor arguments it cannot take.
    private static func isRetryable(_ error: JobError) -> Bool {
        ![JobError.Code.functionUnavailable, .badArguments, .cancelled, .shutdown].contains(error.code)
    }

    /// Submits jobs; each one's outcome comes back as an event.
    private func submit(_ jobs: [(item: InputItem, attempt: Int)], sink: EventInbox<Event>) {
        let arguments = jobs.map { job in
            guard case .success(let arguments) = job.item.arguments else { preconditionFailure("only inputs with arguments run") }
            return arguments
        }
        self.server.submitBatch(self.function, arguments: arguments) { i, outcome in
            sink.post(.finished(jobs[i].item, .job(outcome), attempt: jobs[i].attempt))
        }
    }

    /// Runs on the producer thread.
    private func produce(_ inputs: InputSource, format: InputFormat, slots: Window, sink: EventInbox<Event>) {
        var batch: [(item: InputItem, attempt: Int)] = []
        func submitPending() {
            guard !batch.isEmpty else { return }
            self.submit(batch, sink: sink)
            batch.removeAll(keepingCapacity: true)
        }
        inputs.forEach(format, beforeBlocking: submitPending) { item in
            slots.acquire()
            self.counters.submitted.add(1, ordering: .relaxed)
            if let input = self.options.done[item.index], input == (try? JSONDecoder().decode(JSONValue.self, from: Data(item.json))) {
                sink.post(.finished(item, .skipped, attempt: 0))
                return
            }
            switch item.arguments {
            case .failure(let error):
                sink.post(.finished(item, .input(error), attempt: 1))
            case .success:
                batch.append((item, 1))
                if batch.count >= Self.batchSize { submitPending() }
            }
        }
        submitPending()
        sink.post(.end(total: self.counters.submitted.load(ordering: .relaxed)), urgent: true)
    }

    /// Prints one finished input: its value (or, with `--tag`, the input with its value
    /// or error) to `out`; what it printed and why it failed to stderr.
    private func emit(_ item: InputItem, _ ending: Ending, report: inout FailureReport, to out: inout [UInt8]) {
        var text = ""
        var result: Result<[UInt8], JobError>
        switch ending {
        case .skipped:
            return
        case .input(let error):
            result = .failure(JobError(code: .badArguments, message: error.message))
            text = "pprun: input \(item.display): \(error.message)\n"
            report.failed += 1
        case .job(let outcome):
            text = outcome.stdout + outcome.stderr
            result = outcome.result
            if case .failure(let error) = outcome.result { text += report.add(error, input: item.display) }
        }
        if !text.isEmpty {
            self.progress?.clear()
            Console.error(text, newline: false)
        }
        if self.options.tag {
            var w = JSONWriter(capacity: item.json.count + 64)
            w.raw("{\"input\":")
            w.raw(bytes: item.json)
            switch result {
            case .success(let value):
                w.raw(",\"value\":")
                w.raw(bytes: value)
            case .failure(let error):
                w.raw(",\"error\":")
                JSONValue.object(["kind": .string(error.code.description), "type": error.pythonType.map(JSONValue.string) ?? .null, "message": .string(error.message)]).write(to: &w)
            }
            w.raw("}\n")
            out += w.bytes
        } else if case .success(let value) = result {
            out += value
            out.append(10)
        }
    }

    /// Writes the results in `out` to stdout in one call (the progress bar cleared
    /// first when both share the terminal), and empties it. A reader that is gone ends the run (`Stop.outputClosed`).
    private func write(_ out: inout [UInt8]) {
        guard !out.isEmpty else { return }
        if Console.stdoutIsTerminal { self.progress?.clear() }
        if !Console.writeAll(fd: 1, out) { Stop.outputClosed() }
        out.removeAll(keepingCapacity: true)
    }
}

/// Events from any thread to one consumer thread, taken in bursts: `take()` returns all
/// that arrived since the last call. A post wakes the waiting consumer only when a
/// burst is full (or the event is urgent); else the consumer looks every millisecond.
/// A stream of single events would wake it once per result (a futex wake-up and a
/// context switch each, on a machine whose cores the workers need).
final class EventInbox<Event: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    private var events: [Event] = []
    private var waiting = false
    /// Events that wake the consumer at once.
    static var burst: Int { 512 }

    /// Adds an event; wakes the consumer for a full burst or an `urgent` event.
    func post(_ event: Event, urgent: Bool = false) {
        self.condition.lock()
        self.events.append(event)
        if self.waiting, urgent || self.events.count >= Self.burst { self.condition.signal() }
        self.condition.unlock()
    }

    /// Every event posted since the last call (at least one: waits for it).
    func take() -> [Event] {
        self.condition.lock()
        defer { self.condition.unlock() }
        while self.events.isEmpty {
            self.waiting = true
            _ = self.condition.wait(until: Date(timeIntervalSinceNow: 0.001))
            self.waiting = false
        }
        var taken: [Event] = []
        swap(&taken, &self.events)
        return taken
    }
}

/// The slots of `pprun map`'s window: the producer takes one per input, the consumer
/// gives them back per burst; a waiting producer is woken once a good share is free,
/// not once per finished job.
final class Window: @unchecked Sendable {
    private let condition = NSCondition()
    private var free: Int
    private var waiting = false
    private let wakeAt: Int

    init(_ size: Int) {
        self.free = size
        self.wakeAt = max(1, min(1024, size / 4))
    }

    /// Takes one slot, waiting for enough to be free.
    func acquire() {
        self.condition.lock()
        while self.free == 0 {
            self.waiting = true
            self.condition.wait()
            self.waiting = false
        }
        self.free -= 1
        self.condition.unlock()
    }

    /// Gives `n` slots back.
    func release(_ n: Int) {
        guard n > 0 else { return }
        self.condition.lock()
        self.free += n
        if self.waiting, self.free >= self.wakeAt { self.condition.signal() }
        self.condition.unlock()
    }
}

/// Failed jobs as stderr shows them: one line each, the traceback only the first time
/// an error is seen, and past `shown` failures with the same error, a count at
/// the end instead of a line each.
struct FailureReport {
    var failed = 0
    /// Failures by error (code, type, message), in the order first seen.
    private var seen: [String: (error: JobError, count: Int)] = [:]
    private var order: [String] = []
    private static let shown = 3
    /// Distinct errors remembered; past them, each failure is printed in full.
    private static let distinctKept = 1024

    /// Counts a failure; returns what to print for it now.
    mutating func add(_ error: JobError, input: String) -> String {
        self.failed += 1
        let key = "\(error.code)\u{0}\(error.pythonType ?? "")\u{0}\(error.message)"
        let count = (self.seen[key]?.count ?? 0) + 1
        if count == 1, self.order.count < Self.distinctKept {
            self.order.append(key)
        }
        if count > 1 || self.order.last == key { self.seen[key] = (error, count) }
        guard count <= Self.shown else { return "" }
        var text = "pprun: job failed for input \(input): \(PeerText.cut(error.description, limit: 500))\n"
        if count == 1, !error.traceback.isEmpty {
            text += error.traceback.hasSuffix("\n") ? error.traceback : error.traceback + "\n"
        }
        return text
    }

    /// Says how many failures were only counted.
    func printSummary() {
        for key in self.order {
            guard let (error, count) = self.seen[key], count > Self.shown else { continue }
            let n = (count - Self.shown).formatted()
            Console.error("pprun: and \(n) more \(count - Self.shown == 1 ? "job" : "jobs") failed with the same \(error.pythonType ?? error.code.description): \(PeerText.cut(error.message, limit: 200))")
        }
    }
}
