import PPCore

/// Function bundles a node has received, shared by all its sessions and bounded in
/// bytes (least recently used first out), with the counters STATS reports.
struct BundleCache {
    private var cache: BoundedCache<SHA256Digest, FunctionBundle>
    /// Bundles received over the network since start (the proof a function travels once).
    private(set) var received = 0
    /// Bytes of bundles received since start.
    private(set) var receivedBytes = 0

    init(capacityBytes: Int) {
        self.cache = BoundedCache(capacity: capacityBytes)
    }

    /// Bundles cached.
    var count: Int { self.cache.count }
    /// Bytes cached.
    var bytes: Int { self.cache.totalCost }
    /// Bundles dropped to stay under the limit.
    var evicted: Int { self.cache.evictions }

    mutating func get(_ digest: SHA256Digest) -> FunctionBundle? {
        self.cache.get(digest)
    }

    mutating func insert(_ bundle: FunctionBundle) {
        self.received += 1
        self.receivedBytes += bundle.spec.count
        self.cache.insert(bundle.digest, bundle, cost: bundle.spec.count)
    }
}
