public import DequeModule
public import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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
        var queue = Deque<Element>()
        /// Seconds of worker time, decayed to `stamp`.
        var used = 0.0
        var stamp: NIODeadline
        var weight: Double
        /// When it was last served, for ties (a serial number, not a time).
        var served: UInt64 = 0
        /// Elements taken out and not yet charged (running somewhere).
        var running = 0
    }

    /// How long it takes for used time to count half.
    public let halfLife: Duration
    private var accounts: [String: Account] = [:]
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
        self.open(owner, now: now)
        self.accounts[owner]!.weight = max(weight, .leastNonzeroMagnitude)
        self.accounts[owner]!.queue.append(element)
        self.count += 1
    }

    /// Puts `element` back first in `owner`'s queue (it was taken out but did not run).
    public mutating func prepend(_ element: Element, owner: String, now: NIODeadline) {
        self.open(owner, now: now)
        self.accounts[owner]!.queue.prepend(element)
        self.accounts[owner]!.running = max(0, self.accounts[owner]!.running - 1)
        self.count += 1
    }

    /// Takes the next element: the first of the owner that used the least time lately
    /// for its weight. The owner counts it as running until `charge`.
    public mutating func popNext(now: NIODeadline) -> Element? {
        var best: String?
        var bestUse = Double.infinity
        var bestServed = UInt64.max
        for (key, account) in self.accounts where !account.queue.isEmpty {
            let use = self.decayed(account, to: now) / account.weight
            if use < bestUse || (use == bestUse && account.served < bestServed) {
                (best, bestUse, bestServed) = (key, use, account.served)
            }
        }
        guard let key = best else { return nil }
        self.serial += 1
        self.accounts[key]!.served = self.serial
        self.accounts[key]!.running += 1
        self.count -= 1
        return self.accounts[key]!.queue.removeFirst()
    }

    /// Adds the worker time an element of `owner` used, once it ended (or was taken
    /// back from a worker). `seconds` 0 only ends its running count.
    public mutating func charge(_ owner: String, seconds: Double, now: NIODeadline) {
        guard self.accounts[owner] != nil else { return }
        let used = self.decayed(self.accounts[owner]!, to: now)
        self.accounts[owner]!.used = used + max(0, seconds)
        self.accounts[owner]!.stamp = now
        self.accounts[owner]!.running = max(0, self.accounts[owner]!.running - 1)
        self.forgetIdle(now: now)
    }

    /// Removes and returns the first element that matches.
    public mutating func remove(where matches: (Element) -> Bool) -> Element? {
        for key in self.accounts.keys {
            if let i = self.accounts[key]!.queue.firstIndex(where: matches) {
                self.count -= 1
                return self.accounts[key]!.queue.remove(at: i)
            }
        }
        return nil
    }

    /// Removes and returns every element, owner by owner.
    public mutating func removeAll() -> [Element] {
        var all: [Element] = []
        for key in self.accounts.keys.sorted() {
            all.append(contentsOf: self.accounts[key]!.queue)
            self.accounts[key]!.queue.removeAll()
        }
        self.count = 0
        return all
    }

    /// Every owner's use, weight, queue and running count, by least use first.
    public func shares(now: NIODeadline) -> [OwnerShare] {
        self.accounts.map { key, a in
            OwnerShare(owner: key, used: self.decayed(a, to: now), weight: a.weight, queued: a.queue.count, running: a.running)
        }.sorted { ($0.used / $0.weight, $0.owner) < ($1.used / $1.weight, $1.owner) }
    }

    private mutating func open(_ owner: String, now: NIODeadline) {
        if self.accounts[owner] == nil { self.accounts[owner] = Account(stamp: now, weight: 1) }
    }

    private func decayed(_ account: Account, to now: NIODeadline) -> Double {
        guard account.used > 0, now > account.stamp else { return account.used }
        let halfLives = Double((now - account.stamp).nanoseconds) / Double(self.halfLife.nanosecondsInt64)
        return account.used * exp2(-halfLives)
    }

    /// Drops accounts with nothing queued or running and under a millisecond of use.
    private mutating func forgetIdle(now: NIODeadline) {
        for (key, a) in self.accounts where a.queue.isEmpty && a.running == 0 && self.decayed(a, to: now) < 0.001 {
            self.accounts[key] = nil
        }
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
