import Synchronization

/// Hands out the ids of one id space (the jobs of one worker pool, say), from any
/// thread. Every user of that space takes its ids from the same allocator, so two ids
/// never collide by convention alone.
public final class IDAllocator: Sendable {
    private let value: Atomic<UInt64>

    /// Creates an allocator whose first `next()` returns `start`.
    public init(start: UInt64 = 1) {
        self.value = Atomic(start)
    }

    /// Reserves `count` consecutive ids (by default one, the next id) and returns the first.
    public func next(_ count: Int = 1) -> UInt64 {
        self.value.wrappingAdd(UInt64(count), ordering: .relaxed).oldValue
    }
}
