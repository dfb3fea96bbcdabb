import NIOCore
import PPCore
import Testing

@Suite("Fair queue")
struct FairQueueTests {
    private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    private func drain(_ q: inout FairQueue<String>, at now: NIODeadline) -> [String] {
        var out: [String] = []
        while let e = q.popNext(now: now) { out.append(e) }
        return out
    }

    @Test func oneOwnerIsFirstInFirstOut() {
        var q = FairQueue<String>()
        for e in ["a", "b", "c"] { q.append(e, owner: "x", now: t0) }
        #expect(q.count == 3)
        #expect(drain(&q, at: t0) == ["a", "b", "c"])
        #expect(q.isEmpty)
    }

    @Test func ownersWithEqualUseTakeTurns() {
        var q = FairQueue<String>()
        for e in ["a1", "a2", "a3"] { q.append(e, owner: "a", now: t0) }
        for e in ["b1", "b2"] { q.append(e, owner: "b", now: t0) }
        let order = drain(&q, at: t0)
        #expect(order.count == 5)
        // Nothing charged yet: owners alternate, each in its own order.
        #expect(order.filter { $0.hasPrefix("a") } == ["a1", "a2", "a3"])
        #expect(order.filter { $0.hasPrefix("b") } == ["b1", "b2"])
        #expect(Set(order.prefix(2).map { $0.first! }) == ["a", "b"])
    }

    @Test func theOwnerThatUsedLeastGoesFirst() {
        var q = FairQueue<String>()
        // A keeps long jobs queued and has used 5 s of worker time.
        for i in 0..<100 { q.append("a\(i)", owner: "a", now: t0) }
        for _ in 0..<10 {
            _ = q.popNext(now: t0)
            q.charge("a", seconds: 0.5, now: t0)
        }
        // B arrives later with short jobs: all of them go before A's next one.
        for i in 0..<20 { q.append("b\(i)", owner: "b", now: t0) }
        var next: [String] = []
        for _ in 0..<20 {
            next.append(q.popNext(now: t0)!)
            q.charge("b", seconds: 0.001, now: t0)
        }
        #expect(next == (0..<20).map { "b\($0)" })
        #expect(q.popNext(now: t0) == "a10")
    }

    @Test func useDecaysByHalfEachHalfLife() {
        var q = FairQueue<String>(halfLife: .seconds(10))
        q.append("a", owner: "a", now: t0)
        _ = q.popNext(now: t0)
        q.charge("a", seconds: 8, now: t0)
        let later = t0 + .seconds(10)
        let share = q.shares(now: later).first!
        #expect(share.owner == "a")
        #expect(abs(share.used - 4) < 1e-9)
        #expect(abs(q.shares(now: t0 + .seconds(20)).first!.used - 2) < 1e-9)
    }

    @Test func weightsScaleTheShare() {
        var q = FairQueue<String>()
        q.append("h0", owner: "heavy", weight: 2, now: t0)
        q.append("l0", owner: "light", now: t0)
        _ = q.drainBoth(now: t0)
        q.charge("heavy", seconds: 2, now: t0)  // 2 / 2 = 1
        q.charge("light", seconds: 1.5, now: t0)  // 1.5 / 1
        q.append("h1", owner: "heavy", weight: 2, now: t0)
        q.append("l1", owner: "light", now: t0)
        #expect(q.popNext(now: t0) == "h1")
        #expect(q.shares(now: t0).map(\.weight).sorted() == [1, 2])
    }

    @Test func prependRemoveAndRemoveAll() {
        var q = FairQueue<String>()
        for e in ["a", "b", "c"] { q.append(e, owner: "x", now: t0) }
        let first = q.popNext(now: t0)!
        #expect(q.shares(now: t0).first!.running == 1)
        q.prepend(first, owner: "x", now: t0)
        #expect(q.shares(now: t0).first!.running == 0)
        #expect(q.remove(where: { $0 == "b" }) == "b")
        #expect(q.remove(where: { $0 == "zz" }) == nil)
        #expect(q.count == 2)
        q.append("d", owner: "y", now: t0)
        #expect(q.removeAll().sorted() == ["a", "c", "d"])
        #expect(q.isEmpty)
        #expect(q.popNext(now: t0) == nil)
    }

    @Test func idleOwnersAreForgotten() {
        var q = FairQueue<String>(halfLife: .seconds(1))
        q.append("a", owner: "a", now: t0)
        _ = q.popNext(now: t0)
        q.charge("a", seconds: 1, now: t0)
        #expect(q.shares(now: t0).count == 1)
        // 20 half-lives later its use is under a millisecond: the next charge of any
        // owner drops it.
        q.append("b", owner: "b", now: t0)
        _ = q.popNext(now: t0)
        q.charge("b", seconds: 0, now: t0 + .seconds(20))
        #expect(q.shares(now: t0 + .seconds(20)).isEmpty)
    }
}

extension FairQueue {
    fileprivate mutating func drainBoth(now: NIODeadline) -> [Element] {
        var out: [Element] = []
        while let e = self.popNext(now: now) { out.append(e) }
        return out
    }
}
