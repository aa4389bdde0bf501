import CRdKafka

/// A librdkafka error code, without exposing the C enum.
public struct KafkaErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    init(_ code: rd_kafka_resp_err_t) { self.rawValue = code.rawValue }
    var cValue: rd_kafka_resp_err_t { rd_kafka_resp_err_t(rawValue: rawValue) }

    public static let noError = KafkaErrorCode(RD_KAFKA_RESP_ERR_NO_ERROR)
    public static let transport = KafkaErrorCode(RD_KAFKA_RESP_ERR__TRANSPORT)
    public static let queueFull = KafkaErrorCode(RD_KAFKA_RESP_ERR__QUEUE_FULL)
    public static let timedOut = KafkaErrorCode(RD_KAFKA_RESP_ERR__TIMED_OUT)
    public static let messageTimedOut = KafkaErrorCode(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT)
    public static let fatal = KafkaErrorCode(RD_KAFKA_RESP_ERR__FATAL)
    public static let purgedQueue = KafkaErrorCode(RD_KAFKA_RESP_ERR__PURGE_QUEUE)
    public static let purgedInFlight = KafkaErrorCode(RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
    public static let notLeaderForPartition = KafkaErrorCode(RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION)
    public static let requestTimedOut = KafkaErrorCode(RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT)
    public static let leaderNotAvailable = KafkaErrorCode(RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE)
    public static let notEnoughReplicas = KafkaErrorCode(RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS)
    public static let topicAlreadyExists = KafkaErrorCode(RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
    public static let rebalanceInProgress = KafkaErrorCode(RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS)
    public static let illegalGeneration = KafkaErrorCode(RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION)
    public static let unknownMemberID = KafkaErrorCode(RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID)
    public static let unknownTopicOrPartition = KafkaErrorCode(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)

    /// librdkafka's symbolic name, e.g. `NOT_LEADER_FOR_PARTITION`.
    public var name: String { String(cString: rd_kafka_err2name(cValue)) }
    public var description: String { String(cString: rd_kafka_err2str(cValue)) }
}

/// Whether a message that failed delivery may still have been written by the broker.
public enum PersistenceStatus: Sendable, Equatable {
    case notPersisted, possiblyPersisted, persisted
}

/// Every failure of the Kafka layer.
public struct KafkaError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A configuration property was rejected.
        case configuration
        /// The producer's local queue is full: back off and retry.
        case queueFull
        /// An operation did not finish before its deadline.
        case timedOut
        /// A message could not be delivered; see `persistence`.
        case deliveryFailed
        /// The client hit an unrecoverable error and must be recreated.
        case fatal
        /// The client was already closed.
        case closed
        /// The application's rebalance listener failed.
        case rebalance
        /// Any other error reported by librdkafka or the broker.
        case broker
    }

    public let kind: Kind
    public let code: KafkaErrorCode
    public let message: String
    /// Set on delivery failures.
    public let persistence: PersistenceStatus?

    public init(kind: Kind, code: KafkaErrorCode = .noError, message: String, persistence: PersistenceStatus? = nil) {
        self.kind = kind
        self.code = code
        self.message = message
        self.persistence = persistence
    }

    /// Classifies a librdkafka error code.
    init(code: rd_kafka_resp_err_t, context: String, persistence: PersistenceStatus? = nil) {
        let wrapped = KafkaErrorCode(code)
        let kind: Kind =
            switch code {
            case RD_KAFKA_RESP_ERR__QUEUE_FULL: .queueFull
            case RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT: .timedOut
            case RD_KAFKA_RESP_ERR__FATAL: .fatal
            default: .broker
            }
        self.init(kind: kind, code: wrapped, message: "\(context): \(wrapped.name): \(wrapped.description)", persistence: persistence)
    }

    /// Wraps an `rd_kafka_error_t`, destroying it.
    init(consuming error: OpaquePointer, context: String) {
        let code = rd_kafka_error_code(error)
        let text = String(cString: rd_kafka_error_string(error))
        let fatal = rd_kafka_error_is_fatal(error) != 0
        rd_kafka_error_destroy(error)
        self.init(kind: fatal ? .fatal : .broker, code: KafkaErrorCode(code), message: "\(context): \(text)")
    }

    public var description: String { message }

    /// The group refused an offset commit because it is rebalancing or this member's
    /// generation is gone: the records behind it will be read again, by this member or the
    /// partition's next owner.
    public var isCommitRefusedByRebalance: Bool {
        [KafkaErrorCode.rebalanceInProgress, .illegalGeneration, .unknownMemberID].contains(code)
    }
}
