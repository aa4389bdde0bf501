// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Tally",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tally", targets: ["TallyCommand"]),
        .library(name: "Kafka", targets: ["Kafka"]),
        .library(name: "Postgres", targets: ["Postgres"]),
        .library(name: "TallySDK", targets: ["TallySDK", "Events"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.2"),
    ],
    targets: [
        // C interop: system libraries with a thin shim header each.
        .systemLibrary(
            name: "CRdKafka", path: "Sources/CRdKafka", pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]),
        .systemLibrary(
            name: "CLibPQ", path: "Sources/CLibPQ", pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]),
        // glibc's malloc settings.
        .systemLibrary(name: "CMalloc", path: "Sources/CMalloc"),

        // How the process's allocator returns memory, over CMalloc.
        .target(name: "ProcessMemory", dependencies: ["CMalloc"]),

        // Threads of their own for blocking C calls, as Swift executors.
        .target(name: "DedicatedThreads"),

        // Calendar dates as day counts, in integer arithmetic.
        .target(name: "CivilTime"),

        // Typed Swift layers over the C libraries.
        .target(
            name: "Kafka",
            dependencies: [
                "CRdKafka", "DedicatedThreads",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "Postgres",
            dependencies: [
                "CLibPQ", "DedicatedThreads",
                .product(name: "Logging", package: "swift-log"),
            ]),

        // Declarative YAML files with errors naming file, line and field.
        .target(name: "Declarations", dependencies: [.product(name: "Yams", package: "Yams")]),
        // Tenant ids, the tenants file, API key hashes.
        .target(
            name: "Tenancy",
            dependencies: ["Declarations", .product(name: "Yams", package: "Yams"), .product(name: "Crypto", package: "swift-crypto")]),

        // Ingest: the event model, the Swift SDK, the HTTP gateway.
        .target(name: "Events", dependencies: ["CivilTime", "Tenancy"], path: "Sources/Ingest/Events"),
        .target(
            name: "TallySDK", dependencies: ["Events", "Kafka", .product(name: "Logging", package: "swift-log")],
            path: "Sources/Ingest/SDK"),
        .target(
            name: "IngestGateway",
            dependencies: [
                "Events", "TallySDK", "Tenancy", "Kafka",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Ingest/Gateway"),

        // Processors: meters into usage deltas, and the usage processor.
        .target(
            name: "Metering", dependencies: ["Events", "Sink", "Tenancy", "Declarations", .product(name: "Yams", package: "Yams")],
            path: "Sources/Processors/Metering"),
        .target(
            name: "UsageProcessing",
            dependencies: ["Metering", "Events", "Sink", "Kafka", "Tenancy", .product(name: "Logging", package: "swift-log")],
            path: "Sources/Processors/Usage"),

        // The only writer of Postgres: per-tenant schemas, offsets, fenced atomic commits.
        .target(name: "Sink", dependencies: ["Postgres", "Tenancy"]),

        // Throwaway PostgreSQL clusters for tests and the local demo.
        .target(name: "LocalPostgres", dependencies: [.product(name: "Subprocess", package: "swift-subprocess")]),

        // The declarative topic catalogue (`topics.yaml`).
        .target(name: "TopicCatalog", dependencies: ["Kafka", "Declarations", .product(name: "Yams", package: "Yams")]),

        // The `tally` executable: one subcommand per service.
        .executableTarget(
            name: "TallyCommand",
            dependencies: [
                "Kafka", "Postgres", "LocalPostgres", "Sink", "TopicCatalog", "Tenancy", "IngestGateway", "Metering", "UsageProcessing",
                "ProcessMemory", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]),

        // Producer benchmark: the Swift layer against the same loop in C.
        .target(name: "CProducerLoop", dependencies: ["CRdKafka"], path: "Benchmarks/CProducerLoop"),
        .executableTarget(
            name: "ProducerBenchmark",
            dependencies: [
                "Kafka", "CProducerLoop", "DedicatedThreads",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/ProducerBenchmark"),
        // Sink writes against a raw psql COPY of the same rows.
        .executableTarget(
            name: "SinkBenchmark",
            dependencies: [
                "Sink", "Tenancy", "Postgres", "LocalPostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            path: "Benchmarks/SinkBenchmark"),

        // The SDK's runnable example (README).
        .executableTarget(
            name: "EmitUsage",
            dependencies: ["TallySDK", "Events", "Tenancy", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Examples/EmitUsage"),

        // Ingest: the SDK against Python's confluent-kafka, and the gateway under wrk.
        .executableTarget(
            name: "IngestBenchmark",
            dependencies: [
                "TallySDK", "Events", "Tenancy", "Kafka",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            path: "Benchmarks/IngestBenchmark"),

        // The usage processor end to end: throughput, peak RSS, lag.
        .executableTarget(
            name: "ProcessorBenchmark",
            dependencies: [
                "Events", "Tenancy", "Kafka", "Postgres", "LocalPostgres", "Sink",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            path: "Benchmarks/ProcessorBenchmark"),

        .target(
            name: "TestSupport",
            dependencies: ["Kafka", "LocalPostgres", .product(name: "Subprocess", package: "swift-subprocess")],
            path: "Tests/TestSupport"),
        .testTarget(
            name: "IngestTests",
            dependencies: [
                "Events", "TallySDK", "IngestGateway", "Tenancy", "Declarations", "Kafka", "TestSupport", "TallyCommand", "EmitUsage",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "ProcessorTests",
            dependencies: [
                "Metering", "UsageProcessing", "Events", "Sink", "Tenancy", "Declarations", "TallySDK", "Kafka", "Postgres", "LocalPostgres",
                "TestSupport", "TallyCommand", .product(name: "Subprocess", package: "swift-subprocess"),
            ]),
        .testTarget(
            name: "KafkaTests", dependencies: ["Kafka", "TestSupport", "TallyCommand", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "PostgresTests", dependencies: ["Postgres", "LocalPostgres", "TestSupport"]),
        .testTarget(name: "SinkTests", dependencies: ["Sink", "Tenancy", "Postgres", "LocalPostgres", "TestSupport", "TallyCommand"]),
        .testTarget(name: "TallyCommandTests", dependencies: ["TestSupport", "TallyCommand", "ProcessMemory"]),
        .testTarget(name: "TopicCatalogTests", dependencies: ["TopicCatalog", "Declarations", "Kafka", "TestSupport", "TallyCommand"]),
    ]
)
