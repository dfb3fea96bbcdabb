public import NIOCore

/// Keeping one node connected, as a value: connect, and after a failure or a lost
/// connection wait (200 ms doubling to 5 s, or what the failure asks for) and connect
/// again; a node found by discovery is given up after three failures in a row, until
/// it is announced again.
public struct NodeLinkStateMachine: Sendable {
    /// What the driver does next.
    public enum Action: Sendable, Equatable {
        /// Nothing.
        case none
        /// Open a connection now.
        case connect
        /// Connect again after this delay (keep the timer: `nudge` may cut it short).
        case retry(after: TimeAmount)
        /// Stop trying: a discovered node failed three times in a row.
        case giveUp
    }

    private enum State: Sendable, Equatable {
        case idle, connecting, connected, waiting, stopped
    }

    /// The first delay after a failure.
    public static let firstBackoff: TimeAmount = .milliseconds(200)
    /// The longest delay.
    public static let maxBackoff: TimeAmount = .seconds(5)
    /// Failures in a row after which a discovered node is given up.
    public static let discoveredFailureLimit = 3

    /// Found by discovery (not given by address).
    public let discovered: Bool
    private var state = State.idle
    private var backoff = Self.firstBackoff
    private var failures = 0
    /// The last problem reported, so that each is reported once.
    public private(set) var lastProblem: String?

    /// Creates a link.
    public init(discovered: Bool) {
        self.discovered = discovered
    }

    /// Whether the link is stopped or given up.
    public var isStopped: Bool { self.state == .stopped }

    /// Start connecting.
    public mutating func start() -> Action {
        guard self.state == .idle else { return .none }
        self.state = .connecting
        return .connect
    }

    /// The connection is up and authenticated. Returns whether the node was unavailable
    /// before (to say it is reachable again).
    public mutating func connected() -> Bool {
        self.state = .connected
        self.backoff = Self.firstBackoff
        self.failures = 0
        defer { self.lastProblem = nil }
        return self.lastProblem != nil
    }

    /// A problem that is not a failed attempt (no secret): nothing is retried. Returns
    /// the problem to tell a person, nil when it was the last one reported.
    public mutating func problem(_ reason: String) -> String? {
        defer { self.lastProblem = reason }
        return self.lastProblem == reason ? nil : reason
    }

    /// The attempt failed or the connection ended, for `reason`; `retryAfter` replaces
    /// the backoff (a wrong key will not start working in 200 ms). Also returns the
    /// problem to report, as `problem` does.
    public mutating func failed(_ reason: String, retryAfter: TimeAmount? = nil) -> (Action, report: String?) {
        guard self.state != .stopped else { return (.none, nil) }
        let report = self.problem(reason)
        if let retryAfter { self.backoff = retryAfter }
        self.failures += 1
        if self.discovered, self.failures >= Self.discoveredFailureLimit {
            self.state = .stopped
            return (.giveUp, report)
        }
        let delay = self.backoff
        self.backoff = min(self.backoff * 2, Self.maxBackoff)
        self.state = .waiting
        return (.retry(after: delay), report)
    }

    /// The retry timer fired.
    public mutating func retryTimerFired() -> Action {
        guard self.state == .waiting else { return .none }
        self.state = .connecting
        return .connect
    }

    /// The node was announced again: while waiting to retry, connect now (the driver
    /// cancels its timer).
    public mutating func nudge() -> Action {
        self.retryTimerFired()
    }

    /// The client is done with the node.
    public mutating func stop() {
        self.state = .stopped
    }
}
