import Foundation
import PPTesting
import Testing

/// `python -m parallelpython PROGRAM.py`: ppft's own example programs, unchanged, on
/// our engine, against the same programs on ppft itself (its local workers).
@Suite("ppft programs on the engine (python -m parallelpython)", .serialized)
struct PythonMainTests {
    @Test func ppftExamplesPrintWhatTheyPrintWithPpft() throws {
        let venv = try ppftVenv()
        let examples = venv + "/lib/python3.11/site-packages/ppft/tests/"
        let environment = [
            "PYTHONPATH": repositoryRoot + "/python", "PP_ENGINE": builtCommand("pprun"),
            "PP_BROADCAST": "127.255.255.255", "PP_DNSSD": "off",
        ]
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        for example in ["sum_primes", "sum_primes_functor", "callback", "auto_diff", "reverse_md5", "quicksort", "dynamic_ncpus"] {
            let ours = try runProcess("/usr/bin/timeout", ["120", venv + "/bin/python", "-m", "parallelpython", examples + example + ".py", "2"], environment: environment, directory: dir.path)
            let theirs = try runProcess("/usr/bin/timeout", ["120", venv + "/bin/python", examples + example + ".py", "2"], directory: dir.path)
            #expect(ours.status == 0 && theirs.status == 0, "\(example): \(ours.stderr) \(theirs.stderr)")
            #expect(!ours.stdout.contains("An error has occured"), "\(example): \(ours.stdout)")
            // The engine ran them, not ppft: its table names the local pool as ppft's does,
            // and ppft's own workers (ppft's ppworker) never started for ours.
            #expect(ours.stdout.contains("Job execution statistics:"), "\(example): \(ours.stdout)")
            if example == "quicksort" {
                for out in [ours.stdout, theirs.stdout] { #expect(quicksortPrintedSortedNumbers(out), "\(out)") }
            } else {
                #expect(comparable(ours.stdout) == comparable(theirs.stdout), "\(example)\n--- ours:\n\(ours.stdout)\n--- ppft:\n\(theirs.stdout)")
            }
        }
    }

    @Test func aFailingJobPrintsItsErrorAndReturnsNoneAsWithPpft() throws {
        let venv = try ppftVenv()
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let program = try dir.write("failing.py", """
            import ppft as pp

            def boom(x):
                return 1 / x

            server = pp.Server(2)
            job = server.submit(boom, (0,))
            print("value:", job())
            print("next:", server.submit(boom, (4,))())
            """)
        let environment = ["PYTHONPATH": repositoryRoot + "/python", "PP_ENGINE": builtCommand("pprun"), "PP_BROADCAST": "127.255.255.255", "PP_DNSSD": "off"]
        let ours = try runProcess(venv + "/bin/python", ["-m", "parallelpython", program], environment: environment, directory: dir.path)
        #expect(ours.status == 0, "\(ours.stderr)")
        #expect(ours.stdout.contains("An error has occured during the function execution"), "\(ours.stdout)")
        #expect(ours.stdout.contains("ZeroDivisionError"), "\(ours.stdout)")
        #expect(ours.stdout.contains("value: None"), "\(ours.stdout)")
        #expect(ours.stdout.contains("next: 0.25"), "\(ours.stdout)")
    }

    @Test func pathosParallelPoolRunsOnTheEngine() throws {
        let venv = try ppftVenv()
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let program = try dir.write("pathos_prog.py", """
            from pathos.pools import ParallelPool

            def sq(x):
                return x * x

            if __name__ == "__main__":
                pool = ParallelPool(nodes=2)
                print(pool.map(sq, range(10)))
                print(pool.amap(sq, range(5)).get())
                print(pool.apipe(sq, 7).get())
                print(sorted(pool.uimap(sq, range(6))))
                print(type(pool._serve()).__module__)
                pool.close()
                pool.join()
                pool.clear()
            """)
        let environment = ["PYTHONPATH": repositoryRoot + "/python", "PP_ENGINE": builtCommand("pprun"), "PP_BROADCAST": "127.255.255.255", "PP_DNSSD": "off"]
        let r = try runProcess("/usr/bin/timeout", ["120", venv + "/bin/python", "-m", "parallelpython", program], environment: environment, directory: dir.path)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.lines == ["[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "[0, 1, 4, 9, 16]", "49", "[0, 1, 4, 9, 16, 25]", "parallelpython.pp"], "\(r.stdout) \(r.stderr)")
    }
}
