public import PPCore
import Foundation
import Synchronization

/// One submitted job. Await its `value` (or `result`), or give `submit` a callback.
///
/// A job ends exactly once: with the function's return value decoded as `T`, or with a
/// `JobError` that says what happened.
public final class JobHandle<T: Decodable & Sendable>: Sendable {
    /// The job's id, unique within its `JobServer`.
    public let id: UInt64
    private let server: JobServer
    /// The outcome once the job has ended; until then, who waits for it.
    private let state = Mutex<(outcome: JobOutcome?, waiters: [CheckedContinuation<JobOutcome, Never>])>((nil, []))

    init(id: UInt64, server: JobServer) {
        self.id = id
        self.server = server
    }

    /// The function's return value.
    ///
    /// - Throws: `JobError` when the job failed, timed out, lost its worker or was cancelled.
    public var value: T {
        get async throws(JobError) {
            try await self.result.get()
        }
    }

    /// The return value or the error, once the job has ended.
    public var result: Result<T, JobError> {
        get async { decodeResult(T.self, await self.outcome) }
    }

    /// Everything about how the job ended: raw result, captured output, run time, executor.
    public var outcome: JobOutcome {
        get async {
            await withCheckedContinuation { (c: CheckedContinuation<JobOutcome, Never>) in
                let done = self.state.withLock { state in
                    if state.outcome == nil { state.waiters.append(c) }
                    return state.outcome
                }
                if let done { c.resume(returning: done) }
            }
        }
    }

    /// Whether the job has ended.
    public var isFinished: Bool {
        self.state.withLock { $0.outcome != nil }
    }

    /// Cancels the job if it has not started.
    ///
    /// - Returns: `true` when it was still queued; it then ends with `JobError.Code.cancelled`.
    @discardableResult
    public func cancel() async -> Bool {
        await self.server.cancel(jobID: self.id)
    }

    /// Stops the job wherever it is: queued, it is removed; running, on a local worker
    /// or on a node, its worker is killed and replaced. It ends once, with
    /// `JobError.Code.cancelled`, and its slot is free at once.
    ///
    /// - Returns: `true` when it was still queued here.
    @discardableResult
    public func stop() async -> Bool {
        await self.server.stop(jobID: self.id)
    }

    /// Records the outcome and wakes every waiter. Called once.
    func complete(_ outcome: JobOutcome) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<JobOutcome, Never>] in
            guard state.outcome == nil else { return [] }
            state.outcome = outcome
            defer { state.waiters = [] }
            return state.waiters
        }
        for w in waiters { w.resume(returning: outcome) }
    }
}

/// Decodes a job's JSON result as `T`: `RawJSON` keeps the bytes as they are.
/// Inlinable, so the check for `RawJSON` folds away where `T` is known.
@inlinable
func decodeResult<T: Decodable>(_ type: T.Type, _ outcome: JobOutcome) -> Result<T, JobError> {
    if T.self == RawJSON.self, case .success(let bytes) = outcome.result { return .success(RawJSON(bytes: bytes) as! T) }
    return decodeJSON(type, outcome)
}

/// Decodes a job's JSON result as `T` with `JSONDecoder`.
@usableFromInline
func decodeJSON<T: Decodable>(_ type: T.Type, _ outcome: JobOutcome) -> Result<T, JobError> {
    outcome.result.flatMap { bytes in
        do {
            return .success(try JSONDecoder().decode(T.self, from: Data(bytes)))
        } catch {
            let text = String(decoding: bytes.prefix(200), as: UTF8.self)
            return .failure(
                JobError(
                    code: .resultNotJSON,
                    message: "the result \(text) does not decode as \(T.self): \(error); ask for JSONValue to accept any shape",
                    stdout: outcome.stdout,
                    stderr: outcome.stderr,
                    executor: outcome.executor
                )
            )
        }
    }
}
