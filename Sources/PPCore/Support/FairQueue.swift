internal import DequeModule
public import NIOCore
internal import Foundation  // exp2

/// A queue of jobs shared fairly between their owners (the clients of a node), by use.
///
/// Each owner has its own first-in, first-out queue and an account of the worker time
/// its jobs used lately: every charge decays by half each `halfLife`. The next element
/// comes from the owner, among those with something queued, whose decayed use divided
/// by its weight is the least; ties go to the owner served longest ago. So a client
/// that keeps thousands of long jobs queued cannot starve one that sends a few short
/// ones: as soon as a worker is free, the short jobs go first, and while they run the
/// owner of the long ones gets every worker the other one does not use.
///
/// With one owner it is a plain FIFO queue. An owner whose queue is empty and whose use
/// has decayed to almost nothing is forgotten, so the accounts stay as many as the
/// clients that are active.
public struct FairQueue<Element>: Sendable where Element: Sendable {
    /// The worker time an owner used, and its queue.
    private struct Account: Sendable {
        let owner: String
        var queue = Deque<Element>()
        /// Seconds of worker time, decayed to `stamp`.
        var used = 0.0
        var stamp: NIODeadline
        var weight = 1.0
        /// When it was last served, for ties (a serial number, not a time).
        var served: UInt64 = 0
        /// Elements taken out and not yet charged (running somewhere).
        var running = 0
    }

    /// How long it takes for used time to count half.
    public let halfLife: Duration
    /// The owners, in the order they came: a node has a few clients at a time, so a
    /// scan beats hashing their keys on every job.
    private var accounts: [Account] = []
    private var serial: UInt64 = 0
    /// Elements queued, over all owners.
    public private(set) var count = 0

    /// Creates an empty queue.
    public init(halfLife: Duration = .seconds(10)) {
        self.halfLife = halfLife
    }

    /// Whether nothing is queued.
    public var isEmpty: Bool { self.count == 0 }

    /// Queues `element` last in `owner`'s queue. `weight` (default 1) is the owner's
    /// from now on: with 2 it gets twice the worker time of an owner with 1.
    public mutating func append(_ element: Element, owner: String, weight: Double = 1, now: NIODeadline) {
        let i = self.open(owner, now: now)
        self.accounts[i].weight = max(weight, .leastNonzeroMagnitude)
        self.accounts[i].queue.append(element)
        self.count += 1
    }

    /// Puts `element` back first in `owner`'s queue (it was taken out but did not run).
    public mutating func prepend(_ element: Element, owner: String, now: NIODeadline) {
        let i = self.open(owner, now: now)
        self.accounts[i].queue.prepend(element)
        self.accounts[i].running = max(0, self.accounts[i].running - 1)
        self.count += 1
    }

    /// Takes the next element: the first of the owner that used the least time lately
    /// for its weight. The owner counts it as running until `charge`.
    public mutating func popNext(now: NIODeadline) -> Element? {
        self.popBatch(limit: 1, now: now) { _, _ in false }.first
    }

    /// Takes the next element as `popNext` does, then up to `limit - 1` more from the
    /// front of the same owner's queue while `belongs(first, next)` holds: a batch of
    /// one owner's consecutive elements. Each counts as running until `charge`.
    public mutating func popBatch(limit: Int, now: NIODeadline, while belongs: (Element, Element) -> Bool) -> [Element] {
        guard self.count > 0 else { return [] }
        var best = -1
        if self.accounts.count == 1 {
            best = 0
        } else {
            var bestUse = Double.infinity
            var bestServed = UInt64.max
            for (i, account) in self.accounts.enumerated() where !account.queue.isEmpty {
                let use = self.decayed(account, to: now) / account.weight
                if use < bestUse || (use == bestUse && account.served < bestServed) {
                    (best, bestUse, bestServed) = (i, use, account.served)
                }
            }
        }
        self.serial += 1
        self.accounts[best].served = self.serial
        let first = self.accounts[best].queue.removeFirst()
        var batch = [first]
        while batch.count < limit, let next = self.accounts[best].queue.first, belongs(first, next) {
            batch.append(self.accounts[best].queue.removeFirst())
        }
        self.accounts[best].running += batch.count
        self.count -= batch.count
        return batch
    }

    /// Adds the worker time an element of `owner` used, once it ended (or was taken
    /// back from a worker). `seconds` 0 only ends its running count.
    public mutating func charge(_ owner: String, seconds: Double, now: NIODeadline) {
        guard let i = self.accounts.firstIndex(where: { $0.owner == owner }) else { return }
        self.accounts[i].used = self.decayed(self.accounts[i], to: now) + max(0, seconds)
        self.accounts[i].stamp = now
        self.accounts[i].running = max(0, self.accounts[i].running - 1)
        self.forgetIdle(now: now)
    }

    /// Removes and returns the first element that matches.
    public mutating func remove(where matches: (Element) -> Bool) -> Element? {
        for i in self.accounts.indices {
            if let j = self.accounts[i].queue.firstIndex(where: matches) {
                self.count -= 1
                return self.accounts[i].queue.remove(at: j)
            }
        }
        return nil
    }

    /// Removes and returns every element, owner by owner.
    public mutating func removeAll() -> [Element] {
        var all: [Element] = []
        for i in self.accounts.indices {
            all.append(contentsOf: self.accounts[i].queue)
            self.accounts[i].queue.removeAll()
        }
        self.count = 0
        return all
    }

    /// Every owner's use, weight, queue and running count, by least use first.
    public func shares(now: NIODeadline) -> [OwnerShare] {
        self.accounts.map { a in
            OwnerShare(owner: a.owner, used: self.decayed(a, to: now), weight: a.weight, queued: a.queue.count, running: a.running)
        }.sorted { ($0.used / $0.weight, $0.owner) < ($1.used / $1.weight, $1.owner) }
    }

    /// The position of `owner`'s account, opened if it has none.
    private mutating func open(_ owner: String, now: NIODeadline) -> Int {
        if let i = self.accounts.firstIndex(where: { $0.owner == owner }) { return i }
        self.accounts.append(Account(owner: owner, stamp: now))
        return self.accounts.count - 1
    }

    private func decayed(_ account: Account, to now: NIODeadline) -> Double {
        Self.decayed(account, to: now, halfLife: self.halfLife)
    }

    private static func decayed(_ account: Account, to now: NIODeadline, halfLife: Duration) -> Double {
        guard account.used > 0, now > account.stamp else { return account.used }
        let halfLives = Double((now - account.stamp).nanoseconds) / Double(halfLife.nanosecondsInt64)
        return account.used * exp2(-halfLives)
    }

    /// Drops accounts with nothing queued or running whose use decayed under a
    /// millisecond (a lone owner stays: it is the common case, and costs nothing).
    private mutating func forgetIdle(now: NIODeadline) {
        guard self.accounts.count > 1 else { return }
        let halfLife = self.halfLife
        self.accounts.removeAll { $0.queue.isEmpty && $0.running == 0 && Self.decayed($0, to: now, halfLife: halfLife) < 0.001 }
    }
}

/// One owner's share of a pool's workers: what `FairQueue.shares(now:)` reports.
public struct OwnerShare: Sendable, Equatable {
    /// The owner's key.
    public var owner: String
    /// Seconds of worker time used lately (decayed).
    public var used: Double
    /// Its weight (1 unless set).
    public var weight: Double
    /// Jobs queued.
    public var queued: Int
    /// Jobs taken out and not charged yet (running).
    public var running: Int
}
