import ArgumentParser
import Sink
import Tenancy

/// `tally sink …`: administer the Postgres side.
struct SinkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sink", abstract: "Prepare, extend and migrate the Sink's Postgres schemas, and fold its usage log.",
        subcommands: [Initialize.self, AddTenant.self, Migrate.self, Fold.self])

    struct Connection: ParsableArguments {
        @Option(help: "libpq connection string or postgresql:// URL of the Sink database.")
        var postgres: String

        @Option(help: "Seconds a transaction may wait for a lock before failing.")
        var lockTimeout: Int = 10

        func makeStore() -> SinkStore {
            SinkStore(conninfo: postgres, lockTimeout: .seconds(lockTimeout))
        }
    }

    struct Initialize: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "init", abstract: "Create or migrate the control schema `tally`.")
        @OptionGroup var connection: Connection

        func run() async throws {
            let store = connection.makeStore()
            try await store.prepare()
            await store.close()
            emit("control schema ready")
        }
    }

    struct AddTenant: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-tenant", abstract: "Create tenants' schemas, tables and reader roles (what first sight does).")
        @OptionGroup var connection: Connection

        @Argument(help: "Tenant ids: ^[a-z][a-z0-9_]{0,47}$.")
        var tenants: [String]

        func validate() throws {
            for tenant in tenants {
                do { _ = try TenantID(tenant) } catch { throw ValidationError("\(error)") }
            }
        }

        func run() async throws {
            let store = connection.makeStore()
            try await store.prepare()
            for tenant in tenants {
                try await store.ensureTenant(try TenantID(tenant))
                emit("tenant \(tenant) ready")
            }
            await store.close()
        }
    }

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Bring every registered tenant's schema to the latest version.",
            discussion: "Exits 1 when any tenant failed; the others are migrated regardless.")
        @OptionGroup var connection: Connection

        @Option(help: "Tenants migrated at once.")
        var parallelism = 4

        func run() async throws {
            let store = connection.makeStore()
            let failures = try await store.migrateAllTenants(parallelism: parallelism) { done, total, tenant in
                emit("migrated \(done)/\(total) tenants (\(tenant))")
            }
            await store.close()
            for (tenant, error) in failures.sorted(by: { $0.key < $1.key }) { emit("failed \(tenant): \(error)") }
            if !failures.isEmpty { throw ExitCode.failure }
        }
    }

    struct Fold: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fold the usage log into the keyed usage tables now (usage processors do so every second).",
            discussion: "What readers see does not change; a part of the logs another process is folding is left to it.")
        @OptionGroup var connection: Connection

        func run() async throws {
            let store = connection.makeStore()
            let folded = try await store.foldLogs()
            await store.close()
            emit("folded \(folded.usageRowsFolded) usage log rows" + (folded.complete ? "" : "; another process is folding the parts left"))
        }
    }
}
