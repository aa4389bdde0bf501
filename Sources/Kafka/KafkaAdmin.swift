import CRdKafka
import DedicatedThreads
import Foundation
import Logging

/// A topic as it should exist.
public struct TopicSpecification: Sendable, Equatable {
    public var name: String
    public var partitions: Int32
    public var replicationFactor: Int16
    /// Topic configs such as `retention.ms` and `cleanup.policy`.
    public var configs: [String: String]

    public init(name: String, partitions: Int32, replicationFactor: Int16, configs: [String: String] = [:]) {
        self.name = name
        self.partitions = partitions
        self.replicationFactor = replicationFactor
        self.configs = configs
    }
}

/// A partition as the cluster reports it.
public struct PartitionDescription: Sendable, Equatable {
    public var id: Int32
    public var leader: Int32
    public var replicas: [Int32]
    public var inSyncReplicas: [Int32]
}

/// A topic as the cluster reports it.
public struct TopicDescription: Sendable, Equatable {
    public var name: String
    public var partitions: [PartitionDescription]

    /// The replica count of the first partition (Kafka keeps them equal).
    public var replicationFactor: Int { partitions.first?.replicas.count ?? 0 }
}

/// Cluster administration: topics, metadata, offsets.
///
/// Runs on a thread of its own, since every librdkafka call behind it blocks.
public actor KafkaAdmin {
    private let executor: DedicatedThreadExecutor
    private let handle: NativeHandle
    private let context: ClientContext
    private var isClosed = false

    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    public init(configuration: KafkaConfiguration, logger: Logger = Logger(label: "tally.kafka.admin")) throws(KafkaError) {
        let context = ClientContext(logger: logger)
        let handle = try makeNativeClient(type: RD_KAFKA_PRODUCER, configuration: configuration, context: context, logsOnMainQueue: false)
        self.context = context
        self.handle = NativeHandle(handle)
        self.executor = DedicatedThreadExecutor(name: "kafka-admin")
    }

    deinit {
        if !isClosed {
            // Destroying a client blocks until its threads stop: not on whatever thread,
            // perhaps a pool thread, dropped the last reference.
            let (handle, context) = (handle, context)
            Thread.detachNewThread {
                rd_kafka_destroy(handle.pointer)
                withExtendedLifetime(context) {}
            }
        }
        executor.shutdown()
    }

    /// Every topic of the cluster (internal ones excluded), sorted by name.
    public func topics(timeout: Duration = .seconds(10)) throws(KafkaError) -> [TopicDescription] {
        try checkOpen()
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let code = rd_kafka_metadata(handle.pointer, 1, nil, &metadata, milliseconds(timeout))
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else { throw KafkaError(code: code, context: "read cluster metadata") }
        defer { rd_kafka_metadata_destroy(metadata) }
        var topics: [TopicDescription] = []
        for topic in UnsafeBufferPointer(start: metadata.pointee.topics, count: Int(metadata.pointee.topic_cnt)) {
            let name = String(cString: topic.topic)
            guard !name.hasPrefix("__"), topic.err == RD_KAFKA_RESP_ERR_NO_ERROR else { continue }
            let partitions = UnsafeBufferPointer(start: topic.partitions, count: Int(topic.partition_cnt)).map { partition in
                PartitionDescription(
                    id: partition.id, leader: partition.leader,
                    replicas: Array(UnsafeBufferPointer(start: partition.replicas, count: Int(partition.replica_cnt))),
                    inSyncReplicas: Array(UnsafeBufferPointer(start: partition.isrs, count: Int(partition.isr_cnt))))
            }
            topics.append(TopicDescription(name: name, partitions: partitions.sorted { $0.id < $1.id }))
        }
        return topics.sorted { $0.name < $1.name }
    }

    /// Creates topics; returns the error of each topic that could not be created.
    public func createTopics(_ specifications: [TopicSpecification], timeout: Duration = .seconds(30)) throws(KafkaError) -> [String: KafkaError] {
        try checkOpen()
        guard !specifications.isEmpty else { return [:] }
        var errorText = [CChar](repeating: 0, count: 512)
        var newTopics: [OpaquePointer?] = []
        defer { newTopics.forEach { rd_kafka_NewTopic_destroy($0) } }
        for specification in specifications {
            guard let newTopic = rd_kafka_NewTopic_new(
                specification.name, specification.partitions, Int32(specification.replicationFactor), &errorText, errorText.count)
            else {
                throw KafkaError(kind: .configuration, message: "topic \(specification.name): \(text(ofBuffer: errorText))")
            }
            newTopics.append(newTopic)
            for (key, value) in specification.configs.sorted(by: { $0.key < $1.key }) {
                let code = rd_kafka_NewTopic_set_config(newTopic, key, value)
                guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: "topic \(specification.name) config \(key)") }
            }
        }
        let request = AdminRequest(handle.pointer, RD_KAFKA_ADMIN_OP_CREATETOPICS, timeout: timeout)
        rd_kafka_CreateTopics(handle.pointer, &newTopics, newTopics.count, request.options, request.queue)
        let event = try request.result()
        defer { rd_kafka_event_destroy(event) }
        var count = 0
        let results = rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event), &count)
        var failures: [String: KafkaError] = [:]
        for result in UnsafeBufferPointer(start: results, count: count) {
            let code = rd_kafka_topic_result_error(result)
            guard code != RD_KAFKA_RESP_ERR_NO_ERROR else { continue }
            let name = String(cString: rd_kafka_topic_result_name(result))
            let reason = rd_kafka_topic_result_error_string(result).map { String(cString: $0) } ?? KafkaErrorCode(code).description
            failures[name] = KafkaError(kind: .broker, code: KafkaErrorCode(code), message: "create topic \(name): \(reason)")
        }
        return failures
    }

    /// A topic's configuration entries as the broker reports them.
    public func topicConfigs(_ topic: String, timeout: Duration = .seconds(10)) throws(KafkaError) -> [String: String] {
        try checkOpen()
        var resource = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic)
        defer { rd_kafka_ConfigResource_destroy(resource) }
        let request = AdminRequest(handle.pointer, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS, timeout: timeout)
        rd_kafka_DescribeConfigs(handle.pointer, &resource, 1, request.options, request.queue)
        let event = try request.result()
        defer { rd_kafka_event_destroy(event) }
        var count = 0
        let resources = rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(event), &count)
        guard count == 1, let described = resources?[0] else { throw KafkaError(kind: .broker, message: "describe configs of \(topic): no answer") }
        let code = rd_kafka_ConfigResource_error(described)
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: "describe configs of \(topic)") }
        var entryCount = 0
        let entries = rd_kafka_ConfigResource_configs(described, &entryCount)
        var configs: [String: String] = [:]
        for entry in UnsafeBufferPointer(start: entries, count: entryCount) {
            guard let value = rd_kafka_ConfigEntry_value(entry) else { continue }
            configs[String(cString: rd_kafka_ConfigEntry_name(entry))] = String(cString: value)
        }
        return configs
    }

    /// The low watermark (first offset) and high watermark (next offset to be written).
    public func watermarks(of partition: TopicPartition, timeout: Duration = .seconds(10)) throws(KafkaError) -> (low: Int64, high: Int64) {
        try checkOpen()
        var low: Int64 = 0
        var high: Int64 = 0
        let code = rd_kafka_query_watermark_offsets(handle.pointer, partition.topic, partition.partition, &low, &high, milliseconds(timeout))
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: "query watermarks of \(partition)") }
        return (low, high)
    }

    /// For each partition, the first offset whose timestamp is at or after the given time
    /// (milliseconds since the epoch); the high watermark when there is none.
    public func offsets(forTimes times: [TopicPartition: Int64], timeout: Duration = .seconds(10)) throws(KafkaError) -> [TopicPartition: Int64] {
        try checkOpen()
        let list = makePartitionList(times.map { ($0.key, $0.value) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let code = rd_kafka_offsets_for_times(handle.pointer, list, milliseconds(timeout))
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: "look up offsets for times") }
        var offsets: [TopicPartition: Int64] = [:]
        for (partition, offset, error) in topicPartitions(list) {
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: error, context: "offset for time in \(partition)") }
            offsets[partition] = offset
        }
        return offsets
    }

    public func close() {
        guard !isClosed else { return }
        isClosed = true
        rd_kafka_destroy(handle.pointer)
    }

    private func checkOpen() throws(KafkaError) {
        if isClosed { throw KafkaError(kind: .closed, message: "admin client is closed") }
    }
}

