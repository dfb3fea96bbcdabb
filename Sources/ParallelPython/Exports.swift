// The core types (JobError, JobOutcome, JSONValue, RawJSON, JobArguments,
// FunctionBundle) are part of this library's API: importing ParallelPython is enough.
@_exported public import PPCore
@_exported public import PPWorkers
