/// The metadata keys of every log line the project writes, in one place, so that the
/// same thing has the same key in every module (a log query for `node=` finds the node
/// whether the client or the node wrote the line).
public enum LogKey {
    // Who
    /// The remote end of a connection, `address:port` (either side).
    public static let peer = "peer"
    /// A node, as `host:port` (on the client).
    public static let node = "node"
    /// A node's name as it announces it.
    public static let nodeName = "node.name"
    /// A node's id.
    public static let nodeID = "node.id"
    /// A client's name as its HELLO gives it.
    public static let client = "client"
    /// Whom a session's jobs run for in the node's fair share (`"name #3"`).
    public static let owner = "owner"
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
    /// Jobs a lost node held, run elsewhere.
    public static let jobsRescheduled = "jobs.rescheduled"
    /// Jobs a client left behind that waited for their bundle.
    public static let awaitingBundle = "awaiting.bundle"
    /// A number of worker processes.
    public static let workers = "workers"
    /// A cap that was reached.
    public static let cap = "cap"

    // Discovery
    /// Where broadcast beacons or probes go.
    public static let broadcast = "broadcast"
    /// The UDP port of beacons and probes.
    public static let discoveryPort = "discovery.port"
    /// A DNS-SD service name.
    public static let service = "service"
    /// How often beacons go out.
    public static let interval = "interval"
    /// A node's key id, as it announces it.
    public static let nodeKeyID = "node.keyid"
    /// Our key id.
    public static let ourKeyID = "our.keyid"
    /// A node's protocol version, as it announces it.
    public static let nodeProtocol = "node.protocol"
    /// Our protocol version.
    public static let ourProtocol = "our.protocol"

    // ppnode
    /// The native protocol version spoken.
    public static let protocolVersion = "protocol"
    /// Where the secret came from.
    public static let secretFile = "secret.file"
    /// The secret's key id.
    public static let secretKeyID = "secret.keyid"
    /// How long a drain may take.
    public static let drainTimeout = "drain.timeout"
    /// A TCP port.
    public static let port = "port"

    // pp compatibility
    /// The pp-compatible listener's address.
    public static let ppAddress = "pp.address"
    /// The ppft version announced.
    public static let ppVersion = "pp.version"
    /// A pp client's address.
    public static let ppPeer = "pp.peer"
    /// A pp connection's type.
    public static let connectionType = "type"
}
