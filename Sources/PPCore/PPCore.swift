// PPCore: the I/O-free core of ParallelPython.
//
// What lives here: the values and codecs every other module shares, with no effect on
// the world outside the process.
//
// - values: `JSONValue`, `JobArguments`, `JobError`, `JobOutcome`, `FunctionBundle`,
//   `ClusterSecret` (the validated secret, its `ClusterKeys` and key id), `NodeBeacon`,
//   `BroadcastTarget`;
// - codecs and frames: the native protocol (`NodeProtocol`, `NodeMessageDecoder`), the
//   worker frames, Parallel Python's wire format, beacon and probe datagrams, JSON
//   writing and checking;
// - pure computation: SHA-256/SHA-1/MD5 digests, HKDF/scrypt key derivation and
//   constant-time comparison (through OpenSSL's libcrypto, which computes and reads
//   nothing).
//
// What PPCore may do: compute, encode and decode in memory. It may use NIOCore's
// `ByteBuffer` and the codec protocols, Synchronization, and Foundation's JSON coders
// (`JSONEncoder`, `JSONDecoder`, `JSONSerialization`, `Data`), imported `internal`.
//
// What PPCore must not do: read or write files, read the environment, ask the system
// about its network interfaces, host name or machine (`getifaddrs`, `uname`), open
// sockets, start processes, read clocks to make decisions, or draw random bytes. All of
// that is PPRuntime's (secret files, `PP_*` environment settings, interfaces, host
// info, random bytes, the discovery socket), or belongs to the modules that run things
// (PPWorkers, PPNode, ParallelPython). A test of PPCore needs no file, socket or
// process: `swift test --filter PPCoreTests`.

/// This build's version, as beacons, `--version` and the node's counters carry it.
public enum ParallelPythonVersion {
    /// The version string.
    public static let string = "0.1.0"

    /// What `--version` prints for `command`: "ppnode 0.1.0 (protocol 3)".
    public static func text(_ command: String) -> String {
        "\(command) \(Self.string) (protocol \(NodeProtocol.version))"
    }
}
