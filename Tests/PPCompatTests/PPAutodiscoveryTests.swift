// ppft's autodiscovery (`ppservers=("*:60000",)`) finding ppnodes across simulated
// hosts: network namespaces on one bridge (scripts/netlab). Needs root.

import Foundation
import PPTesting
import Testing

/// A ppft client that looks for servers with `ppservers=(argv[1],)`, says what it found,
/// waits for `argv[3]` servers (at most 30 s; exits 3 without them), then runs 20 jobs and prints for each
/// `[i, i*i, address of the host that ran it]`.
let autodiscoveryClient = """
    import json, sys, time
    import pp

    def where(x):
        import socket, time
        time.sleep(0.2)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("10.88.0.254", 9))
        address = s.getsockname()[0]
        s.close()
        return (x, x * x, address)

    def remote(js):
        return sorted(k for k, v in js.get_active_nodes().items() if k != "local" and v > 0)

    js = pp.Server(0, ppservers=(sys.argv[1],), secret=sys.argv[2])
    start = time.time()
    print("client up", flush=True)
    while not remote(js) and time.time() - start < 30:
        time.sleep(0.02)
    print("first", json.dumps(remote(js)), "after %.2f s" % (time.time() - start), flush=True)
    while len(remote(js)) < int(sys.argv[3]) and time.time() - start < 30:
        time.sleep(0.02)
    print("nodes", json.dumps(remote(js)), flush=True)
    if len(remote(js)) < int(sys.argv[3]):
        js.destroy()
        sys.exit(3)  # with no local workers, jobs would wait for ever
    jobs = [js.submit(where, (i,)) for i in range(20)]
    for job in jobs:
        print(json.dumps(job()), flush=True)
    js.destroy()
    """

extension PPCompatTests {
    @Test func ppftAutodiscoveryFindsNodesOnOtherHosts() throws {
        let venv = try ppftVenv()
        let lab = try Lab(hosts: 3)
        defer { lab.down() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let client = try dir.write("auto.py", autodiscoveryClient)
        // Node A: ppft's port (60000), so a client that asks for "*:60000" finds it.
        // Its periodic announcement is once a minute: a client started after it finds it
        // only by the answer to its own "C" datagram.
        let a = try lab.node(1, ["--name", "a", "--workers", "1", "--python", venv + "/bin/python", "--beacon-interval", "60", "--pp-port", "60000"], secret: compatSecret)
        defer { a.stop() }
        #expect(waitFor(seconds: 10) { a.logText.contains("broadcast=10.88.0.255:60000") }, "\(a.logText)")

        let watched = try WatchedProcess(lab.launcher(3) + [venv + "/bin/python", client, "*:60000", compatSecret, "2"], environment: [:])
        #expect(watched.wait(seconds: 20) { $0.contains { $0.hasPrefix("first ") } }, "\(watched.lines) \(watched.stderr)")
        #expect(watched.lines.contains { $0.hasPrefix("first [\"10.88.0.1:60000\"]") }, "\(watched.lines)")
        // Node B starts after the client: its first announcement brings the client.
        let b = try lab.node(2, ["--name", "b", "--workers", "1", "--python", venv + "/bin/python", "--pp-port", "60000"], secret: compatSecret)
        defer { b.stop() }
        #expect(watched.wait(seconds: 20) { $0.contains { $0.hasPrefix("nodes ") } }, "\(watched.lines) \(watched.stderr)")
        #expect(watched.lines.contains("nodes [\"10.88.0.1:60000\", \"10.88.0.2:60000\"]"), "\(watched.lines) \(b.logText)")
        #expect(watched.finish(seconds: 60) == 0, "\(watched.stderr)")

        let results = watched.lines.compactMap { line -> (Int, Int, String)? in
            guard let row = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [Any], row.count == 3,
                let i = row[0] as? Int, let square = row[1] as? Int, let address = row[2] as? String
            else { return nil }
            return (i, square, address)
        }
        #expect(results.map(\.0) == Array(0..<20), "\(watched.lines)")
        #expect(results.allSatisfy { $0.1 == $0.0 * $0.0 })
        // Both nodes ran jobs (each has one worker; every job takes 0.2 s).
        #expect(Set(results.map(\.2)) == ["10.88.0.1", "10.88.0.2"], "\(results)")

        // ppft's other patterns cannot find a server at all, ppft's own included: "*"
        // alone picks a random port (ppft 1.7.8), and "10.88.0.*" makes the client bind
        // its listening socket to 10.88.0.0, which Linux refuses (EADDRNOTAVAIL).
    }
}
