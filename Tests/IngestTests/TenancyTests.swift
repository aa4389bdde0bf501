import Declarations
import Foundation
import IngestGateway
import Tenancy
import Testing

@Suite struct TenantDirectoryTests {
    @Test func keysMapToTheirTenantAndLimitsFallBackToTheDefaults() throws {
        let acmeKey = APIKey.generate()
        let globexKey = APIKey.generate()
        let directory = try TenantDirectory.parse(
            """
            defaults:
              rate_limit: { events_per_second: 100, burst: 200 }
            tenants:
              - id: acme
                api_keys: ["\(APIKeyHash(hashing: acmeKey))"]
                time_zone: Europe/Berlin
              - id: globex
                api_keys: ["\(APIKeyHash(hashing: globexKey))"]
                rate_limit: { events_per_second: 5, burst: 10 }
            """, file: "tenants.yaml")
        let acme = try TenantID("acme")
        let globex = try TenantID("globex")
        #expect(directory.tenant(forAPIKey: acmeKey) == acme)
        #expect(directory.tenant(forAPIKey: globexKey) == globex)
        #expect(directory.tenant(forAPIKey: acmeKey + "x") == nil)
        #expect(directory.tenant(forAPIKey: "\(APIKeyHash(hashing: acmeKey))") == nil, "a hash is not a key")
        #expect(directory.tenants[acme]?.rateLimit == RateLimit(eventsPerSecond: 100, burst: 200))
        #expect(directory.tenants[globex]?.rateLimit == RateLimit(eventsPerSecond: 5, burst: 10))
        #expect(directory.tenants[acme]?.timeZone.identifier == "Europe/Berlin")
        #expect(directory.tenants[globex]?.timeZone == TimeZone(identifier: "UTC"))
    }

    static let hash = "sha256:" + String(repeating: "ab", count: 32)

    @Test(arguments: [
        ("tenants:\n  - id: Acme\n", 2, "tenants[0].id", "must match"),
        ("tenants:\n  - id: acme\n    api_keys: [tally_plaintext]\n", 3, "tenants[0].api_keys[0]", "store key hashes, never keys"),
        ("tenants:\n  - id: acme\n  - id: acme\n", 3, "tenants[1].id", "already declared on line 2"),
        ("tenants:\n  - id: a\n    api_keys: [\"\(hash)\"]\n  - id: b\n    api_keys: [\"\(hash)\"]\n", 5, "tenants[1].api_keys[0]", "already listed on line 3"),
        ("tenants:\n  - id: acme\n    time_zone: Mars/Olympus\n", 3, "tenants[0].time_zone", "unknown time zone"),
        ("tenants:\n  - id: acme\n    rate_limit: { events_per_second: -1, burst: 5 }\n", 3, "tenants[0].rate_limit.events_per_second", "must be a number"),
        ("tenants:\n  - id: acme\n    plan: gold\n", 3, "tenants[0].plan", "unknown key"),
        ("tenant: []\n", 1, "tenant", "unknown key"),
    ])
    func badTenantsFilesAreRefusedWithLineAndField(yaml: String, line: Int, field: String, reason: String) {
        #expect {
            _ = try TenantDirectory.parse(yaml, file: "tenants.yaml")
        } throws: { error in
            guard let error = error as? DeclarationError else { return false }
            return error.line == line && error.field == field && error.reason.contains(reason)
        }
    }
}

@Suite struct TenantRateLimiterTests {
    @Test func aTenantGetsItsBurstThenWaitsForItsRateWhileOthersAreUnaffected() throws {
        let limiter = TenantRateLimiter()
        let noisy = try TenantID("noisy")
        let quiet = try TenantID("quiet")
        let limit = RateLimit(eventsPerSecond: 10, burst: 100)
        let start = ContinuousClock.now
        #expect(limiter.admit(60, tenant: noisy, limit: limit, now: start) == nil)
        #expect(limiter.admit(40, tenant: noisy, limit: limit, now: start) == nil)
        let wait = try #require(limiter.admit(5, tenant: noisy, limit: limit, now: start))
        #expect(wait == .milliseconds(500), "5 tokens at 10/s")
        #expect(limiter.admit(100, tenant: quiet, limit: limit, now: start) == nil, "another tenant has its own bucket")
        #expect(limiter.admit(5, tenant: noisy, limit: limit, now: start + .milliseconds(500)) == nil, "refilled")
        // A batch larger than the burst passes on a full bucket and leaves a debt.
        let later = start + .seconds(60)
        #expect(limiter.admit(250, tenant: noisy, limit: limit, now: later) == nil)
        #expect(limiter.admit(1, tenant: noisy, limit: limit, now: later + .seconds(10)) != nil, "still paying off 150 events")
        #expect(limiter.admit(1, tenant: noisy, limit: limit, now: later + .seconds(16)) == nil)
    }
}
