// swift-tools-version: 6.1
import PackageDescription

/// One set of settings for every target: Swift 6 language mode plus the upcoming
/// features that keep C modules out of public API.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "ParallelPython",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "ParallelPython", targets: ["ParallelPython"]),
        .executable(name: "pprun", targets: ["pprun"]),
        .executable(name: "ppnode", targets: ["ppnode"]),
        .executable(name: "ppnodes", targets: ["ppnodes"]),
        .executable(name: "ppbench", targets: ["ppbench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // MARK: C libraries
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),

        .systemLibrary(
            name: "CDNSSD",
            pkgConfig: "avahi-compat-libdns_sd",
            providers: [.apt(["libavahi-compat-libdnssd-dev"])]
        ),

        // MARK: Starting worker processes (fork + exec with a safe child setup)
        .target(name: "CPPSpawn"),

        // MARK: DNS-SD (register, browse, resolve) over avahi's dns_sd compat library
        .target(
            name: "PPDNSSD",
            dependencies: ["CDNSSD", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            swiftSettings: swiftSettings
        ),

        // MARK: I/O-free core: bundles, hashing, JSON, worker frames, errors
        .target(
            name: "PPCore",
            dependencies: [
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: The runtime around the core: secret files, environment settings,
        // interfaces, host info, random bytes, the discovery socket
        .target(
            name: "PPRuntime",
            dependencies: [
                "COpenSSL",
                "PPCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: TLS 1.3 keyed by the cluster secret (system OpenSSL, memory BIOs)
        .target(
            name: "PPTLS",
            dependencies: [
                "COpenSSL",
                "PPCore",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Python worker processes and the pool that runs them
        .target(
            name: "PPWorkers",
            dependencies: [
                "PPCore",
                "CPPSpawn",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["Python"],
            swiftSettings: swiftSettings
        ),

        // MARK: The node daemon's library
        .target(
            name: "PPNode",
            dependencies: [
                "PPCore",
                "PPDNSSD",
                "PPRuntime",
                "PPTLS",
                "PPWorkers",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Client library
        .target(
            name: "ParallelPython",
            dependencies: [
                "PPCore",
                "PPDNSSD",
                "PPRuntime",
                "PPTLS",
                "PPWorkers",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Options the commands share
        .target(
            name: "PPCommandLine",
            dependencies: [
                "PPCore",
                "PPRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Commands
        .executableTarget(
            name: "pprun",
            dependencies: [
                "ParallelPython",
                "PPCommandLine",
                "PPCore",
                "PPRuntime",
                "PPWorkers",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "ppnode",
            dependencies: [
                "PPNode",
                "PPCommandLine",
                "PPCore",
                "PPRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "ppnodes",
            dependencies: [
                "ParallelPython",
                "PPCommandLine",
                "PPCore",
                "PPDNSSD",
                "PPRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "PPExample",
            dependencies: ["ParallelPython"],
            path: "examples/PPExample",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "ppbench",
            dependencies: [
                "COpenSSL",
                "ParallelPython",
                "PPCore",
                "PPRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/ppbench",
            swiftSettings: swiftSettings
        ),

        // MARK: Tests
        .target(name: "PPTesting", swiftSettings: swiftSettings),
        .testTarget(
            name: "PPCoreTests",
            dependencies: [
                "PPCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PPRuntimeTests",
            dependencies: [
                "PPRuntime",
                "PPCore",
                "PPTesting",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PPTLSTests",
            dependencies: [
                "PPTLS",
                "PPCore",
                "PPTesting",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PPWorkersTests",
            dependencies: ["PPWorkers", "PPCore", "PPTesting"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ParallelPythonTests",
            dependencies: ["ParallelPython", "PPTesting"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PPNodeTests",
            dependencies: [
                "ParallelPython",
                "PPCore",
                "PPNode",
                "PPTLS",
                "PPWorkers",
                "PPTesting",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "NetLabTests",
            dependencies: ["PPTesting"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PPCompatTests",
            dependencies: ["PPTesting"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PPRunTests",
            dependencies: ["PPTesting"],
            swiftSettings: swiftSettings
        ),
    ]
)
