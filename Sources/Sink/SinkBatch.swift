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

/// The absolute state of one usage window (not a delta): committing it twice leaves the same row.
public struct UsageRow: Sendable, Equatable {
    public enum WindowSize: String, Sendable, CaseIterable { case minute, hour, day, month }

    public var tenant: TenantID
    public var meter: String
    public var subject: String
    public var windowSize: WindowSize
    public var windowStart: Date
    /// Group-by values joined into one key; empty without group-by.
    public var groupKey: String
    /// The aggregate as an exact decimal.
    public var value: Decimal
    public var eventCount: Int64
    public var firstEventAt: Date
    public var lastEventAt: Date

    public init(
        tenant: TenantID, meter: String, subject: String, windowSize: WindowSize, windowStart: Date, groupKey: String = "",
        value: Decimal, eventCount: Int64, firstEventAt: Date, lastEventAt: Date
    ) {
        self.tenant = tenant
        self.meter = meter
        self.subject = subject
        self.windowSize = windowSize
        self.windowStart = windowStart
        self.groupKey = groupKey
        self.value = value
        self.eventCount = eventCount
        self.firstEventAt = firstEventAt
        self.lastEventAt = lastEventAt
    }
}

/// Everything one consumed batch produced: result rows for any number of tenants and the
/// positions reached in each partition it read. The Sink applies all of it or none of it.
public struct SinkBatch: Sendable {
    public var consumerGroup: String
    public var positions: [LogPartition: CommittedPosition]
    public var usage: [UsageRow]

    public init(consumerGroup: String, positions: [LogPartition: CommittedPosition], usage: [UsageRow]) {
        self.consumerGroup = consumerGroup
        self.positions = positions
        self.usage = usage
    }
}
