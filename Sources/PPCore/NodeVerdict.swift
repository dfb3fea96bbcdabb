internal import Foundation  // Date, DateFormatter: the clock time in a sentence

/// What a client (or ppnodes) knows about one node, found by its beacon or TXT record,
/// or expected because it was named by address: the facts `NodeVerdict` judges.
///
/// Times are seconds since 1970, given by the caller (no clock is read here).
public struct NodeSighting: Sendable, Hashable {
    /// The outcome of the last connection attempt.
    public enum Contact: Sendable, Hashable {
        /// Connected, and the handshake passed.
        case connected
        /// The TCP connection failed: refused, timed out, no route (the text says which).
        case unreachable(String)
        /// The TLS handshake failed: the node does not accept our key.
        case keyRejected(String)
        /// The node closed or broke the connection (an ERROR, a bad frame, lost heartbeats).
        case lost(String)
    }

    /// `host:port` of its native protocol.
    public var address: String
    /// What it announced last (`nil` for a node named by address and never heard).
    public var beacon: NodeBeacon?
    /// How it was found: `broadcast`, `DNS-SD`, `given` (named by address).
    public var via: Set<String>
    /// The local interface that reaches its address (`eth1`), when one does.
    public var interface: String?
    /// When its last beacon (or TXT record) arrived.
    public var lastHeard: Double?
    /// When its goodbye beacon arrived (cleared by a later beacon of a new instance).
    public var leftAt: Double?
    /// The id announced before at this address, when a new instance (id) took over.
    public var previousID: String?
    /// Another address that announces the same id (a cloned machine, or a forgery).
    public var sameIDAt: String?
    /// The outcome of the last connection attempt; `nil` when none was made.
    public var contact: Contact?

    /// Creates the facts of a node at `address`.
    public init(address: String, beacon: NodeBeacon? = nil, via: Set<String> = [], interface: String? = nil, lastHeard: Double? = nil) {
        self.address = address
        self.beacon = beacon
        self.via = via
        self.interface = interface
        self.lastHeard = lastHeard
    }

    /// Records a beacon (or TXT record) heard at `now`: a goodbye sets `leftAt`; a new
    /// id at this address is a new instance (restart), which clears an earlier goodbye.
    ///
    /// - Returns: whether the beacon came from a new instance.
    @discardableResult
    public mutating func heard(_ beacon: NodeBeacon, via: String, at now: Double) -> Bool {
        let restarted = !(self.beacon?.id ?? "").isEmpty && !beacon.id.isEmpty && self.beacon?.id != beacon.id
        if restarted {
            self.previousID = self.beacon?.id
            self.leftAt = nil
            self.contact = nil
        }
        if beacon.leaving == true {
            self.leftAt = self.leftAt ?? now
        } else if self.leftAt == nil || restarted {
            self.beacon = beacon
        }
        self.beacon = self.beacon ?? beacon
        self.via.insert(via)
        self.lastHeard = now
        return restarted
    }
}

/// Whether a node is used and, when it is not, why, in one sentence that names the fix.
public struct NodeVerdict: Sendable, Hashable {
    /// The kinds of verdict, as `status` in JSON.
    public enum Status: String, Sendable, Hashable, CaseIterable {
        /// Compatible and reachable (or not tried yet): used.
        case usable
        /// Usable; a new instance (id) replaced the one heard before at its address.
        case restarted
        /// Usable; another address announces the same id.
        case sharedID = "shared_id"
        /// It sent a goodbye beacon (drained).
        case left
        /// Its key id is not ours.
        case otherCluster = "other_cluster"
        /// It speaks a protocol version we do not.
        case incompatibleProtocol = "protocol"
        /// It has no workers.
        case noWorkers = "no_workers"
        /// The TCP connection failed.
        case unreachable
        /// The TLS handshake failed: another key.
        case tls
        /// Connected, then closed or refused by the node.
        case lost
        /// Its beacons stopped and it is not connected.
        case silent
    }

    /// The node judged.
    public var sighting: NodeSighting
    /// The kind of verdict.
    public var status: Status
    /// What it means and what to do, for people.
    public var reason: String

    /// Whether the node is (or will be) used.
    public var usable: Bool { [.usable, .restarted, .sharedID].contains(self.status) }

