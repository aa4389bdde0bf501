import Declarations
import Foundation
import Yams

/// How fast a tenant may send events through the gateway, as a token bucket: `burst` events at
/// once, refilled at `eventsPerSecond`.
public struct RateLimit: Sendable, Equatable {
    public var eventsPerSecond: Double
    public var burst: Double

    public init(eventsPerSecond: Double, burst: Double) {
        self.eventsPerSecond = eventsPerSecond
        self.burst = burst
    }

    /// The limit when the tenants file sets none.
    public static let standard = RateLimit(eventsPerSecond: 50_000, burst: 100_000)
}

/// One tenant's entry in the tenants file.
public struct TenantSettings: Sendable, Equatable {
    public var id: TenantID
    public var apiKeys: [APIKeyHash]
    public var rateLimit: RateLimit
    /// The zone of the tenant's day and month windows.
    public var timeZone: TimeZone
}

/// The tenants file: who the tenants are, their API key hashes, rate limits and time zones.
///
/// ```yaml
/// defaults:
///   rate_limit: { events_per_second: 50000, burst: 100000 }
/// tenants:
///   - id: acme
///     api_keys: ["sha256:…"]          # from `tally tenants new-key`
///     rate_limit: { events_per_second: 1000, burst: 5000 }
///     time_zone: Europe/Berlin
/// ```
public struct TenantDirectory: Sendable {
    public let tenants: [TenantID: TenantSettings]
    private let keyOwners: [APIKeyHash: TenantID]

    public init(tenants: [TenantSettings]) {
        self.tenants = Dictionary(tenants.map { ($0.id, $0) }) { first, _ in first }
        keyOwners = Dictionary(tenants.flatMap { tenant in tenant.apiKeys.map { ($0, tenant.id) } }) { first, _ in first }
    }

    /// The tenant a presented API key belongs to, if any.
    public func tenant(forAPIKey key: String) -> TenantID? {
        keyOwners[APIKeyHash(hashing: key)]
    }

    /// Reads and validates a tenants file.
    public static func load(path: String) throws(DeclarationError) -> TenantDirectory {
        try TenantsFileParser(document: try YAMLDocument.load(path: path)).directory()
    }

    /// Parses and validates tenants YAML; `file` names the source in errors.
    public static func parse(_ text: String, file: String) throws(DeclarationError) -> TenantDirectory {
        try TenantsFileParser(document: try YAMLDocument.parse(text, file: file)).directory()
    }
}

private struct TenantsFileParser {
    let document: YAMLDocument

    func directory() throws(DeclarationError) -> TenantDirectory {
        let root = document.root
        let mapping = try document.mapping(root, field: "", allowedKeys: ["defaults", "tenants"])
        var defaultLimit = RateLimit.standard
        if let defaults = mapping["defaults"] {
            let defaultsMapping = try document.mapping(defaults, field: "defaults", allowedKeys: ["rate_limit"])
            if let limit = defaultsMapping["rate_limit"] { defaultLimit = try rateLimit(limit, field: "defaults.rate_limit") }
        }
        guard let list = mapping["tenants"] else { throw document.error(at: root, field: "tenants", "missing") }
        var tenants: [TenantSettings] = []
        var tenantLines: [TenantID: Int] = [:]
        var keyLines: [APIKeyHash: Int] = [:]
        for (index, node) in try document.sequence(list, field: "tenants", of: "tenants").enumerated() {
            let field = "tenants[\(index)]"
            let tenant = try self.tenant(node, field: field, defaultLimit: defaultLimit)
            if let line = tenantLines[tenant.id] {
                throw document.error(at: node, field: "\(field).id", "tenant \(tenant.id) is already declared on line \(line)")
            }
            tenantLines[tenant.id] = node.mark?.line ?? 1
            for (keyIndex, key) in tenant.apiKeys.enumerated() {
                let keyNode = node.mapping?["api_keys"]?.sequence?[keyIndex]
                if let line = keyLines[key] {
                    throw document.error(at: keyNode, field: "\(field).api_keys[\(keyIndex)]", "this key hash is already listed on line \(line)")
                }
                keyLines[key] = keyNode?.mark?.line ?? 1
            }
            tenants.append(tenant)
        }
        return TenantDirectory(tenants: tenants)
    }

    private func tenant(_ node: Node, field: String, defaultLimit: RateLimit) throws(DeclarationError) -> TenantSettings {
        let mapping = try document.mapping(node, field: field, allowedKeys: ["id", "api_keys", "rate_limit", "time_zone"])
        let idText = try document.string(mapping["id"], in: node, field: "\(field).id")
        let id: TenantID
        do { id = try TenantID(idText) } catch { throw document.error(at: mapping["id"], field: "\(field).id", "\(error)") }
        var keys: [APIKeyHash] = []
        if let keyList = mapping["api_keys"] {
            for (index, keyNode) in try document.sequence(keyList, field: "\(field).api_keys", of: "key hashes").enumerated() {
                let text = try document.string(keyNode, in: keyList, field: "\(field).api_keys[\(index)]")
                guard let hash = APIKeyHash(parsing: text) else {
                    throw document.error(
                        at: keyNode, field: "\(field).api_keys[\(index)]",
                        "expected sha256:<64 lowercase hex digits> (store key hashes, never keys; `tally tenants new-key` prints both)")
                }
                keys.append(hash)
            }
        }
        var timeZone = TimeZone(identifier: "UTC")!
        if let zoneNode = mapping["time_zone"] {
            let name = try document.string(zoneNode, in: node, field: "\(field).time_zone")
            guard let zone = TimeZone(identifier: name) else {
                throw document.error(at: zoneNode, field: "\(field).time_zone", "unknown time zone \(name.debugDescription); use an IANA name like Europe/Berlin")
            }
            timeZone = zone
        }
        let limit = try mapping["rate_limit"].map { node throws(DeclarationError) in try rateLimit(node, field: "\(field).rate_limit") } ?? defaultLimit
        return TenantSettings(id: id, apiKeys: keys, rateLimit: limit, timeZone: timeZone)
    }

    private func rateLimit(_ node: Node, field: String) throws(DeclarationError) -> RateLimit {
        let mapping = try document.mapping(node, field: field, allowedKeys: ["events_per_second", "burst"])
        let rate = try document.number(mapping["events_per_second"], in: node, field: "\(field).events_per_second", range: 0.001...10_000_000)
        let burst = try document.number(mapping["burst"], in: node, field: "\(field).burst", range: 1...100_000_000)
        return RateLimit(eventsPerSecond: rate, burst: burst)
    }
}
