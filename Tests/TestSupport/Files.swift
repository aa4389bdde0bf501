import Foundation

/// Writes `text` to a new temporary file and returns its path.
public func temporaryFile(named name: String, contents text: String) throws -> String {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tally-test-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let url = directory.appendingPathComponent(name)
    try text.write(to: url, atomically: true, encoding: .utf8)
    return url.path
}
