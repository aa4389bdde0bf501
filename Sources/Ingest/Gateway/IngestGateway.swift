import Events
import Hummingbird
import Logging
import ServiceLifecycle
import TallySDK
import Tenancy
import UnixSignals

/// The HTTP ingest gateway (`tally ingest`): `POST /v1/events`, `/healthz`, `/readyz` and
/// `/metrics`, producing accepted events through one `EventProducer`.
///
/// Run it as a service: on graceful shutdown it stops accepting connections, finishes the
/// requests in flight, then flushes the producer. SIGHUP reloads the tenants file.
public struct IngestGateway: Sendable {
    public let configuration: GatewayConfiguration
    public let tenants: TenantRegistry
    public let metrics: GatewayMetrics
    private let producer: EventProducer
    private let probe: BrokerProbe
    private let logger: Logger

    /// - Parameters:
    ///   - producer: sends accepted events; the gateway closes it on shutdown.
    ///   - probe: answers `/readyz`.
    public init(
        configuration: GatewayConfiguration, tenants: TenantRegistry, producer: EventProducer, probe: BrokerProbe,
        metrics: GatewayMetrics = GatewayMetrics(), logger: Logger = Logger(label: "tally.ingest")
    ) {
        self.configuration = configuration
        self.tenants = tenants
        self.producer = producer
        self.probe = probe
        self.metrics = metrics
        self.logger = logger
    }

    /// The gateway as a Hummingbird application. `onListening` receives the bound port.
    public func application(onListening: @escaping @Sendable (Int) async -> Void = { _ in }) -> some ApplicationProtocol {
        let handler = IngestHandler(
            configuration: configuration, tenants: tenants, limiter: TenantRateLimiter(), producer: producer, metrics: metrics, logger: logger)
        let router = Router()
        router.post("/v1/events") { request, _ in await handler.handle(request) }
        router.get("/healthz") { _, _ in IngestHandler.json(.ok, ["status": .string("ok")]) }
        router.get("/readyz") { [probe] _, _ in
            let (ready, reason) = await probe.check()
            return IngestHandler.json(ready ? .ok : .serviceUnavailable, ["ready": .bool(ready), "reason": .string(reason)])
        }
        router.get("/metrics") { [metrics] _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
        return Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(configuration.host, port: configuration.port), serverName: "tally-ingest"),
            services: [ProducerShutdown(producer: producer, probe: probe), TenantsReloader(tenants: tenants, logger: logger)],
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? 0) },
            logger: logger)
    }
}

/// Closes the producer after the HTTP server stopped (services shut down in reverse order, so
/// this runs once the requests in flight are answered).
private struct ProducerShutdown: Service {
    let producer: EventProducer
    let probe: BrokerProbe

    func run() async throws {
        try? await gracefulShutdown()
        await producer.close()
        await probe.close()
    }
}

/// Reloads the tenants file on SIGHUP; a bad file is logged and the previous one stays.
private struct TenantsReloader: Service {
    let tenants: TenantRegistry
    let logger: Logger

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            do {
                try tenants.reload()
                logger.notice("reloaded \(tenants.path): \(tenants.directory.tenants.count) tenants")
            } catch {
                logger.error("kept the previous tenants: \(error)")
            }
        }
    }
}
