import Declarations
import Logging
import Synchronization
import Tenancy

/// The tenants file as the gateway currently knows it. `reload()` reads the file again and
/// swaps the directory in whole; a bad file is refused and the previous directory stays.
public final class TenantRegistry: Sendable {
    public let path: String
    private let current: Mutex<TenantDirectory>

    /// Loads the tenants file at `path`.
    public init(path: String) throws(DeclarationError) {
        self.path = path
        current = Mutex(try TenantDirectory.load(path: path))
    }

    /// The directory in force.
    public var directory: TenantDirectory { current.withLock { $0 } }

    /// Reads the file again; on error the previous directory stays in force.
    public func reload() throws(DeclarationError) {
        let directory = try TenantDirectory.load(path: path)
        current.withLock { $0 = directory }
    }
}
