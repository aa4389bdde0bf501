import Foundation
import Subprocess

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// Runs the built `tally` executable as a real process.
public enum TallyProcess {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// The `tally` binary next to the test bundle in the build products.
    public static var executable: FilePath {
        let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return FilePath(products.appendingPathComponent("tally").path)
    }

    /// Runs `tally arguments…` to completion and returns its exit code, output and errors.
    public static func run(_ arguments: [String]) async throws -> (status: Int32, output: String, errors: String) {
        let result = try await Subprocess.run(
            .path(executable), arguments: Arguments(arguments), input: .none,
            output: .string(limit: 64 << 20), error: .string(limit: 1 << 20))
        let status: Int32 =
            switch result.terminationStatus {
            case .exited(let code): code
            case .signaled(let signal): 128 + signal
            }
        return (status, result.standardOutput, result.standardError)
    }

    /// Starts `tally broker` with a topics file, hands its bootstrap servers to `body`, then
    /// stops it with SIGTERM and checks that it exited cleanly.
    public static func withBroker<T: Sendable>(
        topicsFile: String, brokers: Int = 3, _ body: @Sendable (String) async throws -> T
    ) async throws -> T {
        let bootstrapFile = FileManager.default.temporaryDirectory.appendingPathComponent("tally-bootstrap-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: bootstrapFile) }
        let outcome = try await Subprocess.run(
            .path(executable),
            arguments: ["broker", "--brokers", "\(brokers)", "--topics", topicsFile, "--bootstrap-file", bootstrapFile, "--log-level", "warning"],
            input: .none, output: .sequence, error: .fileDescriptor(.standardError, closeAfterSpawningProcess: false)
        ) { execution -> Result<T, any Error> in
            var lines = execution.standardOutput.strings().makeAsyncIterator()
            guard let bootstrap = try await lines.next()?.trimmingCharacters(in: .whitespacesAndNewlines), !bootstrap.isEmpty else {
                return .failure(Failure(description: "tally broker printed no bootstrap servers"))
            }
            let result: Result<T, any Error>
            do { result = .success(try await body(bootstrap)) } catch { result = .failure(error) }
            try execution.send(signal: .terminate)
            while try await lines.next() != nil {}
            return result
        }
        guard outcome.terminationStatus.isSuccess else {
            throw Failure(description: "tally broker exited with \(outcome.terminationStatus)")
        }
        return try outcome.closureResult.get()
    }
}