/// The options and result queue of one admin request.
private struct AdminRequest {
    let queue: OpaquePointer
    let options: OpaquePointer
    let timeout: Duration

    init(_ rk: OpaquePointer, _ operation: rd_kafka_admin_op_t, timeout: Duration) {
        queue = rd_kafka_queue_new(rk)
        options = rd_kafka_AdminOptions_new(rk, operation)
        self.timeout = timeout
        var errorText = [CChar](repeating: 0, count: 512)
        rd_kafka_AdminOptions_set_request_timeout(options, milliseconds(timeout), &errorText, errorText.count)
        rd_kafka_AdminOptions_set_operation_timeout(options, milliseconds(timeout), &errorText, errorText.count)
    }

    /// Waits for the request's result event, frees the request, and returns the event for the
    /// caller to destroy.
    func result() throws(KafkaError) -> OpaquePointer {
        defer {
            rd_kafka_AdminOptions_destroy(options)
            rd_kafka_queue_destroy(queue)
        }
        guard let event = rd_kafka_queue_poll(queue, milliseconds(timeout) + 1000) else {
            throw KafkaError(kind: .timedOut, message: "admin request timed out")
        }
        let code = rd_kafka_event_error(event)
        if code != RD_KAFKA_RESP_ERR_NO_ERROR {
            let reason = rd_kafka_event_error_string(event).map { String(cString: $0) } ?? ""
            rd_kafka_event_destroy(event)
            throw KafkaError(kind: .broker, code: KafkaErrorCode(code), message: "admin request failed: \(KafkaErrorCode(code).name): \(reason)")
        }
        return event
    }
}
