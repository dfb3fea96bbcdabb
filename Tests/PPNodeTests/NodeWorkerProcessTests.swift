import Foundation
import PPTesting
import Testing

let holding = """
    import os, time

    def hold(x, dir):
        # Written then renamed: the file appears with the pid already in it.
        path = os.path.join(dir, "started-%d" % x)
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(60)
        return x
    """

/// A pprun client running two 60 s jobs on `node` only, and the pids of the node's
/// workers running them (once both have started).
func twoHeldJobs(on node: NodeProcess, in dir: TemporaryDirectory) throws -> (BackgroundProcess, [ProcessIdentity]) {
    let file = try dir.write("holding.py", holding)
    let input = try dir.write("inputs.jsonl", "[0, \"\(dir.path)\"]\n[1, \"\(dir.path)\"]\n")
    let client = try BackgroundProcess(
        builtCommand("pprun"),
        ["map", file + ":hold", "--input", input, "--workers", "0", "--no-discover", "--node", node.address],
        environment: ["PP_SECRET": secret]
    )
    let files = [dir.path + "/started-0", dir.path + "/started-1"]
    #expect(waitFor(seconds: 60) { files.allSatisfy { FileManager.default.fileExists(atPath: $0) } }, "\(client.stderr)")
    let workers = files.compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }.compactMap { Int32($0) }.compactMap { ProcessIdentity(pid: $0) }
    return (client, workers)
}

@Suite("ppnode's worker processes")
struct NodeWorkerProcessTests {
    @Test func killNineOfANodeKillsItsWorkers() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let node = try NodeProcess(["--workers", "2"], secret: secret)
        var workers: [ProcessIdentity] = []
        var client: BackgroundProcess?
        defer {
            client?.stop()
            node.stop()
            for w in workers { w.killIfRunning() }
        }
        let (c, busy) = try twoHeldJobs(on: node, in: dir)
        client = c
        // Every worker of the node (read before the kill), busy or not.
        workers = childProcesses(of: node.process.processIdentifier)
        #expect(workers.count == 2 && Set(busy).isSubset(of: Set(workers)), "\(workers) \(busy)")
        node.signal(SIGKILL)
        _ = node.wait()
        sleep(3)
        #expect(workers.filter(\.isRunning).isEmpty, "workers left running: \(workers.filter(\.isRunning))")
    }

    @Test func aClientThatLeavesHasItsRunningJobsStopped() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let node = try NodeProcess(["--workers", "2"], secret: secret)
        var busy: [ProcessIdentity] = []
        var client: BackgroundProcess?
        defer {
            client?.stop()
            node.stop()
            for w in busy { w.killIfRunning() }
        }
        (client, busy) = try twoHeldJobs(on: node, in: dir)
        #expect(busy.count == 2)
        client?.signal(SIGKILL)
        #expect(waitFor(seconds: 30) { node.logText.contains("client left; stopping its jobs") }, "\(node.logText)")
        // The workers running its jobs are killed (and replaced) long before the jobs' 60 s.
        #expect(waitFor(seconds: 30) { busy.allSatisfy { !$0.isRunning } }, "still running: \(busy.filter(\.isRunning))")
        #expect(node.logText.components(separatedBy: "client left; stopping its jobs").count == 2)  // logged once
        #expect(node.logText.contains("jobs=2"), "\(node.logText)")
    }
}
