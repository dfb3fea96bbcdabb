import Foundation
import PPCore
import PPTesting
@testable import PPWorkers
import Testing

/// A fake pyenv in `dir`: `shims/python3` in pyenv's form, and a `libexec/pyenv` that
/// logs each start to `dir/starts` and runs python3 (which reports its real file).
private func fakePyenv(in dir: TemporaryDirectory) throws -> (shim: String, root: String, starts: String) {
    let root = dir.path + "/root", starts = dir.path + "/starts"
    for sub in ["/root/libexec", "/shims"] { try FileManager.default.createDirectory(atPath: dir.path + sub, withIntermediateDirectories: true) }
    let pyenv = try dir.write("root/libexec/pyenv", "#!/bin/sh\necho start >> \(starts)\nshift 2\nexec python3 \"$@\"\n")
    let shim = try dir.write(
        "shims/python3",
        "#!/bin/sh\nset -e\nprogram=\"${0##*/}\"\n\nexport PYENV_ROOT=\"\(root)\"\nexec \"\(pyenv)\" exec \"$program\" \"$@\"\n"
    )
    chmod(pyenv, 0o755)
    chmod(shim, 0o755)
    return (shim, root, starts)
}

@Suite("The interpreter behind a pyenv shim, remembered")
struct PyenvShimTests {
    @Test func theSelectionChangesWithWhatPyenvReads() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let pyenv = try fakePyenv(in: dir)
        let shim = try #require(PyenvShim(path: pyenv.shim))
        #expect(shim.root == pyenv.root)
        // A shim of a pyenv installed elsewhere (a package's /usr/bin/pyenv).
        let packaged = try dir.write("packaged", "#!/usr/bin/env bash\nset -e\nprogram=\"${0##*/}\"\nexport PYENV_ROOT=\"/srv/pyenv\"\nexec \"/usr/bin/pyenv\" exec \"$program\" \"$@\"\n")
        #expect(PyenvShim(path: packaged)?.root == "/srv/pyenv")
        // Not shims: another wrapper, an interpreter, a missing file.
        #expect(PyenvShim(path: try dir.write("wrapper", "#!/bin/sh\nexec python3 \"$@\"\n")) == nil)
        #expect(PyenvShim(path: "/bin/sh") == nil && PyenvShim(path: dir.path + "/none") == nil)

        let work = dir.path + "/work/deeper"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        func selection(_ environment: [String: String] = [:]) -> String { shim.selection(environment: environment, directory: work) }
        // The global version file (absent, then written, then changed).
        let none = selection()
        _ = try dir.write("root/version", "3.11.7\n")
        let global = selection()
        #expect(global != none && selection() == global)
        _ = try dir.write("root/version", "3.12.1\n")
        let changed = selection()
        #expect(changed != global)
        // A .python-version above the directory wins over the global file (pyenv local).
        _ = try dir.write("work/.python-version", "3.10.13\n")
        #expect(PyenvShim.nearestVersionFile(from: work) == dir.path + "/work/.python-version")
        let local = selection()
        #expect(local != changed)
        _ = try dir.write("root/version", "3.9.18\n")
        #expect(selection() == local)
        // PYENV_VERSION (pyenv shell) wins over both: the files no longer count.
        let shell = selection(["PYENV_VERSION": "3.8.18"])
        #expect(shell != local && shell != selection(["PYENV_VERSION": "3.9.18"]))
        _ = try dir.write("work/.python-version", "3.7.17\n")
        #expect(selection(["PYENV_VERSION": "3.8.18"]) == shell)
        // PYENV_DIR moves the search.
        #expect(selection(["PYENV_DIR": dir.path]) != local)
    }

    @Test func theCacheKeepsTheNewestAndDropsWhatIsGone() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let cache = InterpreterCache(file: dir.path + "/cache/interpreters")
        #expect(cache.interpreter(for: "a") == nil)
        cache.record("/bin/sh", for: "a")
        cache.record("/bin/true", for: "b")
        #expect(cache.interpreter(for: "a") == "/bin/sh" && cache.interpreter(for: "b") == "/bin/true")
        cache.record("/bin/false", for: "a")
        #expect(cache.interpreter(for: "a") == "/bin/false")
        // An interpreter that is no longer there is not used.
        cache.record(dir.path + "/gone", for: "c")
        #expect(cache.interpreter(for: "c") == nil)
        // A file others may write is not trusted.
        chmod(cache.file, 0o666)
        #expect(cache.interpreter(for: "b") == nil)
        chmod(cache.file, 0o644)
        #expect(cache.interpreter(for: "b") == "/bin/true")
        chmod(dir.path + "/cache", 0o777)  // anyone could rename another file over it
        #expect(cache.interpreter(for: "b") == nil)
        chmod(dir.path + "/cache", 0o700)
        #expect(cache.interpreter(for: "b") == "/bin/true")
        // At most 32 selections.
        for i in 0..<40 { cache.record("/bin/sh", for: "s\(i)") }
        let lines = try String(contentsOfFile: cache.file, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 32 && cache.interpreter(for: "s39") == "/bin/sh" && cache.interpreter(for: "a") == nil)
    }

    @Test func aPoolStartsThroughTheShimOnlyUntilItKnowsTheInterpreter() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let pyenv = try fakePyenv(in: dir)
        let cacheFile = dir.path + "/cache/interpreters"
        let exe = FunctionBundle(name: "exe", source: "import os\ndef exe():\n    return os.readlink('/proc/self/exe')\n")
        func pool() -> WorkerPool {
            var configuration = WorkerPool.Configuration(workers: 2, python: pyenv.shim)
            configuration.interpreterCache = cacheFile
            return WorkerPool(configuration: configuration)
        }
        func starts() -> Int { ((try? String(contentsOfFile: pyenv.starts, encoding: .utf8)) ?? "").split(separator: "\n").count }

        // First pool: its workers start through the shim, and the first one's hello is recorded.
        let first = pool()
        let real = try #require(text(await run(first, exe, "[]")))
        await first.shutdown()
        #expect(starts() == 2)
        let recorded = try String(contentsOfFile: cacheFile, encoding: .utf8)
        #expect(recorded.hasSuffix("\t" + real.dropFirst().dropLast() + "\n"), "\(recorded) \(real)")
        // Second pool, same selection: no start goes through the shim.
        let second = pool()
        #expect(text(await runAll(second, exe, ["[]", "[]", "[]", "[]"])[3]) == real)
        await second.shutdown()
        #expect(starts() == 2)
        // Without the record (or with another selection), the shim runs again.
        try FileManager.default.removeItem(atPath: cacheFile)
        let third = pool()
        #expect(text(await run(third, exe, "[]")) == real)
        await third.shutdown()
        #expect(starts() == 4)
    }
}
