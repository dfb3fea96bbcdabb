import Synchronization

/// A thread-safe increasing counter for ids.
public final class ManagedAtomicCounter: Sendable {
    private let value: Atomic<UInt64>

    /// Creates a counter whose first `next()` returns `start`.
    public init(start: UInt64 = 1) {
        self.value = Atomic(start)
    }

    /// Returns the next id.
    public func next() -> UInt64 {
        self.value.wrappingAdd(1, ordering: .relaxed).oldValue
    }
}
