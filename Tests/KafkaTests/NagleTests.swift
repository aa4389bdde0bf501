import Foundation
import Kafka
import Testing

/// Nagle's algorithm holds a small write back until the previous one is acknowledged; with
/// the peer's delayed ACK that is about 40 ms for every pipelined request or response. Kafka
/// brokers turn it off, and so do Tally's clients and its mock broker.
@Suite struct NagleTests {
    @Test func mockBrokerAndClientConnectionsRunWithoutNagle() async throws {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        try cluster.createTopic("nagle", partitions: 3, replicationFactor: 1)
        let brokerPorts = Set(cluster.bootstrapServers.split(separator: ",").compactMap { $0.split(separator: ":").last.flatMap { UInt16($0) } })

        try await expectNagleOff(connectingTo: cluster, brokerPorts: brokerPorts)

        // Connections made after the brokers were down and up again.
        for broker in cluster.brokerIDs { try cluster.setBrokerDown(broker) }
        for broker in cluster.brokerIDs { try cluster.setBrokerUp(broker) }
        try await expectNagleOff(connectingTo: cluster, brokerPorts: brokerPorts)
    }

    /// Opens a client (its metadata request connects it to the brokers), then checks both ends
    /// of every connection to a broker port in this process.
    private func expectNagleOff(connectingTo cluster: MockCluster, brokerPorts: Set<UInt16>) async throws {
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: cluster.bootstrapServers))
        let topics = try await admin.topics()
        let connections = brokerConnections(brokerPorts: brokerPorts)
        await admin.close()
        #expect(topics.map(\.name) == ["nagle"])
        let brokerSides = connections.filter(\.isBrokerSide)
        let clientSides = connections.filter { !$0.isBrokerSide }
        #expect(!brokerSides.isEmpty)
        #expect(!clientSides.isEmpty)
        #expect(brokerSides.allSatisfy { $0.noDelay }, "the mock broker's accepted connections run with Nagle")
        #expect(clientSides.allSatisfy { $0.noDelay }, "the client's connections run with Nagle")
    }
}

private struct Connection {
    let isBrokerSide: Bool
    let noDelay: Bool
}

/// The connected TCP sockets of this process with one end on a broker port: the mock broker's
/// side (local port is a broker port) and the clients' side (peer port is one).
private func brokerConnections(brokerPorts: Set<UInt16>) -> [Connection] {
    let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.compactMap { Int32($0) } ?? []
    return descriptors.compactMap { descriptor in
        guard let local = port(of: descriptor, getsockname), let peer = port(of: descriptor, getpeername) else { return nil }
        let isBrokerSide = brokerPorts.contains(local)
        guard isBrokerSide || brokerPorts.contains(peer) else { return nil }
        var noDelay: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, &length) == 0 else { return nil }
        return Connection(isBrokerSide: isBrokerSide, noDelay: noDelay != 0)
    }
}

/// The IPv4 port `name` (`getsockname` or `getpeername`) reports for a socket; nil for
/// anything else (files, unconnected or non-IPv4 sockets).
private func port(
    of descriptor: Int32, _ name: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
) -> UInt16? {
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let result = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { name(descriptor, $0, &length) } }
    guard result == 0, Int32(address.sin_family) == AF_INET else { return nil }
    return UInt16(bigEndian: address.sin_port)
}
