/// A topic and one of its partitions.
public struct TopicPartition: Hashable, Sendable, CustomStringConvertible {
    public var topic: String
    public var partition: Int32

    public init(topic: String, partition: Int32) {
        self.topic = topic
        self.partition = partition
    }

    public var description: String { "\(topic)[\(partition)]" }
}

/// One record header; Kafka allows repeated names and null values.
public struct KafkaHeader: Hashable, Sendable {
    public var name: String
    public var value: [UInt8]?

    public init(name: String, value: [UInt8]?) {
        self.name = name
        self.value = value
    }

    public init(name: String, value: String) {
        self.init(name: name, value: Array(value.utf8))
    }
}

/// A record to produce.
public struct ProducerRecord: Sendable {
    public var topic: String
    /// `nil` lets the partitioner choose from the key (librdkafka's default, murmur2-compatible
    /// with `partitioner=murmur2_random`).
    public var partition: Int32?
    public var key: [UInt8]?
    public var value: [UInt8]?
    public var headers: [KafkaHeader]
    /// Milliseconds since the Unix epoch; `nil` means the time of sending.
    public var timestampMilliseconds: Int64? {
        get { timestamp }
        set { timestamp = newValue }
    }
    /// Stored under another name so that the compiler-made memberwise initializer, which the
    /// public ones call, does not clash with them. (An initializer assigning the properties
    /// itself copies the whole record and destroys the original on return with Swift 6.3:
    /// a retain and a release of every buffer, per record.)
    var timestamp: Int64?
}

extension ProducerRecord {
    public init(
        topic: String, partition: Int32? = nil, key: [UInt8]?, value: [UInt8]?,
        headers: [KafkaHeader] = [], timestampMilliseconds: Int64? = nil
    ) {
        self.init(topic: topic, partition: partition, key: key, value: value, headers: headers, timestamp: timestampMilliseconds)
    }

    public init(topic: String, key: String?, value: String, headers: [KafkaHeader] = [], timestampMilliseconds: Int64? = nil) {
        self.init(
            topic: topic, key: key.map { Array($0.utf8) }, value: Array(value.utf8), headers: headers,
            timestampMilliseconds: timestampMilliseconds)
    }
}

/// The broker's acknowledgement of one produced record.
public struct DeliveryReport: Hashable, Sendable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64

    public init(topic: String, partition: Int32, offset: Int64) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }
}

/// A consumed record.
public struct ConsumerRecord: Sendable, Hashable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: [UInt8]?
    public var value: [UInt8]?
    public var headers: [KafkaHeader]
    /// Milliseconds since the Unix epoch, or `nil` when the record has none.
    public var timestampMilliseconds: Int64?

    public var topicPartition: TopicPartition { TopicPartition(topic: topic, partition: partition) }

    /// The first header value with this name, decoded as UTF-8.
    public func header(_ name: String) -> String? {
        headers.first { $0.name == name }?.value.map { String(decoding: $0, as: UTF8.self) }
    }
}
