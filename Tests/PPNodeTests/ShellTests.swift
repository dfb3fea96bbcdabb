// ppnode, ppnodes and pprun as a person meets them in a shell and under systemd:
// --version, completions, worker names in ps, SIGHUP, config checks, the first-start
// message and `ppnode secret`, ppnodes' width and --watch into a pipe. Real processes
// on loopback.

import Foundation
import PPTesting
import Testing

@Suite("ppnode and ppnodes in the shell", .serialized)
struct ShellTests {
    @Test func versionOnEveryCommand() throws {
        for command in ["pprun", "ppnode", "ppnodes"] {
            let r = try runProcess(builtCommand(command), ["--version"])
            #expect(r.status == 0 && r.lines == ["\(command) 0.1.0 (protocol 3)"], "\(command): \(r.stdout) \(r.stderr)")
        }
    }

    @Test func completionScriptsAreGenerated() throws {
        for command in ["pprun", "ppnode", "ppnodes"] {
            for shell in ["bash", "zsh", "fish"] {
                let r = try runProcess(builtCommand(command), ["--generate-completion-script", shell])
                #expect(r.status == 0 && r.stdout.contains(command) && r.stdout.contains("--"), "\(command) \(shell): \(r.stderr)")
            }
        }
        let node = try runProcess(builtCommand("ppnode"), ["--generate-completion-script", "bash"]).stdout
        #expect(node.contains("--drain-timeout") && node.contains("secret"))
    }

    @Test func workersAreNamedPPWorkerAndKeepTheirInterpreter() throws {
        // The interpreter itself (python3 on PATH may be a wrapper that execs it).
        let python = try runPython("import sys; print(sys.executable)")[0]
        let node = try NodeProcess(["--workers", "2", "--python", python], secret: secret)
        defer { node.stop() }
        let workers = childProcesses(of: node.process.processIdentifier)
        #expect(workers.count == 2, "\(workers)")
        for w in workers {
            let argv = (FileManager.default.contents(atPath: "/proc/\(w.pid)/cmdline") ?? Data()).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            // The worker names itself once its script runs (only one worker need be
            // ready when the node is).
            var comm = ""
            for _ in 0..<2000 where comm != "ppworker\n" {
                comm = try String(contentsOfFile: "/proc/\(w.pid)/comm", encoding: .utf8)
                usleep(5000)
            }
            let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(w.pid)/exe")
            #expect(argv.first == "ppworker" && argv.joined(separator: " ").utf8.count < 200, "\(argv)")
            #expect(comm == "ppworker\n")
            #expect(exe == URL(fileURLWithPath: python).resolvingSymlinksInPath().path, "\(exe)")
        }
        // Jobs see the interpreter's own file and no PYTHONEXECUTABLE; the cwd is not
        // on sys.path.
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("w.py", "def where(x):\n    import os, sys\n    return [os.path.realpath(sys.executable), os.environ.get('PYTHONEXECUTABLE'), '' in sys.path]\n")
        let r = try runProcess(builtCommand("pprun"), ["map", file + ":where", "1", "--workers", "0", "--node", node.address, "--no-discover"], environment: ["PP_SECRET": secret])
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(workers[0].pid)/exe")
        #expect(r.status == 0 && r.lines == ["[\"\(exe)\",null,false]"], "\(r.stdout) \(r.stderr)")
    }

