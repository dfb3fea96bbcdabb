import NIOCore
import PPCore
import Synchronization
import Testing

/// Jobs whose ends are recorded, to check each ends once and how.
private final class Ends: Sendable {
    let results = Mutex<[UInt64: [JobResult]]>([:])

    func job(_ id: UInt64, _ bundle: FunctionBundle) -> Job {
        Job(id: id, bundle: bundle) { [self] r in self.results.withLock { $0[id, default: []].append(r) } }
    }
}

private let f = FunctionBundle(name: "f", source: "import zz\ndef f(x):\n    return x\n")
private let g = FunctionBundle(name: "g", source: "def g(x):\n    return x\n")
private func noModule(_ executor: String) -> JobError {
    JobError(code: .functionUnavailable, message: "No module named 'zz'", pythonType: "ModuleNotFoundError", traceback: "Traceback...\n", executor: executor)
}

@Suite("Placement in the scheduler state machine")
struct PlacementTests {
    let a = 1
    let b = 2

    private func machine() -> SchedulerStateMachine {
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        s.added(self.a, name: "a (127.0.0.1:7341)", python: "3.12.1")
        s.added(self.b, name: "b (127.0.0.1:7342)", python: "3.8.10")
        return s
    }

    @Test func aRefusedJobGoesToAnotherExecutorAndNeverBack() {
        let ends = Ends()
        var s = self.machine()
        _ = s.enqueue([ends.job(1, f), ends.job(2, f)])
        let first = s.dispatch([(a, 1), (b, 1)]).batches
        #expect(first.map(\.executor) == [a, b])
        // b cannot import zz: its job comes back, once refused, not as an attempt.
        #expect(s.refused(first[1].jobs[0], error: noModule("b"), by: b).isEmpty)
        _ = s.enqueue([ends.job(3, f), ends.job(4, g)])
        // b has room, a too: f's jobs go to a only; g to the one with more room, b.
        let next = s.dispatch([(a, 5), (b, 10)])
        #expect(next.failures.isEmpty)
        #expect(next.batches.map(\.executor) == [a, b])
        #expect(next.batches[0].jobs.map(\.id) == [2, 3])
        #expect(next.batches[0].jobs[0].refusals == 1 && next.batches[0].jobs[0].attempts == 0 && next.batches[0].jobs[0].handBacks == 0)
        #expect(next.batches[1].jobs.map(\.id) == [4])
        // While a is busy, f's jobs wait; b gets none of them.
        _ = s.enqueue([ends.job(5, f)])
        let busy = s.dispatch([(a, 0), (b, 10)])
        #expect(busy.batches.isEmpty && busy.failures.isEmpty && s.queued == 1)
        #expect(ends.results.withLock { $0.isEmpty })
    }

