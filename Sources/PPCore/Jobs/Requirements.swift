internal import Foundation  // JSONDecoder: a bundle spec's "requires"

/// What a function needs of the Python that runs it: a version range, an
/// implementation, modules that must import. It travels in the function's bundle
/// (`"requires"` in the spec), so it is part of the bundle's name.
///
/// The client's scheduler sends a job only to executors whose Python version is in
/// the range and whose implementation is the one named (when it knows them: nodes
/// announce both); the worker checks all three when it
/// loads the bundle, and a worker that fails the check answers "function unavailable",
/// so the scheduler places the job on another executor.
///
/// ```swift
/// let needs = try Requirements(python: ">=3.9,<3.13", modules: ["numpy"])
/// ```
public struct Requirements: Sendable, Hashable {
    /// A Python version range such as `>=3.9,<3.13`: comma-separated clauses of
    /// `>=`, `>`, `<=`, `<`, `==` or `!=` and a release number, compared as PEP 440
    /// compares release numbers (`3.9` is `3.9.0`; `==3.11.*` and `!=3.11.*` match a
    /// prefix); `nil` for any version.
    public let python: String?
    /// The implementation (`sys.implementation.name`: `cpython`, `pypy`), compared
    /// without case; `nil` for any.
    public let implementation: String?
    /// Modules the worker must be able to import (`"numpy"`, `"os.path"`).
    public let modules: [String]

    /// Creates requirements.
    ///
    /// - Parameters:
    ///   - python: a version range such as `>=3.9,<3.13`, or `nil`.
    ///   - implementation: `cpython`, `pypy`..., or `nil`.
    ///   - modules: module names the worker must import.
    /// - Throws: `RequirementsError` naming the part that does not parse.
    public init(python: String? = nil, implementation: String? = nil, modules: [String] = []) throws(RequirementsError) {
        if let python, Self.clauses(python) == nil {
            throw RequirementsError(message: "'\(python)' is not a Python version range; write clauses such as '>=3.9,<3.13' or '==3.11.*'")
        }
        let name = #/[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*/#
        for module in modules where (try? name.wholeMatch(in: module)) == nil {
            throw RequirementsError(message: "'\(module)' is not a module name; write e.g. numpy or os.path")
        }
        if let implementation, (try? name.wholeMatch(in: implementation)) == nil || implementation.contains(".") {
            throw RequirementsError(message: "'\(implementation)' is not a Python implementation name; write e.g. cpython or pypy")
        }
        self.python = python
        self.implementation = implementation?.lowercased()
        self.modules = modules
    }

    /// Reads the `"requires"` object of a bundle spec (what the Python package sends).
    ///
    /// - Returns: `nil` when the spec has none.
    /// - Throws: `RequirementsError` when it is not an object of a valid range,
    ///   implementation and module names.
    public static func read(bundleSpec spec: [UInt8]) throws(RequirementsError) -> Requirements? {
        struct Spec: Decodable {
            struct Requires: Decodable {
                var python: String?
                var implementation: String?
                var modules: [String]?
            }
            var requires: Requires?
        }
        let requires: Spec.Requires?
        do {
            requires = try JSONDecoder().decode(Spec.self, from: Data(spec)).requires
        } catch {
            throw RequirementsError(message: "the bundle's \"requires\" is not {\"python\": RANGE, \"implementation\": NAME, \"modules\": [NAMES]}")
        }
        guard let requires else { return nil }
        return try Requirements(python: requires.python, implementation: requires.implementation, modules: requires.modules ?? [])
    }

    /// Why a Python of `version` (`3.11.2`) and `implementation` (`cpython`) does not
    /// meet these requirements, or `nil` when it does, or when what is needed is not
    /// known (the worker decides: a version without a release number, a `nil` one).
    public func mismatch(pythonVersion version: String?, implementation: String? = nil) -> String? {
        if let needed = self.implementation, let implementation, implementation.lowercased() != needed {
            return "needs Python implementation \(needed); it runs \(PeerText.cut(implementation, limit: 40))"
        }
        guard let python, let version, let clauses = Self.clauses(python) else { return nil }
        // The release number: the leading digits of each dotted part ("3.13.0rc1": 3.13.0).
        var release: [Int] = []
        for part in version.split(separator: ".") {
            guard let n = Int(part.prefix(while: \.isASCII).prefix(while: \.isNumber)) else { break }
            release.append(n)
        }
        guard !release.isEmpty else { return nil }
        let inside = clauses.allSatisfy { clause in
            if clause.prefix {
                return (Array(release.prefix(clause.release.count)) == clause.release) == (clause.op == "==")
            }
            let n = max(release.count, clause.release.count)
            let a = release + Array(repeating: 0, count: n - release.count), b = clause.release + Array(repeating: 0, count: n - clause.release.count)
            switch clause.op {
            case ">=": return !a.lexicographicallyPrecedes(b)
            case ">": return b.lexicographicallyPrecedes(a)
            case "<=": return !b.lexicographicallyPrecedes(a)
            case "<": return a.lexicographicallyPrecedes(b)
            case "==": return a == b
            default: return a != b
            }
        }
        return inside ? nil : "needs Python \(python); it runs Python \(PeerText.cut(version, limit: 40))"
    }

    /// The spec's `"requires"` object (canonical JSON).
    func write(to w: inout JSONWriter) {
        w.raw("{\"modules\":")
        w.array(self.modules) { $0.string($1) }
        w.member("python", self.python)
        w.member("implementation", self.implementation)
        w.raw("}")
    }

    private struct Clause {
        var op: String
        var release: [Int]
        var prefix: Bool
    }

    /// The clauses of a range, or `nil` when it does not parse.
    private static func clauses(_ text: String) -> [Clause]? {
        var out: [Clause] = []
        for raw in text.split(separator: ",", omittingEmptySubsequences: false) {
            let clause = raw.trimmingCharacters(in: .whitespaces)
            guard let op = [">=", "<=", "==", "!=", ">", "<"].first(where: { clause.hasPrefix($0) }) else { return nil }
            var number = clause.dropFirst(op.count).trimmingCharacters(in: .whitespaces)
            let prefix = number.hasSuffix(".*") && (op == "==" || op == "!=")
            if prefix { number.removeLast(2) }
            let parts = number.split(separator: ".", omittingEmptySubsequences: false)
            let release = parts.compactMap { $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) ? Int($0) : nil }
            guard !parts.isEmpty, release.count == parts.count, release.count <= 4 else { return nil }
            out.append(Clause(op: op, release: release, prefix: prefix))
        }
        return out
    }
}

/// Requirements that do not parse.
public struct RequirementsError: Error, Sendable, CustomStringConvertible {
    /// What is wrong and how to write it.
    public var message: String

    public var description: String { self.message }
}
