import PPCore
import Testing

@Suite("Why a node is used or not")
struct NodeVerdictTests {
    static let ours = "k-ours"
    static func beacon(id: String = "i1", keyid: String = ours, protocol: Int = 2, workers: Int = 4) -> NodeBeacon {
        NodeBeacon(id: id, name: "n", port: 7340, keyid: keyid, protocol: `protocol`, cores: 4, workers: workers, version: "0.1.0")
    }

    static func judge(_ s: NodeSighting, ours: String? = ours, now: Double = 100) -> NodeVerdict {
        NodeVerdict(s, ourKeyID: ours, protocols: 2...3, now: now)
    }

    static func heard(_ b: NodeBeacon, at: Double = 100) -> NodeSighting {
        var s = NodeSighting(address: "10.0.0.5:7340", interface: "eth1")
        s.heard(b, via: "broadcast", at: at)
        return s
    }

    @Test func eachReasonNamesItsFix() {
        let other = Self.judge(Self.heard(Self.beacon(keyid: "k-theirs")))
        #expect(other.status == .otherCluster && !other.usable)
        #expect(other.reason == "other cluster (key id k-theirs, ours k-ours): give it our secret file, or use its secret")
        #expect(Self.judge(Self.heard(Self.beacon()), ours: nil).reason.contains("we have no secret; give --secret-file"))
        let old = Self.judge(Self.heard(Self.beacon(protocol: 1)))
        #expect(old.status == .incompatibleProtocol && old.reason == "protocol 1, we speak 2..3: upgrade it")
        #expect(Self.judge(Self.heard(Self.beacon(protocol: 99))).reason == "protocol 99, we speak 2..3: upgrade this client")
        let idle = Self.judge(Self.heard(Self.beacon(workers: 0)))
        #expect(idle.status == .noWorkers && idle.reason.hasPrefix("0 workers: it runs no jobs"))

        var refused = Self.heard(Self.beacon())
        refused.contact = .unreachable("connection refused")
        #expect(Self.judge(refused).status == .unreachable)
        #expect(Self.judge(refused).reason.hasPrefix("unreachable at 10.0.0.5:7340 from eth1: connection refused; check"))
        var tls = refused
        tls.contact = .keyRejected("handshake failed")
        #expect(Self.judge(tls).status == .tls && Self.judge(tls).reason.contains("the node does not accept our key"))
        var connected = refused
        connected.contact = .connected
        #expect(Self.judge(connected).status == .usable && Self.judge(connected).reason == "connected")
        #expect(Self.judge(Self.heard(Self.beacon())).usable)
        // A node named by address and never heard: its connection outcome alone.
        var given = NodeSighting(address: "10.0.0.9:7340", via: ["given"])
        #expect(Self.judge(given).status == .usable)
        given.contact = .unreachable("connection timed out")
        #expect(Self.judge(given).reason.hasPrefix("unreachable at 10.0.0.9:7340: connection timed out"))
    }

    @Test func silenceCountsOnlyWithoutAConnection() {
        let quiet = Self.heard(Self.beacon(), at: 90)
        let verdict = Self.judge(quiet, now: 100)
        #expect(verdict.status == .silent && verdict.reason.hasPrefix("silent for 10 s (last beacon at "))
        #expect(Self.judge(quiet, now: 95).status == .usable)
        var connected = quiet
        connected.contact = .connected
        #expect(Self.judge(connected, now: 100).status == .usable)
    }

    @Test func goodbyeAndRestartAreToldApart() {
        var s = Self.heard(Self.beacon(id: "first"))
        var bye = Self.beacon(id: "first")
        bye.leaving = true
        let byeIsRestart = s.heard(bye, via: "broadcast", at: 101)
        #expect(!byeIsRestart)
        #expect(s.leftAt == 101 && s.beacon?.leaving == nil)
        let left = Self.judge(s)
        #expect(left.status == .left && left.reason.hasPrefix("left (goodbye at "))
        // The node comes back with a new id: a new instance, no longer gone.
        let restarted = s.heard(Self.beacon(id: "second"), via: "broadcast", at: 105)
        #expect(restarted)
        #expect(s.leftAt == nil && s.previousID == "first" && s.beacon?.id == "second")
        let back = Self.judge(s, now: 105)
        #expect(back.status == .restarted && back.usable && back.reason == "restarted (new instance second, was first): treated as a new node")
        // The same id again is no restart.
        let again = s.heard(Self.beacon(id: "second"), via: "DNS-SD", at: 106)
        #expect(!again && s.via == ["broadcast", "DNS-SD"])
    }

    @Test func oneIDAtTwoAddressesIsSaid() {
        var a = NodeSighting(address: "10.0.0.5:7340")
        a.heard(Self.beacon(id: "clone"), via: "broadcast", at: 100)
        var b = NodeSighting(address: "10.0.0.6:7340")
        b.heard(Self.beacon(id: "clone"), via: "broadcast", at: 100)
        var c = NodeSighting(address: "10.0.0.7:7340")
        c.heard(Self.beacon(id: "own"), via: "broadcast", at: 100)
        let verdicts = NodeVerdict.judge([c, b, a], ourKeyID: Self.ours, protocols: 2...3, now: 100)
        #expect(verdicts.map(\.sighting.address) == ["10.0.0.5:7340", "10.0.0.6:7340", "10.0.0.7:7340"])
        #expect(verdicts.map(\.status) == [.sharedID, .sharedID, .usable])
        #expect(verdicts[0].reason == "id clone is also announced from 10.0.0.6:7340 (a cloned machine?); each address is used as its own node")
        #expect(verdicts[1].sighting.sameIDAt == "10.0.0.5:7340")
    }

    @Test func goodbyeBeaconStaysSmallAndOldReadersIgnoreIt() throws {
        var b = Self.beacon()
        b.leaving = true
        #expect(b.datagram.count <= NodeBeacon.maxSize)
        #expect(NodeBeacon(datagram: b.datagram)?.leaving == true)
        #expect(!String(decoding: Self.beacon().json, as: UTF8.self).contains("leaving"))
    }
}