    /// Judges a node.
    ///
    /// - Parameters:
    ///   - sighting: what is known about it.
    ///   - ourKeyID: the key id of our secret; `nil` when we have none.
    ///   - protocols: the native protocol versions we speak.
    ///   - now: the time now, seconds since 1970.
    ///   - silentAfter: seconds without a beacon after which an unconnected node is silent.
    public init(_ sighting: NodeSighting, ourKeyID: String?, protocols: ClosedRange<Int> = NodeVerdict.protocols, now: Double, silentAfter: Double = 6) {
        self.sighting = sighting
        let (status, reason) = Self.judge(sighting, ourKeyID: ourKeyID, protocols: protocols, now: now, silentAfter: silentAfter)
        self.status = status
        self.reason = reason
    }

    /// The native protocol versions this build speaks.
    public static let protocols = Int(NodeProtocol.minimumVersion)...Int(NodeProtocol.version)

    /// Judges every node known, noting ids announced from more than one address
    /// (`sameIDAt`); sorted by address.
    ///
    /// - Parameters: as `init(_:ourKeyID:protocols:now:silentAfter:)`, for each of `sightings`.
    public static func judge(_ sightings: [NodeSighting], ourKeyID: String?, protocols: ClosedRange<Int> = Self.protocols, now: Double) -> [NodeVerdict] {
        var addresses: [String: [String]] = [:]
        for s in sightings where s.leftAt == nil {
            if let id = s.beacon?.id, !id.isEmpty { addresses[id, default: []].append(s.address) }
        }
        return sightings.sorted { $0.address < $1.address }.map { s in
            var s = s
            s.sameIDAt = s.beacon.flatMap { addresses[$0.id]?.filter { $0 != s.address }.min() }
            return NodeVerdict(s, ourKeyID: ourKeyID, protocols: protocols, now: now)
        }
    }

    private static func judge(_ s: NodeSighting, ourKeyID: String?, protocols: ClosedRange<Int>, now: Double, silentAfter: Double) -> (Status, String) {
        let from = s.interface.map { " from \($0)" } ?? ""
        if let left = s.leftAt {
            return (.left, "left (goodbye at \(Self.clock(left))): it was shut down; it is used again when it restarts")
        }
        if let b = s.beacon {
            let theirs = PeerText.cut(b.keyid, limit: 32)
            guard let ours = ourKeyID else {
                return (.otherCluster, "cannot tell its cluster (key id \(theirs)): we have no secret; give --secret-file or set PP_SECRET")
            }
            if b.keyid != ours {
                return (.otherCluster, "other cluster (key id \(theirs), ours \(ours)): give it our secret file, or use its secret")
            }
            if !protocols.contains(b.protocol) {
                let fix = b.protocol < protocols.lowerBound ? "upgrade it" : "upgrade this client"
                return (.incompatibleProtocol, "protocol \(b.protocol), we speak \(protocols.lowerBound)..\(protocols.upperBound): \(fix)")
            }
            if b.workers <= 0 {
                return (.noWorkers, "0 workers: it runs no jobs (started with --workers 0); restart it with --workers 1 or more")
            }
        }
        switch s.contact {
        case .unreachable(let why):
            return (.unreachable, "unreachable at \(s.address)\(from): \(why); check that it runs, its --host and --port, and firewalls")
        case .keyRejected(let why):
            return (.tls, "TLS failed (\(why)): the node does not accept our key; give it our secret file")
        case .lost(let why):
            return (.lost, "connection lost: \(why)")
        case .connected, nil:
            break
        }
        if s.contact != .connected, s.via.contains("broadcast"), let heard = s.lastHeard, now - heard > silentAfter {
            return (.silent, "silent for \(Int(now - heard)) s (last beacon at \(Self.clock(heard))): it stopped or its beacons no longer reach us\(from)")
        }
        if let old = s.previousID, let id = s.beacon?.id {
            return (.restarted, "restarted (new instance \(PeerText.cut(id, limit: 32)), was \(PeerText.cut(old, limit: 32))): treated as a new node")
        }
        if let other = s.sameIDAt, let id = s.beacon?.id {
            return (.sharedID, "id \(PeerText.cut(id, limit: 32)) is also announced from \(other) (a cloned machine?); each address is used as its own node")
        }
        return (.usable, s.contact == .connected ? "connected" : "compatible; not connected yet")
    }

    /// `HH:MM:SS`, local time.
    static func clock(_ seconds: Double) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "HH:mm:ss"
        return formatter.string(from: Date(timeIntervalSince1970: seconds))
    }
}
