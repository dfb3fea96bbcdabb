/// The metadata keys of every log line the project writes, in one place, so that the
/// same thing has the same key in every module (a log query for `node=` finds the node
/// whether the client or the node wrote the line).
public enum LogKey {
    // Who
    /// The remote end of a connection, `address:port` (either side).
    public static let peer = "peer"
    /// A node, as `host:port` (on the client) .
    public static let node = "node"
    /// A node's name as it announces it.
    public static let nodeName = "node.name"
    /// A node's id.
    public static let nodeID = "node.id"
    /// A client's name as its HELLO gives it.
    public static let client = "client"
    /// An executor of the client's scheduler (`local`, a node address).
    public static let executor = "executor"
    /// A worker pool's label.
    public static let pool = "pool"
    /// A worker process's pid.
    public static let workerPID = "worker.pid"

    // What
    /// A job's id.
    public static let jobID = "job.id"
    /// A number of jobs.
    public static let jobs = "jobs"
    /// A function bundle's digest.
    public static let bundle = "bundle"
    /// A size in bytes.
    public static let bytes = "bytes"
    /// A limit that was reached.
    public static let limit = "limit"
    /// Why something happened.
    public static let reason = "reason"
    /// An error's text.
    public static let error = "error"
    /// How something was found or sent (`DNS-SD`, `broadcast`).
    public static let via = "via"
    /// A listening or bound address.
    public static let address = "address"
    /// A TLS cipher suite.
    public static let tlsCipher = "tls.cipher"
}
