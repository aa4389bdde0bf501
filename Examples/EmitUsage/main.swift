// A Swift service reporting usage to Tally through the SDK: sends one event and prints where
// Kafka stored it. Run against `tally broker`:
//
//   swift run EmitUsage --bootstrap "$(cat .tally/bootstrap.servers)" --tenant acme --subject customer_42 --tokens 1200
import ArgumentParser
import Events
import Foundation
import TallySDK
import Tenancy

@main
struct EmitUsage: AsyncParsableCommand {
    @Option(help: "Kafka bootstrap servers.")
    var bootstrap: String

    @Option(help: "Tenant id.")
    var tenant: String

    @Option(help: "The tenant's customer being metered.")
    var subject: String

    @Option(help: "Tokens used, the measured value.")
    var tokens: Int64

    func run() async throws {
        let producer = try EventProducer(configuration: EventProducerConfiguration(bootstrapServers: bootstrap))
        let event = UsageEvent(
            id: UUID().uuidString, source: "/examples/emit-usage", type: "api.request", subject: subject, time: .now(),
            tenant: try TenantID(tenant), data: ["tokens": .integer(tokens)])
        do {
            let acknowledgement = try await producer.send(event)
            print("stored event \(event.id) at partition \(acknowledgement.partition), offset \(acknowledgement.offset)")
        } catch .invalid(let problems) {
            print("invalid event: \(problems.map(\.description).joined(separator: "; "))")
        } catch .queueFull {
            print("the producer queue is full; try again later")
        } catch .deliveryFailed(let cause) {
            print("Kafka did not acknowledge the event: \(cause)")
        }
        await producer.close()
    }
}
