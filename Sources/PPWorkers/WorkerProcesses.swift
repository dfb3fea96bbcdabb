import Synchronization

import Foundation

/// Every live worker process group of this process, so that nothing is left behind.
///
/// Each worker leads its own process group (see `ChildProcess`), which also holds what
/// its jobs start (unless they leave it with setsid or setpgid). A worker dies with its
/// parent through PR_SET_PDEATHSIG; `killAll()` also ends the processes its jobs
/// started. It runs at `exit()` (registered once with `atexit` when the first worker
/// starts), and commands call it when a signal stops them.
public enum WorkerProcesses {
    private static let groups = Mutex<Set<Int32>>([])
    private static let atexitInstalled: Void = {
        atexit { WorkerProcesses.killAll() }
    }()

    /// Records a new worker (the leader of process group `pid`).
    static func register(_ pid: Int32) {
        _ = Self.atexitInstalled
        Self.groups.withLock { _ = $0.insert(pid) }
    }

    /// Forgets a worker; call before reaping it, so that `killAll` never signals a
    /// group id the system may have reused.
    static func unregister(_ pid: Int32) {
        _ = Self.groups.withLock { $0.remove(pid) }
    }

    /// The number of worker process groups alive (started and not reaped yet).
    public static var count: Int { Self.groups.withLock { $0.count } }

    /// Sends SIGKILL to every live worker's process group.
    ///
    /// Workers stay registered until their pool reaps them. Safe to call from any
    /// thread, at exit, and more than once.
    public static func killAll() {
        Self.groups.withLock { groups in
            for pid in groups { _ = kill(-pid, SIGKILL) }
        }
    }
}
