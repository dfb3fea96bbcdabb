public import DequeModule

/// A least-recently-used cache bounded by the total cost of its entries (bytes, say):
/// the one cache type behind the node's bundle cache and each worker's loaded bundles.
/// Lookups, inserts and evictions are amortised O(1).
public struct BoundedCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    @usableFromInline
    struct Entry: Sendable {
        @usableFromInline var value: Value
        @usableFromInline var cost: Int
        @usableFromInline var stamp: UInt64
    }

    /// The largest total cost kept.
    public let capacity: Int
    /// The total cost of the entries.
    public private(set) var totalCost = 0
    /// Entries dropped to stay under `capacity`, since creation.
    public private(set) var evictions = 0
    @usableFromInline var entries: [Key: Entry] = [:]
    /// Keys in order of use, oldest first; an element whose stamp is not its entry's
    /// current stamp is stale and skipped.
    @usableFromInline var order = Deque<(key: Key, stamp: UInt64)>()
    @usableFromInline var clock: UInt64 = 0

    /// Creates an empty cache.
    public init(capacity: Int) {
        self.capacity = capacity
    }

    /// The number of entries.
    public var count: Int { self.entries.count }

    /// Whether `key` is cached (without counting as a use).
    public func contains(_ key: Key) -> Bool { self.entries[key] != nil }

    /// The value for `key`, marking it as just used.
    @inlinable
    public mutating func get(_ key: Key) -> Value? {
        guard let entry = self.entries[key] else { return nil }
        // The most recent entry stays so without a new stamp (a run of jobs of one
        // bundle looks it up once per job).
        if entry.stamp != self.clock { self.touch(key) }
        return entry.value
    }

    /// Adds `value` (or marks it used if `key` is present) and evicts least recently
    /// used entries until the total cost fits, skipping those `keep` returns true for.
    ///
    /// - Returns: the evicted entries, oldest first.
    @discardableResult
    public mutating func insert(_ key: Key, _ value: Value, cost: Int, keep: (Key) -> Bool = { _ in false }) -> [(key: Key, value: Value)] {
        if self.entries[key] != nil {
            self.touch(key)
            return []
        }
        var evicted: [(key: Key, value: Value)] = []
        var kept: [(key: Key, stamp: UInt64)] = []
        while self.totalCost + cost > self.capacity, let oldest = self.order.popFirst() {
            guard let entry = self.entries[oldest.key], entry.stamp == oldest.stamp else { continue }
            if keep(oldest.key) {
                kept.append(oldest)
                continue
            }
            self.entries.removeValue(forKey: oldest.key)
            self.totalCost -= entry.cost
            self.evictions += 1
            evicted.append((oldest.key, entry.value))
        }
        for k in kept.reversed() { self.order.prepend(k) }
        self.clock &+= 1
        self.entries[key] = Entry(value: value, cost: cost, stamp: self.clock)
        self.order.append((key, self.clock))
        self.totalCost += cost
        return evicted
    }

    /// Removes `key`.
    public mutating func remove(_ key: Key) {
        guard let entry = self.entries.removeValue(forKey: key) else { return }
        self.totalCost -= entry.cost
    }

    @usableFromInline
    mutating func touch(_ key: Key) {
        self.clock &+= 1
        self.entries[key]!.stamp = self.clock
        self.order.append((key, self.clock))
        // Stale elements pile up with every use: compact once they outnumber live ones.
        if self.order.count > 2 * self.entries.count + 64 {
            self.order = Deque(self.order.filter { self.entries[$0.key]?.stamp == $0.stamp })
        }
    }
}
