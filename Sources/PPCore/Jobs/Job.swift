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
    /// The longest the call may run before its worker is killed, or `nil`.
    public var timeout: Duration?
    /// Call or check.
    public var kind: Kind
    /// Times an executor running the job was lost (the client's scheduler counts).
    public var attempts = 0
    /// Times an executor handed the job back unrun (the client's scheduler counts).
    public var handBacks = 0
    /// Times an executor answered that it cannot load the job's function (the client's
    /// scheduler counts: it then places the job elsewhere).
    public var refusals = 0
    /// The rest, behind one reference: a job is copied at every hop of its path
    /// (queues, pipes, actions), and one retain is cheaper than one per field.
    private var payload: Payload

    /// Called once, on the holder's event loop, when the job ends.
    public var completion: @Sendable (JobResult) -> Void {
        get { self.payload.completion }
        set { self.unique().completion = newValue }
    }

    /// The function to call.
    public var bundle: FunctionBundle {
        get { self.payload.bundle }
        set { self.unique().bundle = newValue }
    }
    /// Its positional arguments.
    public var arguments: JobArguments {
        get { self.payload.arguments }
        set { self.unique().arguments = newValue }
    }
    /// Whom the job runs for, for a node's fair share between its clients: a client
    /// session (`"name #12"`). Empty for a pool's only client.
    public var owner: String {
        get { self.payload.owner }
        set { self.unique().owner = newValue }
    }
    /// The owner's weight in the fair share: with 2 it gets twice the worker time of
    /// an owner with 1 when both have jobs queued.
    public var ownerWeight: Double {
        get { self.payload.ownerWeight }
        set { self.unique().ownerWeight = newValue }
    }

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
        self.timeout = timeout
        self.kind = kind
        self.payload = Payload(bundle: bundle, arguments: arguments, completion: completion)
    }

    /// The payload, copied first when another job shares it (copy on write).
    private mutating func unique() -> Payload {
        if !isKnownUniquelyReferenced(&self.payload) { self.payload = self.payload.copy() }
        return self.payload
    }

    /// `@unchecked Sendable` is safe because a payload is changed only through
    /// `unique()`, when no other job holds it.
    private final class Payload: @unchecked Sendable {
        var bundle: FunctionBundle
        var arguments: JobArguments
        var completion: @Sendable (JobResult) -> Void
        var owner = ""
        var ownerWeight = 1.0

        init(bundle: FunctionBundle, arguments: JobArguments, completion: @escaping @Sendable (JobResult) -> Void) {
            self.bundle = bundle
            self.arguments = arguments
            self.completion = completion
        }

        func copy() -> Payload {
            let c = Payload(bundle: self.bundle, arguments: self.arguments, completion: self.completion)
            c.owner = self.owner
            c.ownerWeight = self.ownerWeight
            return c
        }
    }

    /// Ends the job with `error`, run by `executor`.
    public func fail(_ error: JobError, executor: String) {
        self.completion(JobResult(id: self.id, error: error, executor: executor))
    }
}
