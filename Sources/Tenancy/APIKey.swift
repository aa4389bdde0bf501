import Crypto

/// The stored form of an API key: its SHA-256 digest, written `sha256:<64 hex digits>` in the
/// tenants file. Keys are 256-bit random tokens, so a plain digest is enough to make a leaked
/// tenants file useless for calling the gateway.
public struct APIKeyHash: Hashable, Sendable, CustomStringConvertible {
    private let digest: [UInt8]

    /// The hash of a presented key.
    public init(hashing key: String) {
        digest = Array(SHA256.hash(data: Array(key.utf8)))
    }

    /// Parses `sha256:<64 hex digits>`; nil for anything else.
    public init?(parsing text: String) {
        guard text.hasPrefix("sha256:") else { return nil }
        let hex = Array(text.utf8.dropFirst("sha256:".utf8.count))
        guard hex.count == 64 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        for index in stride(from: 0, to: 64, by: 2) {
            guard let high = Self.nibble(hex[index]), let low = Self.nibble(hex[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        digest = bytes
    }

    public var description: String {
        "sha256:" + digest.map { byte in String(byte >> 4, radix: 16) + String(byte & 0xF, radix: 16) }.joined()
    }

    private static func nibble(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): character - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): character - UInt8(ascii: "a") + 10
        default: nil
        }
    }
}

/// New API keys: `tally_` followed by 64 hex digits of system randomness.
public enum APIKey {
    public static func generate() -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        return "tally_" + bytes.map { byte in String(byte >> 4, radix: 16) + String(byte & 0xF, radix: 16) }.joined()
    }
}
