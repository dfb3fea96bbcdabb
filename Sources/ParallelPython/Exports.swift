// What `import ParallelPython` brings besides the library's own types (JobServer,
// JobHandle, PythonFunction, NodeAddress, JobServerStatistics...): the types of other
// modules that its public API takes or returns, one symbol at a time (as Hummingbird's
// Exports.swift does), so that a program needs no other import.
//
// Not exported, on purpose: the wire and worker protocols (NodeProtocol, WireJob,
// Job, JobResult, WorkerFrames...), NodeBeacon, the JSON writer, digests, keys,
// and PPRuntime (secret files, environment, discovery socket). Commands, tests and
// benchmarks that need them import PPCore or PPRuntime themselves.

// MARK: Jobs: arguments, results, errors
@_exported public import struct PPCore.JobArguments
@_exported public import struct PPCore.JobError
// JobOutcome: in `JobHandle.outcome` and `JobServer.submitBatch`'s completion.
@_exported public import struct PPCore.JobOutcome
@_exported public import enum PPCore.JSONValue
@_exported public import struct PPCore.RawJSON
// FunctionBundle: in `PythonFunction.bundle` and `PythonFunction(bundle:)`.
@_exported public import struct PPCore.FunctionBundle
// Requirements: in `PythonFunction`'s initialisers.
@_exported public import struct PPCore.Requirements
@_exported public import struct PPCore.RequirementsError

// MARK: Nodes: the cluster secret and where probes go
@_exported public import struct PPCore.ClusterSecret
@_exported public import struct PPCore.SecretError
@_exported public import enum PPCore.ParallelPythonVersion
@_exported public import enum PPCore.BroadcastTarget
// NodeVerdict, NodeSighting: in `JobServer.nodes()` (why each node is used or not).
@_exported public import struct PPCore.NodeVerdict
@_exported public import struct PPCore.NodeSighting

// MARK: Statistics of the local pool (`JobServerStatistics.localPool`)
@_exported public import struct PPCore.PoolStatistics
@_exported public import struct PPCore.WorkerStatistics
@_exported public import enum PPCore.ExitStatus
