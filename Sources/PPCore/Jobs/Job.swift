/// One call of a Python function: the single record a job is, from `JobServer.submit`
/// through the client's scheduler to a local worker pool, or to the wire (SUBMIT
/// carries its id, bundle digest, timeout and arguments) and, on the node, to the
/// node's pool.
public struct Job: Sendable {
    /// What the job asks of the worker.
    public enum Kind: Sendable {
        /// Call the function with the arguments.
        case call
        /// Only load the bundle and report whether it loaded.
        case check
    }

    /// The id in the holder's id space: the client's job id, or on a node the id its
    /// pool's `IDAllocator` gave.
    public var id: UInt64
    /// The function to call.
    public var bundle: FunctionBundle
    /// Its positional arguments.
    public var arguments: JobArguments
    /// The longest the call may run before its worker is killed, or `nil`.
    public var timeout: Duration?
    /// Call or check.
    public var kind: Kind
    /// Times an executor running the job was lost (the client's scheduler counts).
    public var attempts = 0
    /// Times an executor handed the job back unrun (the client's scheduler counts).
    public var handBacks = 0
    /// Whom the job runs for, for a node's fair share between its clients: a client
    /// session (`"name #12"`). Empty for a pool's only client.
    public var owner = ""
    /// The owner's weight in the fair share: with 2 it gets twice the worker time of
    /// an owner with 1 when both have jobs queued.
    public var ownerWeight = 1.0
    /// Called once, on the holder's event loop, when the job ends.
    public var completion: @Sendable (JobResult) -> Void

    /// Creates a job.
    public init(
        id: UInt64,
        bundle: FunctionBundle,
        arguments: JobArguments = .none,
        timeout: Duration? = nil,
        kind: Kind = .call,
        completion: @escaping @Sendable (JobResult) -> Void
    ) {
        self.id = id
        self.bundle = bundle
        self.arguments = arguments
        self.timeout = timeout
        self.kind = kind
        self.completion = completion
    }

    /// Ends the job with `error`, run by `executor`.
    public func fail(_ error: JobError, executor: String) {
        self.completion(JobResult(id: self.id, error: error, executor: executor))
    }
}
