import Foundation
import Synchronization

/// A TCP proxy on loopback in front of a Postgres server that can lose one COMMIT's answer:
/// once armed, it forwards the client's `COMMIT` to the server, swallows the server's reply
/// and closes both connections. The transaction is committed; the client never hears so.
public final class CuttingProxy: Sendable {
    private enum Cut { case idle, armed, commitForwarded, done }

    public let port: Int
    private let listener: Int32
    private let upstreamPort: Int
    private let cut = Mutex(Cut.idle)

    public init(upstreamPort: Int) throws {
        self.upstreamPort = upstreamPort
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                bind(listener, generic, length) == 0 && listen(listener, 16) == 0 && getsockname(listener, generic, &length) == 0
            }
        }
        guard bound else { throw POSIXError(.EADDRNOTAVAIL) }
        self.listener = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    /// Loses the answer to the next COMMIT.
    public func armCutAfterCommit() {
        cut.withLock { $0 = .armed }
    }

    /// Whether an armed cut has happened.
    public var didCut: Bool { cut.withLock { $0 == .done } }

    /// Stops accepting connections.
    public func close() {
        shutdown(listener, Int32(SHUT_RDWR))
        Glibc.close(listener)
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = loopback(port: upstreamPort)
            let connected = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            guard connected else {
                Glibc.close(client)
                Glibc.close(server)
                continue
            }
            Thread.detachNewThread { [self] in pump(from: client, to: server, clientToServer: true) }
            Thread.detachNewThread { [self] in pump(from: server, to: client, clientToServer: false) }
        }
    }

    private func pump(from source: Int32, to destination: Int32, clientToServer: Bool) {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let commit = Array("COMMIT\0".utf8)
        while true {
            let count = read(source, &buffer, buffer.count)
            guard count > 0 else { break }
            let chunk = Array(buffer[0..<count])
            if !clientToServer, cut.withLock({ $0 == .commitForwarded }) {
                // The server answered the COMMIT: drop the answer and both connections.
                cut.withLock { $0 = .done }
                break
            }
            // Marked before forwarding: the server may answer before `writeAll` returns.
            if clientToServer, chunk.count >= commit.count, chunk.firstRange(of: commit) != nil {
                cut.withLock { if $0 == .armed { $0 = .commitForwarded } }
            }
            guard writeAll(chunk, to: destination) else { break }
        }
        shutdown(source, Int32(SHUT_RDWR))
        shutdown(destination, Int32(SHUT_RDWR))
    }

    private func writeAll(_ bytes: [UInt8], to descriptor: Int32) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            guard written > 0 else { return false }
            offset += written
        }
        return true
    }
}

private func loopback(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return address
}
