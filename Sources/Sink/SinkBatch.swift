import Foundation
import Tenancy

/// A partition of a log topic, as the Sink records offsets for it.
public struct LogPartition: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var topic: String
    public var partition: Int32

    public init(topic: String, partition: Int32) {
        self.topic = topic
        self.partition = partition
    }

    public var description: String { "\(topic)[\(partition)]" }
    public static func < (lhs: LogPartition, rhs: LogPartition) -> Bool {
        (lhs.topic, lhs.partition) < (rhs.topic, rhs.partition)
    }
}

/// Where a processor may start on a partition it was just assigned.
public struct PartitionOwnership: Sendable, Equatable {
    /// The owner epoch every commit for this partition must carry.
    public var epoch: Int64
    /// The next offset to read, or nil when nothing was committed yet.
    public var nextOffset: Int64?

    public init(epoch: Int64, nextOffset: Int64?) {
        self.epoch = epoch
        self.nextOffset = nextOffset
    }
}

/// How far a batch consumed one partition, under which ownership.
public struct CommittedPosition: Sendable, Equatable {
    public var nextOffset: Int64
    public var epoch: Int64

    public init(nextOffset: Int64, epoch: Int64) {
        self.nextOffset = nextOffset
        self.epoch = epoch
    }
}

/// How a meter folds values into a window. Every kind merges: a window's state after two
/// batches equals its state after one batch holding both.
public enum Aggregation: String, Sendable, CaseIterable {
    /// Number of events.
    case count
    case sum, min, max, avg
    /// Number of distinct values.
    case uniqueCount = "unique_count"
    /// The value of the event with the latest time (the later one in the log on a tie).
    case latest
}

/// What one batch adds to one usage window: a mergeable delta, folded into the stored window
/// by its `aggregation`.
public struct UsageRow: Sendable, Equatable {
    public enum WindowSize: String, Sendable, CaseIterable { case minute, hour, day, month }

    public var tenant: TenantID
    public var meter: String
    public var subject: String
    public var windowSize: WindowSize
    public var windowStart: Date
    /// Group-by values joined into one key; empty without group-by.
    public var groupKey: String
    public var aggregation: Aggregation
    /// The delta's own aggregate: its count, sum, min, max, latest value or (for `avg`) sum;
    /// for `unique_count`, ignored: the Sink counts the new ones of `distinctValues`.
    public var value: UsageAmount
    /// The sum of the delta's values, from which averages are computed.
    public var total: UsageAmount
    /// Events in the delta.
    public var eventCount: Int64
    public var firstEventAt: Date
    public var lastEventAt: Date
    /// For `unique_count`: the distinct values (as canonical text) the delta saw.
    public var distinctValues: Set<String>

    public init(
        tenant: TenantID, meter: String, subject: String, windowSize: WindowSize, windowStart: Date, groupKey: String = "",
        aggregation: Aggregation = .sum, value: UsageAmount, total: UsageAmount = 0, eventCount: Int64, firstEventAt: Date, lastEventAt: Date,
        distinctValues: Set<String> = []
    ) {
        self.tenant = tenant
        self.meter = meter
        self.subject = subject
        self.windowSize = windowSize
        self.windowStart = windowStart
        self.groupKey = groupKey
        self.aggregation = aggregation
        self.value = value
        self.total = total
        self.eventCount = eventCount
        self.firstEventAt = firstEventAt
        self.lastEventAt = lastEventAt
        self.distinctValues = distinctValues
    }
}

/// An event a processor counted, identified for deduplication by `(tenant, source, id)`: the
/// Sink applies its usage only if that identity was not recorded before.
public struct CountedEvent: Sendable, Equatable {
    public var tenant: TenantID
    public var source: String
    public var id: String
    public var time: Date
    /// What this event adds to usage windows (one per meter and window size).
    public var usage: [UsageRow]
    /// The partition the event was read from. When the batch holds a position of it, the
    /// event is checked against that partition's dedupe state, kept in memory for as long as
    /// commits carry that position's epoch; otherwise against its tenant's rows, read from
    /// Postgres for this commit alone.
    public var partition: LogPartition?

    public init(tenant: TenantID, source: String, id: String, time: Date, usage: [UsageRow], partition: LogPartition? = nil) {
        self.tenant = tenant
        self.source = source
        self.id = id
        self.time = time
        self.usage = usage
        self.partition = partition
    }
}

/// Something a processor could not count, kept in the tenant's `rejections` table.
public struct RejectedInput: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// Older than the grace period; the event went to the dead-letter topic.
        case late
        /// Not a valid event; the record went to the dead-letter topic.
        case invalid
        /// One meter could not use the event (missing field, non-numeric value); the event
        /// was still counted by the other meters.
        case meter
    }

    public var tenant: TenantID
    public var kind: Kind
    public var meter: String
    public var source: String
    public var eventID: String
    /// The event's time, or the record's timestamp when the event could not be read.
    public var time: Date
    public var partition: LogPartition
    public var offset: Int64
    public var reason: String

    public init(
        tenant: TenantID, kind: Kind, meter: String = "", source: String = "", eventID: String = "", time: Date, partition: LogPartition,
        offset: Int64, reason: String
    ) {
        self.tenant = tenant
        self.kind = kind
        self.meter = meter
        self.source = source
        self.eventID = eventID
        self.time = time
        self.partition = partition
        self.offset = offset
        self.reason = reason
    }
}

/// Everything one consumed batch produced, for any number of tenants, and the positions it
/// reached in each partition it read. The Sink applies all of it or none of it.
public struct SinkBatch: Sendable {
    public var consumerGroup: String
    public var positions: [LogPartition: CommittedPosition]
    /// Usage deltas that need no deduplication.
    public var usage: [UsageRow]
    /// Counted events: each adds its usage once per `(tenant, source, id)`, ever.
    public var events: [CountedEvent]
    public var rejections: [RejectedInput]

    public init(
        consumerGroup: String, positions: [LogPartition: CommittedPosition], usage: [UsageRow] = [], events: [CountedEvent] = [],
        rejections: [RejectedInput] = []
    ) {
        self.consumerGroup = consumerGroup
        self.positions = positions
        self.usage = usage
        self.events = events
        self.rejections = rejections
    }
}
