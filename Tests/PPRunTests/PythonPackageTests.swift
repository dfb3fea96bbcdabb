import Foundation
import PPTesting
import Testing

/// The Python package (`python/parallelpython`) against the real engine (`pprun
/// engine`) and real workers: its own unittest suite, which compares the Executor with
/// concurrent.futures.ProcessPoolExecutor on the same calls.
@Suite("Python package on the engine")
struct PythonPackageTests {
    @Test func executorSuitePasses() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let r = try runProcess(
            "/usr/bin/env",
            ["python3", "-m", "unittest", "discover", "-s", root + "/python/tests", "-v"],
            environment: ["PP_ENGINE": builtCommand("pprun"), "PP_BROADCAST": "127.255.255.255", "PP_DNSSD": "off"],
            directory: root
        )
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("OK"), "\(r.stderr)")
    }
}
