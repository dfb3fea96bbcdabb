// PPRuntime: what PPCore's values need from the machine they run on.
//
// PPCore is I/O-free (see Sources/PPCore/PPCore.swift); this module is the runtime
// around it, used by the node (PPNode), the client library (ParallelPython) and the
// commands:
//
// - `ClusterSecret.load(file:origin:create:)`: finds the secret (a flag, `PP_SECRET`,
//   `PP_SECRET_FILE`, the default file), checks the file's owner and mode, and creates
//   the default file (ppnode only);
// - `randomBytes(_:)`: cryptographically random bytes;
// - environment settings: `BroadcastTarget.fromEnvironment` (`PP_BROADCAST`),
//   `NodeBeacon.discoveryPort(fromEnvironment:)` (`PP_DISCOVERY_PORT`);
// - the machine: `NetworkInterfaces` (getifaddrs), `HostInfo` (uname);
// - `DiscoverySocket`: the one UDP socket implementation of broadcast discovery,
//   shared by ppnode's beacons, the client's listener and ppnodes.
//
// Rules: messages name the problem and its fix, and tests compare them, so change
// them with the tests. Nothing here keeps global state beyond values computed once.
