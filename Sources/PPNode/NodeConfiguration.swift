public import Logging
public import PPCore

/// Everything a `ppnode` needs; `ppnode` fills it from flags, environment and its
/// config file.
public struct NodeConfiguration: Sendable {
    /// The address to listen on (`0.0.0.0` for every interface).
    public var host: String = "0.0.0.0"
    /// The native protocol's TCP port.
    public var port: Int = NodeProtocol.defaultPort
    /// Worker processes; `nil` means the usable cores. With 0, `start()` does not wait
    /// for a ready worker (`ppnode` refuses 0: such a node would hold its clients' jobs).
    public var workers: Int?
    /// The Python interpreter for workers.
    public var python: String?
    /// The cluster secret.
    public var secret: ClusterSecret
    /// A human name for the node (default: the host name).
    public var name: String
    /// The largest frame accepted from a client, in `maxFrameRange` (`start()` refuses
    /// others).
    public var maxFrame: Int = NodeProtocol.defaultMaxFrame
    /// The frame limits a node accepts: 64 KiB (room for a handshake and a small
    /// bundle) to 1 GiB (the worker runtime's own frame limit, `MAX_FRAME` in
    /// worker.py; the native protocol's WELCOME carries the limit as 32 bits).
    public static let maxFrameRange: ClosedRange<Int> = (64 << 10)...(1 << 30)
    /// The fix for a frame limit out of `maxFrameRange`.
    public static let maxFrameAdvice = "give 65536 (64 KiB) to 1073741824 (1 GiB) bytes, such as 64MiB"
    /// Bytes of function bundles kept for all clients; the cache of large arguments
    /// holds as many bytes again.
    public var cacheBytes: Int = 256 << 20
    /// A peer that has not finished its TLS handshake and HELLO within this time is
    /// disconnected.
    public var handshakeTimeout: Duration = .seconds(5)
    /// How many connections may be in their handshake at once.
    public var unauthenticatedCaps = UnauthenticatedCaps()
    /// A client silent for this long is considered dead.
    public var heartbeatTimeout: Duration = .seconds(3)
    /// On shutdown, running jobs get this long to finish before their workers are killed.
    public var drainTimeout: Duration = .seconds(10)
    /// The UDP port of beacons and probes.
    public var discoveryPort: Int = NodeBeacon.defaultPort
    /// Time between two beacons.
    public var beaconInterval: Duration = .seconds(2)
    /// Where beacons go (`PP_BROADCAST`); `.off` answers probes only.
    public var broadcast: BroadcastTarget = .address("255.255.255.255")
    /// Register `_ppnode._tcp` with DNS-SD (needs avahi-daemon; without it the node
    /// says so once and relies on beacons).
    public var dnssd = true
    /// The TCP port of the pp-compatible listener (Parallel Python's wire protocol, for
    /// unchanged ppft clients; 0 picks a free one); `nil`, the default, keeps it closed:
    /// ppft's protocol is not encrypted. Its autodiscovery beacons use the same number
    /// as UDP port.
    public var ppPort: Int?
    /// The version string the pp-compatible listener announces (ppft clients require
    /// their own).
    public var ppVersion: String = PPWire.defaultVersion
    /// Accept Parallel Python's published default secret on the pp-compatible listener
    /// (with a warning). Off by default: that secret is no secret.
    public var ppAllowDefaultSecret = false
    /// Weights of clients in the fair share, by their IP address (`"10.0.0.5"`):
    /// while both have jobs queued, a client of weight 2 gets twice the worker time of
    /// one of weight 1, the default. Parallel Python clients are weighed by address too.
    public var clientWeights: [String: Double] = [:]
    /// Where the node logs.
    public var logger: Logger

    /// Creates a configuration with defaults for everything but the secret.
    public init(secret: ClusterSecret, name: String, logger: Logger) {
        self.secret = secret
        self.name = name
        self.logger = logger
    }
}

/// Caps on connections that have not authenticated yet (TLS handshake and HELLO not
/// done): a stranger can hold only this many, each for at most the handshake timeout.
public struct UnauthenticatedCaps: Sendable {
    /// From one source address.
    public var perSource: Int = 16
    /// From everyone.
    public var total: Int = 128

    /// The defaults: 16 per source address, 128 in all.
    public init(perSource: Int = 16, total: Int = 128) {
        self.perSource = perSource
        self.total = total
    }
}
