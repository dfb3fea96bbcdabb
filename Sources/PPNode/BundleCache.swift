import PPCore

/// Function bundles a node has received, shared by all its sessions and bounded in
/// bytes: the least recently used bundle goes first. Confined to the node's loop.
final class BundleCache {
    private struct Entry {
        var bundle: FunctionBundle
        var lastUse: UInt64
    }

    let capacityBytes: Int
    private var entries: [SHA256Digest: Entry] = [:]
    private var tick: UInt64 = 0
    private(set) var bytes = 0
    /// Bundles received over the network since start (the proof a function travels once).
    private(set) var received = 0
    /// Bytes of bundles received since start.
    private(set) var receivedBytes = 0
    /// Bundles dropped to stay under the limit.
    private(set) var evicted = 0

    init(capacityBytes: Int) {
        self.capacityBytes = capacityBytes
    }

    var count: Int { self.entries.count }

    func get(_ digest: SHA256Digest) -> FunctionBundle? {
        guard var e = self.entries[digest] else { return nil }
        self.tick &+= 1
        e.lastUse = self.tick
        self.entries[digest] = e
        return e.bundle
    }

    func insert(_ bundle: FunctionBundle) {
        self.received += 1
        self.receivedBytes += bundle.spec.count
        guard self.entries[bundle.digest] == nil else { return }
        while self.bytes + bundle.spec.count > self.capacityBytes, let oldest = self.entries.min(by: { $0.value.lastUse < $1.value.lastUse }) {
            self.entries.removeValue(forKey: oldest.key)
            self.bytes -= oldest.value.bundle.spec.count
            self.evicted += 1
        }
        self.tick &+= 1
        self.entries[bundle.digest] = Entry(bundle: bundle, lastUse: self.tick)
        self.bytes += bundle.spec.count
    }
}