    @Test func workersInAVenvRunTheVenv() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let made = try runProcess("/usr/bin/env", ["python3", "-m", "venv", "--without-pip", dir.path + "/venv"])
        #expect(made.status == 0, "\(made.stderr)")
        let file = try dir.write("w.py", "def prefix(x):\n    import os, sys\n    return [os.path.realpath(p) for p in (sys.prefix, sys.executable)]\n")
        let python = dir.path + "/venv/bin/python"
        let r = try runProcess(builtCommand("pprun"), ["map", file + ":prefix", "1", "--workers", "1"], environment: ["PP_PYTHON": python])
        let venv = URL(fileURLWithPath: dir.path + "/venv").resolvingSymlinksInPath().path
        let exe = URL(fileURLWithPath: python).resolvingSymlinksInPath().path
        #expect(r.status == 0 && r.lines == ["[\"\(venv)\",\"\(exe)\"]"], "\(r.stdout) \(r.stderr)")
    }

    @Test func sighupOnABusyNodeDrainsAndLosesNothing() throws {
        let a = try NodeProcess.private(["--drain-timeout", "5"]), b = try NodeProcess.private()
        defer { a.stop(); b.stop() }
        signalWhenBusy(a, SIGHUP)
        _ = try runTwoHundredOn(a, b)
        #expect(a.wait() == 0)
        #expect(a.logText.contains("shutting down") && a.logText.contains("stopped"))
    }

    /// Runs ppnode with the test secret and `config` as its config file, to its exit.
    func ppnode(config: String, _ arguments: [String], environment: [String: String] = [:]) throws -> ProcessResult {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = try dir.write("ppnode.conf", config)
        var r = try runProcess(builtCommand("ppnode"), ["--config", path] + arguments, environment: ["PP_SECRET": secret, "PP_DNSSD": "", "PP_PORT": ""].merging(environment) { $1 })
        r.stderr = r.stderr.replacingOccurrences(of: path, with: "CONF")
        return r
    }

    @Test func everyConfigValueIsCheckedEvenWhenAFlagOverridesIt() throws {
        let port = try ppnode(config: "# node\nport = 73400\n", ["--port", "7341"])
        #expect(port.status == 2 && port.stderr == "ppnode: CONF:2 (port): '73400' is not a whole number from 0 to 65535\n", "\(port.stderr)")
        let dnssd = try ppnode(config: "dnssd = maybe\n", ["--no-dnssd"])
        #expect(dnssd.status == 2 && dnssd.stderr == "ppnode: CONF:1 (dnssd): 'maybe' is not yes or no (on/off, true/false and 1/0 work too)\n", "\(dnssd.stderr)")
        let allow = try ppnode(config: "pp-allow-default-secret = sure\n", ["--pp-allow-default-secret"])
        #expect(allow.status == 2 && allow.stderr.contains("CONF:1 (pp-allow-default-secret): 'sure' is not yes or no"), "\(allow.stderr)")
        let env = try ppnode(config: "", ["--workers", "1"], environment: ["PP_WORKERS": "many"])
        #expect(env.status == 2 && env.stderr.hasPrefix("ppnode: PP_WORKERS: 'many' is not a number of workers"), "\(env.stderr)")
        let twice = try ppnode(config: "port = 7341\nname = a\nport = 7342\n", [])
        #expect(twice.status == 2 && twice.stderr == "ppnode: CONF:3: 'port' is set again (first on line 1); keep one of the two lines\n", "\(twice.stderr)")
        let long = String(repeating: "n", count: 64)
        let name = try ppnode(config: "", ["--name", "x"], environment: ["PP_NODE_NAME": long])
        #expect(name.status == 2 && name.stderr == "ppnode: PP_NODE_NAME: '\(long)' is not a node name; give 1 to 63 bytes of text, such as rack1-node3\n", "\(name.stderr)")
    }

    @Test func booleansTakeOneVocabularyAndAddressesReadAsHostPort() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let config = try dir.write("ppnode.conf", "dnssd = No\npp-allow-default-secret = off\n")
        let node = try NodeProcess(["--config", config, "--workers", "0"], secret: secret, environment: ["PP_DNSSD": ""])
        defer { node.stop() }
        let log = node.logText
        #expect(log.contains("DNS-SD off (--no-dnssd)"), "\(log)")
        #expect(log.contains("ppnode ready; clients connect to \(node.address)\n") && log.contains("address=\(node.address) "), "\(log)")
        #expect(!log.contains("[IPv4]"), "\(log)")
    }

    @Test func firstStartSaysWhereTheNewSecretIsAndHowToCopyIt() throws {
        let home = try TemporaryDirectory()
        defer { home.remove() }
        let env = ["HOME": home.path, "XDG_CONFIG_HOME": ""]
        let node = try NodeProcess(["--workers", "0"], secret: nil, environment: env)
        let file = home.path + "/.config/ppnode/secret"
        #expect(node.logText.contains("new cluster secret in \(file) (key id "), "\(node.logText)")
        #expect(node.logText.contains("ppnode secret --show | ssh OTHER-HOST ppnode secret --install -"))
        node.stop()
        let again = try NodeProcess(["--workers", "0"], secret: nil, environment: env)
        defer { again.stop() }
        #expect(!again.logText.contains("new cluster secret"), "\(again.logText)")
    }

    @Test func secretShowAndInstall() throws {
        let home = try TemporaryDirectory(), other = try TemporaryDirectory()
        defer { home.remove(); other.remove() }
        func secretCommand(_ arguments: [String], stdin: String? = nil, in dir: TemporaryDirectory) throws -> ProcessResult {
            try runProcess(builtCommand("ppnode"), ["secret"] + arguments, stdin: stdin, environment: ["HOME": dir.path, "XDG_CONFIG_HOME": ""])
        }
        let file = home.path + "/.config/ppnode/secret", copy = other.path + "/.config/ppnode/secret"
        let none = try secretCommand(["--show"], in: home)
        #expect(none.status == 2 && none.stderr.contains("no cluster secret"), "\(none.stderr)")
        let bad = try secretCommand(["--install", "-"], stdin: "short\n", in: home)
        #expect(bad.status == 2 && bad.stderr.contains("has 5 characters; use at least 16"), "\(bad.stderr)")
        let installed = try secretCommand(["--install", "-"], stdin: secret + "\n", in: home)
        #expect(installed.status == 0 && installed.stdout.hasPrefix("installed the secret in \(file) (key id "), "\(installed.stderr)")
        var st = stat()
        #expect(stat(file, &st) == 0 && st.st_mode & 0o777 == 0o600)
        let show = try secretCommand(["--show"], in: home)
        #expect(show.status == 0 && show.lines == [secret] && show.stderr.contains("from \(file)"), "\(show.stderr)")
        let info = try secretCommand([], in: home)
        #expect(info.status == 0 && info.lines.first == "secret: \(file)" && !info.stdout.contains(secret), "\(info.stdout)")
        // Copied as the man page says: show on one machine, install on the other.
        let copied = try secretCommand(["--install", "-"], stdin: show.stdout, in: other)
        let copiedText = try String(contentsOfFile: copy, encoding: .utf8)
        #expect(copied.status == 0 && copiedText == secret + "\n", "\(copied.stderr)")
        let same = try secretCommand(["--install", "-"], stdin: secret, in: other)
        #expect(same.status == 0 && same.stdout.hasPrefix("the secret is already installed in \(copy)"))
        let different = try secretCommand(["--install", "-"], stdin: "another-secret-0123456789", in: other)
        #expect(different.status == 2 && different.stderr.contains("already holds another secret") && different.stderr.contains("--force"), "\(different.stderr)")
        let forced = try secretCommand(["--install", "-", "--force"], stdin: "another-secret-0123456789", in: other)
        let forcedText = try String(contentsOfFile: copy, encoding: .utf8)
        #expect(forced.status == 0 && forcedText == "another-secret-0123456789\n")
        let both = try secretCommand(["--show", "--install", "-"], in: other)
        #expect(both.status == 64 && both.stderr.contains("--show and --install contradict each other"), "\(both.stderr)")
    }

    @Test func ppnodesFitsTheTerminalUnlessWide() throws {
        let node = try NodeProcess(["--workers", "1"], secret: secret)
        defer { node.stop() }
        let env = ["PP_SECRET": secret, "PP_BROADCAST": "off", "PP_DNSSD": "off"]
        let narrow = try runProcess(builtCommand("ppnodes"), ["--node", node.address, "--timeout", "0.2"], environment: env.merging(["COLUMNS": "80"]) { $1 })
        #expect(narrow.status == 0, "\(narrow.stderr)")
        // Nodes of other tests (same secret) may be listed too: ours is one of the rows.
        #expect(narrow.lines.count >= 2 && narrow.lines.contains { $0.contains(node.address) } && narrow.lines.allSatisfy { $0.count <= 80 }, "\(narrow.stdout)")
        #expect(narrow.lines[0].hasPrefix("NAME") && narrow.lines[0].contains("WORKERS") && !narrow.lines[0].contains("FOUND BY"), "\(narrow.stdout)")
        let wide = try runProcess(builtCommand("ppnodes"), ["--node", node.address, "--timeout", "0.2", "--wide"], environment: env.merging(["COLUMNS": "80"]) { $1 })
        #expect(wide.lines.count >= 2 && wide.lines[0].contains("FOUND BY") && wide.lines[0].contains("ARCH/OS") && wide.lines[0].count > 80, "\(wide.stdout)")
    }

    @Test func ppnodesWatchWritesEachSurveyIntoAPipe() throws {
        let node = try NodeProcess(["--workers", "1"], secret: secret)
        defer { node.stop() }
        let p = makeProcess(builtCommand("ppnodes"), ["--watch", "--json", "--node", node.address, "--timeout", "0.2"], environment: ["PP_SECRET": secret, "PP_DNSSD": "off"])
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer {
            p.terminate()
            p.waitUntilExit()
        }
        // Reads until two surveys arrived (or the pipe closed).
        var text = ""
        while text.split(separator: "\n").count < 2 {
            let data = out.fileHandleForReading.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
        }
        let lines = text.split(separator: "\n")
        #expect(lines.count >= 2, "\(text)")
        for line in lines.prefix(2) {
            let nodes = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [[String: Any]]
            // Other tests' nodes (same secret, loopback broadcast) may be listed too.
            #expect(nodes?.contains { $0["address"] as? String == node.address } == true, "\(line)")
        }
    }
}
