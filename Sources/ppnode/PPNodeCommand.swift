import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals
import NIOCore
import PPCommandLine
import PPCore
import PPNode
import PPRuntime

/// `ppnode`: the daemon that runs jobs for clients of its cluster.
@main
struct PPNodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ppnode",
        abstract: "Run Python jobs for ParallelPython clients on this machine.",
        discussion: """
            Start it and forget it: with no configuration it listens on port 7340, runs \
            one worker per core, and uses the secret file ~/.config/ppnode/secret \
            (created, random, mode 0600, when missing). Copy that file to the clients. \
            It accepts clients and advertises itself once a worker is ready.

            Each setting comes from, in order: a flag, an environment variable, the \
            config file (--config, $PP_CONFIG, else /etc/ppnode/ppnode.conf when it \
            exists), the default. The secret: --secret-file, then $PP_SECRET, then \
            $PP_SECRET_FILE (which must exist), then the default file.

            Exit status 2: bad configuration, an unusable secret, a port that cannot \
            be bound, or no worker that can start; the message names the fix.

            SIGTERM, SIGINT or SIGHUP stops it gracefully: it stops accepting, tells \
            clients, lets running jobs finish (--drain-timeout), and hands queued jobs \
            back (under systemd, Restart= starts it again with the new configuration).

            `ppnode secret` says where the secret is and copies it to other machines. \
            Shell completions: ppnode --generate-completion-script bash (or zsh, fish).

            Examples:
              ppnode
              ppnode --port 7341 --workers 8 --secret-file /etc/ppnode/secret
              ppnode --config /etc/ppnode/ppnode.conf --log-level debug
              ppnode secret --show | ssh other-host ppnode secret --install -
              PP_SECRET=$(cat shared-secret) ppnode --log-level debug
            """,
        version: ParallelPythonVersion.text("ppnode"),
        subcommands: [SecretCommand.self]
    )

    @Option(help: ArgumentHelp("Config file of `key = value` lines.", valueName: "PATH"))
    var config: String?

    @Option(help: ArgumentHelp("Address to listen on (env PP_HOST; default 0.0.0.0).", valueName: "ADDRESS"))
    var host: String?

    @Option(help: ArgumentHelp("TCP port of the native protocol (env PP_PORT; default 7340).", valueName: "PORT"))
    var port: Int?

    @Option(help: ArgumentHelp("Worker processes, 0 to 4096; 0 is a standby node that runs no jobs (env PP_WORKERS; default: the usable cores).", valueName: "N"))
    var workers: Int?

    @Option(help: ArgumentHelp("Python interpreter for workers (env PP_PYTHON; default python3).", valueName: "PATH"))
    var python: String?

    @OptionGroup var secretOptions: SecretOptions

    @Option(help: ArgumentHelp("Name shown to clients (env PP_NODE_NAME; default: host name).", valueName: "NAME"))
    var name: String?

    @Option(name: .customLong("max-frame"), help: ArgumentHelp("Largest frame accepted: 64KiB to 1GiB, bytes or with a KiB/MiB/GiB suffix (env PP_MAX_FRAME; default 64MiB).", valueName: "BYTES"))
    var maxFrame: String?

    @Option(name: .customLong("cache-bytes"), help: ArgumentHelp("Function bundle cache size, and that of the large-argument cache, bytes or with a KiB/MiB/GiB suffix (env PP_CACHE_BYTES; default 256MiB).", valueName: "BYTES"))
    var cacheBytes: String?

    @Option(name: .customLong("handshake-timeout"), help: ArgumentHelp("Seconds a peer has to authenticate (default 5).", valueName: "SECONDS"))
    var handshakeTimeout: Double?

    @Option(name: .customLong("heartbeat-timeout"), help: ArgumentHelp("Seconds of client silence before it counts as dead (default 3).", valueName: "SECONDS"))
    var heartbeatTimeout: Double?

    @Option(name: .customLong("drain-timeout"), help: ArgumentHelp("Seconds running jobs get on shutdown (default 10).", valueName: "SECONDS"))
    var drainTimeout: Double?

    @Option(name: .customLong("discovery-port"), help: ArgumentHelp("UDP port of broadcast beacons and probes (env PP_DISCOVERY_PORT; default 7340).", valueName: "PORT"))
    var discoveryPort: Int?

    @Option(name: .customLong("beacon-interval"), help: ArgumentHelp("Seconds between beacons (env PP_BEACON_INTERVAL; default 2). ", valueName: "SECONDS"))
    var beaconInterval: Double?

    @Option(help: ArgumentHelp("Where beacons go: an IPv4 broadcast address, an interface name (its broadcast address), or off (env PP_BROADCAST; default 255.255.255.255).", valueName: "ADDRESS|IFACE|off"))
    var broadcast: String?

    @Flag(name: .customLong("no-dnssd"), help: "Do not register with DNS-SD (env PP_DNSSD=off; default on when avahi-daemon runs).")
    var noDNSSD = false

    @Option(name: .customLong("pp-port"), help: ArgumentHelp("Open the Parallel Python (ppft) compatible listener on this TCP port, also the UDP port of its autodiscovery (env PP_PP_PORT; ppft's port is 60000; 0 picks one). Off by default: ppft's protocol is not encrypted.", valueName: "PORT"))
    var ppPort: Int?

    @Flag(name: .customLong("no-pp"), help: "Keep the Parallel Python compatible listener closed (the default; overrides PP_PP_PORT and the config file).")
    var noPP = false

    @Option(name: .customLong("pp-version"), help: ArgumentHelp("Version string announced to ppft clients; they require their own (default 1.7.8).", valueName: "VERSION"))
    var ppVersion: String?

    @Flag(name: .customLong("pp-allow-default-secret"), help: "Accept ppft's published default secret on the pp listener (with a warning). Refused otherwise.")
    var ppAllowDefaultSecret = false

    @Option(name: .customLong("client-weights"), help: ArgumentHelp("Fair-share weights of clients by IP address, such as 10.0.0.5=2,10.0.0.7=0.5: a client of weight 2 gets twice the worker time of one of weight 1, the default (env PP_CLIENT_WEIGHTS).", valueName: "ADDRESS=W,..."))
    var clientWeights: String?

    @Option(name: .customLong("log-level"), help: ArgumentHelp("trace, debug, info, notice, warning, error (env PP_LOG_LEVEL; default info).", valueName: "LEVEL"))
    var logLevel: String?

    func run() async throws {
        let settings: Settings
        do {
            settings = try Settings(command: self)
        } catch {
            throw Self.exit(error)
        }
        let logLevel = settings.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        let logger = Logger(label: "ppnode")
        let loaded: (secret: ClusterSecret, created: Bool)
        do {
            loaded = try ClusterSecret.load(file: settings.secretFile, origin: settings.secretFileOrigin, create: true)
        } catch {
            logger.critical("no usable secret", metadata: [LogKey.error: "\(error)"])
            throw Self.exit(error)
        }
        var configuration = NodeConfiguration(secret: loaded.secret, name: ProcessInfo.processInfo.hostName, logger: logger)
        for set in settings.node { set(&configuration) }

        let node = try NodeServer(configuration: configuration)
        let ready: @Sendable (SocketAddress) -> Void = { address in
            let addresses = ["0.0.0.0", "::"].contains(address.ipAddress ?? "") ? NetworkInterfaces.addresses.map { "\($0):\(address.port!)" } : [PeerText.address(address)]
            // Before the ready line: whoever waits for "ready" has seen it.
            if loaded.created {
                logger.notice(
                    "new cluster secret in \(loaded.secret.origin) (key id \(loaded.secret.keyID)); every client and node of this cluster needs it: run `ppnode secret --show | ssh OTHER-HOST ppnode secret --install -`, or copy the file there (mode 0600)"
                )
            }
            logger.info(
                "ppnode ready; clients connect to \(addresses.joined(separator: " or "))",
                metadata: [
                    LogKey.address: "\(PeerText.address(address))",
                    LogKey.nodeID: "\(node.nodeID)",
                    LogKey.nodeName: "\(node.configuration.name)",
                    LogKey.workers: "\(node.workers)",
                    LogKey.secretFile: "\(loaded.secret.origin)\(loaded.created ? " (created now)" : "")",
                    LogKey.secretKeyID: "\(loaded.secret.keyID)",
                    LogKey.protocolVersion: "\(NodeProtocol.version)",
                ]
            )
        }
        // SIGTERM, SIGINT and SIGHUP start a graceful shutdown: the node drains (window 0
        // and GOODBYE to clients, running jobs finish within --drain-timeout), then closes.
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: NodeService(node: node, ready: ready))],
                gracefulShutdownSignals: [.sigterm, .sigint, .sighup],
                logger: logger
            )
        )
        do {
            try await group.run()
        } catch {
            // start() has stopped the workers and closed everything it opened.
            logger.critical("cannot start", metadata: [LogKey.error: "\(error)"])
            throw Self.exit(error)
        }
    }

    /// Prints `ppnode: ERROR` and gives the exit status of a node that cannot run (2).
    static func exit(_ error: any Error) -> ExitCode {
        FileHandle.standardError.write(Data("ppnode: \(error)\n".utf8))
        return ExitCode(2)
    }
}

/// The node in ppnode's `ServiceGroup`, with the line that says it is ready.
struct NodeService: Service {
    let node: NodeServer
    let ready: @Sendable (SocketAddress) -> Void

    func run() async throws {
        try await self.node.run(ready: self.ready)
    }
}
