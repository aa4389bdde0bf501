import CRdKafka
import Logging

/// State shared with librdkafka's C callbacks through the handle's opaque pointer.
class ClientContext: @unchecked Sendable {
    let logger: Logger
    init(logger: Logger) { self.logger = logger }

    static func from(_ opaque: UnsafeMutableRawPointer?) -> ClientContext {
        Unmanaged<ClientContext>.fromOpaque(opaque!).takeUnretainedValue()
    }
}

/// librdkafka logs arrive on whichever thread serves the handle's main queue.
private let logCallback: @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Void = {
    rk, level, facility, message in
    guard let rk, let message else { return }
    ClientContext.from(rd_kafka_opaque(rk)).log(level: level, facility: facility, message: message)
}

extension ClientContext {
    /// Logs one librdkafka log line at the Swift level matching its syslog level.
    func log(level: Int32, facility: UnsafePointer<CChar>?, message: UnsafePointer<CChar>) {
        let swiftLevel: Logger.Level =
            switch level {
            case ...3: .error
            case 4: .warning
            case 5, 6: .info
            default: .debug
            }
        logger.log(
            level: swiftLevel, "\(String(cString: message))",
            metadata: ["kafka.facility": "\(facility.map { String(cString: $0) } ?? "")"])
    }
}

/// Creates an `rd_kafka_t`. `context` must outlive the handle; `configure` adds callbacks.
/// With `logsOnMainQueue` logs wait for whoever polls the handle, else they are logged from
/// librdkafka's own threads.
func makeNativeClient(
    type: rd_kafka_type_t, configuration: KafkaConfiguration, context: ClientContext, logsOnMainQueue: Bool = true,
    configure: (OpaquePointer) -> Void = { _ in }
) throws(KafkaError) -> OpaquePointer {
    var configuration = configuration
    configuration["log.queue"] = logsOnMainQueue ? "true" : "false"
    // librdkafka's default from 2.10 on; with Nagle's algorithm on, a request written while an
    // earlier one on the connection waits for its ACK can wait for the broker's delayed ACK.
    if configuration["socket.nagle.disable"] == nil { configuration["socket.nagle.disable"] = "true" }
    let conf = try configuration.makeNativeConfiguration()
    rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(context).toOpaque())
    rd_kafka_conf_set_log_cb(conf, logCallback)
    configure(conf)
    var errorText = [CChar](repeating: 0, count: 512)
    guard let handle = rd_kafka_new(type, conf, &errorText, errorText.count) else {
        rd_kafka_conf_destroy(conf)  // rd_kafka_new owns the conf only on success
        let reason = text(ofBuffer: errorText)
        throw KafkaError(kind: .configuration, message: "cannot create Kafka client: \(reason)")
    }
    if logsOnMainQueue { rd_kafka_set_log_queue(handle, nil) }
    return handle
}

/// Converts a C partition list into Swift values.
func topicPartitions(_ list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) -> [(TopicPartition, offset: Int64, error: rd_kafka_resp_err_t)] {
    (0..<Int(list.pointee.cnt)).map { index in
        let element = list.pointee.elems[index]
        return (TopicPartition(topic: String(cString: element.topic), partition: element.partition), element.offset, element.err)
    }
}

/// Builds a C partition list; the caller destroys it.
func makePartitionList(_ entries: [(TopicPartition, offset: Int64)]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
    let list = rd_kafka_topic_partition_list_new(Int32(entries.count))!
    for (topicPartition, offset) in entries {
        let element = rd_kafka_topic_partition_list_add(list, topicPartition.topic, topicPartition.partition)!
        element.pointee.offset = offset
    }
    return list
}

/// Copies the headers of a consumed message.
func copyHeaders(of message: UnsafeMutablePointer<rd_kafka_message_t>) -> [KafkaHeader] {
    var headersHandle: OpaquePointer?
    guard rd_kafka_message_headers(message, &headersHandle) == RD_KAFKA_RESP_ERR_NO_ERROR, let headersHandle else { return [] }
    var headers: [KafkaHeader] = []
    headers.reserveCapacity(rd_kafka_header_cnt(headersHandle))
    var index = 0
    var name: UnsafePointer<CChar>?
    var value: UnsafeRawPointer?
    var size = 0
    while rd_kafka_header_get_all(headersHandle, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
        let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) }
        headers.append(KafkaHeader(name: String(cString: name!), value: bytes))
        index += 1
    }
    return headers
}

func copyBytes(_ pointer: UnsafeMutableRawPointer?, count: Int) -> [UInt8]? {
    pointer.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) }
}

/// The NUL-terminated text librdkafka wrote into an error buffer.
func text(ofBuffer buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