    @Test func whenNoExecutorPresentCanRunItTheJobFailsNamingEach() {
        let ends = Ends()
        var s = self.machine()
        _ = s.enqueue([ends.job(1, f), ends.job(2, f)])
        let sent = s.dispatch([(a, 1), (b, 1)]).batches
        #expect(s.refused(sent[0].jobs[0], error: noModule("127.0.0.1:7341"), by: a).isEmpty)
        #expect(s.refused(sent[1].jobs[0], error: noModule("127.0.0.1:7342"), by: b).isEmpty)
        // While a node is still connecting for the first time, the jobs wait for it.
        s.joining = ["127.0.0.1:7343"]
        let wait = s.dispatch([(a, 4), (b, 4)])
        #expect(wait.batches.isEmpty && wait.failures.isEmpty && s.queued == 2)
        s.joining = []
        let out = s.dispatch([(a, 4), (b, 4)])
        #expect(out.batches.isEmpty && s.queued == 0)
        #expect(out.failures.map(\.job.id).sorted() == [1, 2])
        for failure in out.failures {
            #expect(failure.error.code == .functionUnavailable)
            #expect(
                failure.error.message
                    == "no executor can run the function: a (127.0.0.1:7341): ModuleNotFoundError: No module named 'zz'; b (127.0.0.1:7342): ModuleNotFoundError: No module named 'zz'"
            )
            #expect(failure.error.traceback == "Traceback...\n")
        }
    }

    @Test func withOneExecutorTheJobFailsWithItsOwnError() {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        s.added(self.a, name: "local", python: nil)
        _ = s.enqueue([ends.job(1, f)])
        let sent = s.dispatch([(a, 1)]).batches
        _ = s.refused(sent[0].jobs[0], error: noModule("local"), by: a)
        let out = s.dispatch([(a, 1)])
        #expect(out.failures.count == 1 && out.failures[0].error == noModule("local"))
    }

    @Test func anExecutorThatRejoinsStartsWithACleanSlate() {
        let ends = Ends()
        var s = self.machine()
        _ = s.enqueue([ends.job(1, f)])
        let sent = s.dispatch([(b, 1)]).batches
        _ = s.refused(sent[0].jobs[0], error: noModule("b"), by: b)
        // a (busy) can still run it: it waits.
        #expect(s.dispatch([(a, 0), (b, 1)]).batches.isEmpty && s.queued == 1)
        // b reconnects (a new connection, a new id): it may try the job again.
        s.removed(b)
        s.added(3, name: "b (127.0.0.1:7342)", python: "3.8.10")
        #expect(s.dispatch([(a, 0), (3, 1)]).batches.map(\.executor) == [3])
    }

    @Test func refusalsAreBounded() {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        _ = s.enqueue([ends.job(1, f)])
        var failures: [SchedulerStateMachine.Failure] = []
        var rounds = 0
        // A node that reconnects after each refusal, each time with a new id.
        while failures.isEmpty {
            s.added(rounds, name: "n", python: nil)
            let sent = s.dispatch([(rounds, 1)]).batches.flatMap(\.jobs)
            failures = s.refused(sent[0], error: noModule("n"), by: rounds)
            s.removed(rounds)
            rounds += 1
        }
        #expect(rounds == SchedulerStateMachine.maxRefusals + 1)
        #expect(failures[0].error == noModule("n"))
    }

    @Test func aVersionRangeSendsJobsOnlyWherePythonIsInIt() throws {
        let ends = Ends()
        var s = self.machine()
        s.added(3, name: "local", python: nil)  // not known yet: it may try (its worker checks)
        let new = FunctionBundle(name: "h", source: "def h(x):\n    return x\n", requirements: try Requirements(python: ">=3.9,<3.13"))
        _ = s.enqueue((1...4).map { ends.job($0, new) })
        let out = s.dispatch([(a, 2), (b, 10), (3, 1)])
        #expect(out.failures.isEmpty)
        #expect(out.batches.map(\.executor) == [a, 3])
        #expect(out.batches.flatMap(\.jobs).map(\.id) == [1, 2, 3])
        // Once local's version is known to be outside, only a remains; with a gone, none.
        s.learned(python: "3.13.0", of: 3)
        s.removed(a)
        let none = s.dispatch([(b, 10), (3, 1)])
        #expect(none.batches.isEmpty)
        #expect(none.failures.map(\.job.id) == [4])
        #expect(
            none.failures[0].error.message
                == "no executor can run the function: local: needs Python >=3.9,<3.13; it runs Python 3.13.0; b (127.0.0.1:7342): needs Python >=3.9,<3.13; it runs Python 3.8.10"
        )
    }

    @Test func anImplementationSendsJobsOnlyToNodesThatAnnounceIt() throws {
        let ends = Ends()
        var s = SchedulerStateMachine(noExecutorTimeout: .seconds(30))
        s.added(a, name: "a (127.0.0.1:7341)", python: "3.11.7", implementation: "cpython")
        s.added(b, name: "b (127.0.0.1:7342)", python: "3.10.14", implementation: "pypy")
        s.added(3, name: "local", python: nil)  // not known yet: it may try (its worker checks)
        let pypy = FunctionBundle(name: "h", source: "def h(x):\n    return x\n", requirements: try Requirements(implementation: "PyPy"))
        _ = s.enqueue((1...3).map { ends.job($0, pypy) })
        let out = s.dispatch([(a, 10), (b, 1), (3, 1)])
        #expect(out.failures.isEmpty && out.batches.map(\.executor) == [b, 3])
        // Once local is known to run CPython and b is gone, the last job has nowhere to go.
        s.learned(python: "3.11.7", implementation: "cpython", of: 3)
        s.removed(b)
        let none = s.dispatch([(a, 10), (3, 1)])
        #expect(none.batches.isEmpty && none.failures.map(\.job.id) == [3])
        #expect(
            none.failures[0].error.message
                == "no executor can run the function: local: needs Python implementation pypy; it runs cpython; a (127.0.0.1:7341): needs Python implementation pypy; it runs cpython"
        )
    }

    @Test func requirementsParseAndMatch() throws {
        let r = try Requirements(python: ">=3.9, <3.13", implementation: "CPython", modules: ["numpy", "os.path"])
        #expect(r.implementation == "cpython")
        #expect(r.mismatch(pythonVersion: "3.9.0") == nil && r.mismatch(pythonVersion: "3.12.7") == nil)
        #expect(r.mismatch(pythonVersion: "3.13.0rc1") == "needs Python >=3.9, <3.13; it runs Python 3.13.0rc1")
        #expect(r.mismatch(pythonVersion: "3.8.18") != nil)
        #expect(r.mismatch(pythonVersion: "unknown") == nil)
        #expect(r.mismatch(pythonVersion: "3.11.2", implementation: "PyPy") == "needs Python implementation cpython; it runs PyPy")
        #expect(r.mismatch(pythonVersion: "3.11.2", implementation: "CPython") == nil && r.mismatch(pythonVersion: nil, implementation: nil) == nil)
        let prefix = try Requirements(python: "==3.11.*")
        #expect(prefix.mismatch(pythonVersion: "3.11.9") == nil && prefix.mismatch(pythonVersion: "3.12.0") != nil)
        #expect(try Requirements(python: "!=3.11.*").mismatch(pythonVersion: "3.11.2") != nil)
        #expect(try Requirements(python: "==3.11").mismatch(pythonVersion: "3.11.2") != nil)  // 3.11 is 3.11.0
        for bad in ["3.9", ">=3.x", ">=", ">=3.9,", "~=3.9", "==3.*.1"] {
            #expect(throws: RequirementsError.self, "\(bad)") { try Requirements(python: bad) }
        }
        #expect(throws: RequirementsError.self) { try Requirements(modules: ["not a module"]) }
        #expect(throws: RequirementsError.self) { try Requirements(implementation: "c.python") }
    }

    @Test func requirementsTravelInTheSpecAndNameTheBundle() throws {
        let r = try Requirements(python: ">=3.9", modules: ["zz"])
        let with = FunctionBundle(name: "g", source: "def g(x):\n    return x\n", requirements: r)
        #expect(with.digest != g.digest)
        #expect(String(decoding: with.spec, as: UTF8.self).contains(#""requires":{"modules":["zz"],"python":">=3.9"}"#))
        #expect(try Requirements.read(bundleSpec: with.spec) == r)
        #expect(try Requirements.read(bundleSpec: g.spec) == nil)
        #expect(throws: RequirementsError.self) { try Requirements.read(bundleSpec: Array(#"{"requires":{"python":"3"}}"#.utf8)) }
        #expect(throws: RequirementsError.self) { try Requirements.read(bundleSpec: Array(#"{"requires":7}"#.utf8)) }
    }
}
