import CRdKafka
import Logging
import Synchronization

/// Kafka protocol request types, for injecting errors into the mock cluster.
public enum KafkaAPIKey: Int16, Sendable {
    case produce = 0, fetch = 1, listOffsets = 2, metadata = 3, offsetCommit = 8, offsetFetch = 9
    case findCoordinator = 10, joinGroup = 11, heartbeat = 12, leaveGroup = 13, syncGroup = 14
    case initProducerID = 22
}

/// librdkafka's in-process mock Kafka cluster, serving the Kafka protocol on loopback.
///
/// Other clients and processes reach it through `bootstrapServers`. It keeps everything in
/// memory and has no CreateTopics handler: topics are made with `createTopic`. Fault injection
/// (brokers down, request errors, latency, leader moves) drives the failure tests.
public final class MockCluster: Sendable {
    private let owner: NativeHandle
    private let cluster: NativeHandle
    private let context: ClientContext
    private let isShutDown = Mutex(false)
    /// `host:port,…` of every mock broker.
    public let bootstrapServers: String
    /// Broker ids, 1 through the broker count.
    public let brokerIDs: ClosedRange<Int32>

    public init(brokers: Int32 = 3, logger: Logger = Logger(label: "tally.kafka.mock")) throws(KafkaError) {
        let context = ClientContext(logger: logger)
        // A handle only to own the cluster; it never produces. The mock brokers' connections
        // take their socket options from its configuration: Nagle's algorithm off, as a Kafka
        // broker has it (with it on, a response written while the previous one waited for its
        // ACK waited for the client's delayed ACK, ~40 ms, so pipelined requests took that long).
        let owner = try makeNativeClient(
            type: RD_KAFKA_PRODUCER,
            configuration: KafkaConfiguration(bootstrapServers: "", properties: ["log_level": "3", "socket.nagle.disable": "true"]),
            context: context,
            logsOnMainQueue: false)
        guard let cluster = rd_kafka_mock_cluster_new(owner, Int32(brokers)) else {
            rd_kafka_destroy(owner)
            throw KafkaError(kind: .broker, message: "cannot start the mock cluster")
        }
        self.context = context
        self.owner = NativeHandle(owner)
        self.cluster = NativeHandle(cluster)
        self.bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
        self.brokerIDs = 1...brokers
    }

    deinit { shutdown() }

    /// Creates a topic (the mock's stand-in for CreateTopics).
    public func createTopic(_ name: String, partitions: Int32, replicationFactor: Int32) throws(KafkaError) {
        let code = rd_kafka_mock_topic_create(cluster.pointer, name, partitions, replicationFactor)
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: "create mock topic \(name)") }
    }

    /// Takes a broker off the network: its connections drop and it accepts none.
    public func setBrokerDown(_ broker: Int32) throws(KafkaError) {
        try check(rd_kafka_mock_broker_set_down(cluster.pointer, broker), "set broker \(broker) down")
    }

    public func setBrokerUp(_ broker: Int32) throws(KafkaError) {
        try check(rd_kafka_mock_broker_set_up(cluster.pointer, broker), "set broker \(broker) up")
    }

    /// Answers the next requests of this type, on any broker, with these errors in order.
    /// `KafkaErrorCode.transport` makes the broker drop the connection instead.
    public func injectRequestErrors(_ api: KafkaAPIKey, _ errors: [KafkaErrorCode]) {
        var codes = errors.map(\.cValue)
        rd_kafka_mock_push_request_errors_array(cluster.pointer, api.rawValue, codes.count, &codes)
    }

    /// Delays every response of a broker.
    public func setRoundTripTime(broker: Int32, milliseconds: Int32) throws(KafkaError) {
        try check(rd_kafka_mock_broker_set_rtt(cluster.pointer, broker, milliseconds), "set rtt of broker \(broker)")
    }

    /// Moves a partition's leadership; `nil` leaves it without a leader.
    public func setPartitionLeader(topic: String, partition: Int32, broker: Int32?) throws(KafkaError) {
        try check(
            rd_kafka_mock_partition_set_leader(cluster.pointer, topic, partition, broker ?? -1),
            "set leader of \(topic)[\(partition)]")
    }

    /// Stops every broker and frees the cluster; its contents are gone.
    public func shutdown() {
        guard isShutDown.withLock({ wasShutDown in defer { wasShutDown = true }; return !wasShutDown }) else { return }
        rd_kafka_mock_cluster_destroy(cluster.pointer)
        rd_kafka_destroy(owner.pointer)
    }

    private func check(_ code: rd_kafka_resp_err_t, _ action: String) throws(KafkaError) {
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: action) }
    }
}
