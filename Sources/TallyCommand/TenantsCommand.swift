import ArgumentParser
import Tenancy

/// `tally tenants`: the tenants file.
struct TenantsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenants",
        abstract: "Check the tenants file and make API keys.",
        subcommands: [Validate.self, NewKey.self])

    struct Validate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check a tenants file; errors name the file, line and field.")

        @Option(help: "Tenants file.")
        var file = "tenants.yaml"

        func run() throws {
            let directory = try TenantDirectory.load(path: file)
            emit("\(file): \(directory.tenants.count) tenants")
        }
    }

    struct NewKey: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "new-key",
            abstract: "Make a new API key: prints the key (give it to the service) and its hash (put it in the tenants file).")

        func run() {
            let key = APIKey.generate()
            emit("key:  \(key)")
            emit("hash: \(APIKeyHash(hashing: key))")
        }
    }
}
