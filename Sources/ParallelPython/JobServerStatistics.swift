public import PPCore

/// Jobs and time of one executor (`"local"` or a node).
public struct ExecutorStatistics: Sendable {
    /// The executor's name.
    public var name: String
    /// Jobs it ended (values and Python errors alike).
    public var jobs: Int
    /// Total time its functions ran.
    public var totalTime: Duration

    /// Adds another count of the same executor.
    mutating func add(_ other: ExecutorStatistics) {
        self.jobs += other.jobs
        self.totalTime += other.totalTime
    }
}

/// A job server's counters: the numbers behind Parallel Python's `print_stats`.
public struct JobServerStatistics: Sendable {
    /// Jobs waiting in the scheduler for an executor with room.
    public var queued: Int
    /// One row per executor that ran jobs.
    public var executors: [ExecutorStatistics]
    /// Time since the server was created.
    public var elapsed: Duration
    /// The local pool's counters, per worker.
    public var localPool: PoolStatistics

    /// All jobs ended so far.
    public var totalJobs: Int { self.executors.reduce(0) { $0 + $1.jobs } }

    /// The table, in the layout of pp's `print_stats`, followed by local workers.
    public var table: String {
        var lines = ["Job execution statistics:", " job count | % of all jobs | job time sum | time per job | job server"]
        let total = max(self.totalJobs, 1)
        for e in self.executors {
            let share = 100.0 * Double(e.jobs) / Double(total)
            let sum = e.totalTime / .seconds(1)
            let mean = e.jobs > 0 ? sum / Double(e.jobs) : 0
            lines.append(
                "\(pad(String(e.jobs), 10)) | \(pad(fixed(share, 2), 13)) | \(pad(fixed(sum, 4), 12)) | \(pad(fixed(mean, 6), 12)) | \(e.name)"
            )
        }
        lines.append("Time elapsed since server creation \(fixed(self.elapsed / .seconds(1), 4))")
        let pool = self.localPool
        if !pool.workers.isEmpty {
            lines.append("Local workers (\(pool.liveWorkers) running, python \(pool.pythonVersion ?? "?")):")
            lines.append("    worker |    pid | job count | busy time | state")
            for w in pool.workers {
                let state = w.exit.map { "ended: \($0)" } ?? "running"
                lines.append(
                    "\(pad("local/\(w.index)", 10)) | \(pad(String(w.pid), 6)) | \(pad(String(w.jobsDone), 9)) | \(pad(fixed(w.busyTime / .seconds(1), 4), 9)) | \(state)"
                )
            }
        }
        return lines.joined(separator: "\n")
    }
}

private func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
}

private func fixed(_ v: Double, _ digits: Int) -> String {
    let p = (0..<digits).reduce(1.0) { p, _ in p * 10 }
    let scaled = (v * p).rounded()
    let whole = Int(scaled / p)
    let frac = String(Int(abs(scaled.truncatingRemainder(dividingBy: p))))
    return digits == 0 ? String(whole) : "\(whole)." + String(repeating: "0", count: digits - frac.count) + frac
}
