public import NIOCore

/// The liveness of one connection, as a value: when to ping the peer and when its
/// silence means it is gone. Both ends of a native-protocol session drive one with a
/// repeating timer (`tick`) and every frame they read (`heard`).
public struct Heartbeat: Sendable {
    /// What the driver does after a tick.
    public enum Action: Sendable, Equatable {
        /// Nothing.
        case none
        /// Send a PING.
        case ping
        /// Close the connection: nothing was heard for `timeout`.
        case timedOut
    }

    /// The longest silence tolerated.
    public let timeout: TimeAmount
    /// How often to ping.
    public let interval: TimeAmount
    private var lastHeard: NIODeadline
    private var lastPing: NIODeadline

    /// Creates a heartbeat that starts counting silence at `now`.
    public init(timeout: TimeAmount, interval: TimeAmount = .seconds(1), now: NIODeadline) {
        self.timeout = timeout
        self.interval = interval
        self.lastHeard = now
        self.lastPing = now
    }

    /// A frame arrived.
    public mutating func heard(at now: NIODeadline) {
        self.lastHeard = now
    }

    /// The timer fired: ping when an interval has passed, give up after `timeout` of
    /// silence.
    public mutating func tick(at now: NIODeadline) -> Action {
        if now - self.lastHeard > self.timeout { return .timedOut }
        guard now - self.lastPing >= self.interval else { return .none }
        self.lastPing = now
        return .ping
    }
}
