import Declarations
import Sink
import Tenancy
import Yams

/// One meter of a tenant: which events it reads, which value, how it aggregates, in which
/// windows, grouped by which `data` fields.
public struct MeterDefinition: Sendable, Equatable {
    public var tenant: TenantID
    /// `^[a-z][a-z0-9_]{0,62}$`; the `meter` column of the usage table.
    public var name: String
    /// The CloudEvents `type` the meter reads.
    public var eventType: String
    public var aggregation: Aggregation
    /// The path of the value in `data`, e.g. `["usage", "tokens"]` for `usage.tokens`; empty
    /// for `count`.
    public var valuePath: [String]
    /// Up to three `data` fields whose values split the windows.
    public var groupBy: [[String]]
    public var windows: [UsageRow.WindowSize]
    /// Where the meter is declared, for messages.
    public var line: Int
}

/// The meters file: every tenant's meters.
///
/// ```yaml
/// meters:
///   - tenant: acme
///     name: tokens
///     event_type: api.request
///     aggregation: sum          # count, sum, min, max, avg, unique_count, latest
///     value: usage.tokens       # a path into `data`; not for count
///     group_by: [model]         # optional, up to 3 fields
///     windows: [hour, day, month]   # optional; default hour and day
/// ```
public struct MeterCatalog: Sendable, Equatable {
    public let meters: [MeterDefinition]
    private let byTenantAndType: [TenantID: [String: [MeterDefinition]]]

    public init(meters: [MeterDefinition]) {
        self.meters = meters
        var index: [TenantID: [String: [MeterDefinition]]] = [:]
        for meter in meters { index[meter.tenant, default: [:]][meter.eventType, default: []].append(meter) }
        byTenantAndType = index
    }

    /// The meters that read events of `type` for `tenant`.
    public func meters(for tenant: TenantID, type: String) -> [MeterDefinition] {
        byTenantAndType[tenant]?[type] ?? []
    }

    public static func load(path: String) throws(DeclarationError) -> MeterCatalog {
        try MetersFileParser(document: try YAMLDocument.load(path: path)).catalog()
    }

    public static func parse(_ text: String, file: String) throws(DeclarationError) -> MeterCatalog {
        try MetersFileParser(document: try YAMLDocument.parse(text, file: file)).catalog()
    }

    public static func == (lhs: MeterCatalog, rhs: MeterCatalog) -> Bool { lhs.meters == rhs.meters }
}

private struct MetersFileParser {
    let document: YAMLDocument

    func catalog() throws(DeclarationError) -> MeterCatalog {
        let mapping = try document.mapping(document.root, field: "", allowedKeys: ["meters"])
        guard let list = mapping["meters"] else { throw document.error(at: document.root, field: "meters", "missing") }
        var meters: [MeterDefinition] = []
        var lines: [String: Int] = [:]
        for (index, node) in try document.sequence(list, field: "meters", of: "meters").enumerated() {
            let meter = try self.meter(node, field: "meters[\(index)]")
            let key = "\(meter.tenant)/\(meter.name)"
            if let line = lines[key] {
                throw document.error(at: node, field: "meters[\(index)].name", "meter \(meter.name) of tenant \(meter.tenant) is already declared on line \(line)")
            }
            lines[key] = meter.line
            meters.append(meter)
        }
        return MeterCatalog(meters: meters)
    }

    private func meter(_ node: Node, field: String) throws(DeclarationError) -> MeterDefinition {
        let mapping = try document.mapping(node, field: field, allowedKeys: ["tenant", "name", "event_type", "aggregation", "value", "group_by", "windows"])
        let tenantText = try document.string(mapping["tenant"], in: node, field: "\(field).tenant")
        let tenant: TenantID
        do { tenant = try TenantID(tenantText) } catch { throw document.error(at: mapping["tenant"], field: "\(field).tenant", "\(error)") }
        let name = try document.string(mapping["name"], in: node, field: "\(field).name")
        guard Self.isMeterName(name) else { throw document.error(at: mapping["name"], field: "\(field).name", "must match ^[a-z][a-z0-9_]{0,62}$") }
        let eventType = try document.string(mapping["event_type"], in: node, field: "\(field).event_type")
        guard !eventType.isEmpty else { throw document.error(at: mapping["event_type"], field: "\(field).event_type", "must not be empty") }
        let aggregationText = try document.string(mapping["aggregation"], in: node, field: "\(field).aggregation")
        guard let aggregation = Aggregation(rawValue: aggregationText) else {
            throw document.error(
                at: mapping["aggregation"], field: "\(field).aggregation",
                "must be one of \(Aggregation.allCases.map(\.rawValue).joined(separator: ", ")), got \(aggregationText.debugDescription)")
        }
        var valuePath: [String] = []
        if let valueNode = mapping["value"] {
            valuePath = try path(try document.string(valueNode, in: node, field: "\(field).value"), node: valueNode, field: "\(field).value")
        }
        if aggregation == .count, !valuePath.isEmpty {
            throw document.error(at: mapping["value"], field: "\(field).value", "a count meter reads no value; remove `value`")
        }
        if aggregation != .count, valuePath.isEmpty {
            throw document.error(at: node, field: "\(field).value", "missing: a \(aggregation.rawValue) meter needs the path of its value in data")
        }
        var groupBy: [[String]] = []
        if let groupNode = mapping["group_by"] {
            let fields = try document.sequence(groupNode, field: "\(field).group_by", of: "data fields")
            guard fields.count <= 3 else { throw document.error(at: groupNode, field: "\(field).group_by", "at most 3 fields, got \(fields.count)") }
            for (index, fieldNode) in fields.enumerated() {
                let text = try document.string(fieldNode, in: groupNode, field: "\(field).group_by[\(index)]")
                groupBy.append(try path(text, node: fieldNode, field: "\(field).group_by[\(index)]"))
            }
        }
        var windows: [UsageRow.WindowSize] = [.hour, .day]
        if let windowsNode = mapping["windows"] {
            windows = []
            for (index, windowNode) in try document.sequence(windowsNode, field: "\(field).windows", of: "windows").enumerated() {
                let text = try document.string(windowNode, in: windowsNode, field: "\(field).windows[\(index)]")
                guard let window = UsageRow.WindowSize(rawValue: text), !windows.contains(window) else {
                    throw document.error(at: windowNode, field: "\(field).windows[\(index)]", "must be one of minute, hour, day, month, each once")
                }
                windows.append(window)
            }
            guard !windows.isEmpty else { throw document.error(at: windowsNode, field: "\(field).windows", "name at least one window") }
        }
        return MeterDefinition(
            tenant: tenant, name: name, eventType: eventType, aggregation: aggregation, valuePath: valuePath, groupBy: groupBy, windows: windows,
            line: node.mark?.line ?? 1)
    }

    /// `usage.tokens` → ["usage", "tokens"].
    private func path(_ text: String, node: Node, field: String) throws(DeclarationError) -> [String] {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard !parts.isEmpty, parts.allSatisfy({ !$0.isEmpty }) else {
            throw document.error(at: node, field: field, "must be a dotted path of data fields like usage.tokens, got \(text.debugDescription)")
        }
        return parts
    }

    static func isMeterName(_ name: String) -> Bool {
        guard let first = name.utf8.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first), name.utf8.count <= 63 else { return false }
        return name.utf8.allSatisfy { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "_") }
    }
}
