public import PPCore
import Foundation

/// A Python function to run: its source (a string or a whole `.py` file), the name of
/// the function, helper sources and modules to import.
///
/// ```swift
/// let square = PythonFunction(name: "square", source: "def square(x):\n    return x * x\n")
/// let primes = try PythonFunction(file: "examples/sum_primes.py", name: "sum_primes")
/// ```
public struct PythonFunction: Sendable, Hashable {
    /// The bundle that travels to workers, named by its SHA-256.
    public let bundle: FunctionBundle

    /// The function's name.
    public var name: String { self.bundle.name }

    /// Wraps a bundle made elsewhere (the Python package sends its bundles as spec
    /// bytes; see `FunctionBundle.init(spec:)`).
    public init(bundle: FunctionBundle) {
        self.bundle = bundle
    }

    /// Defines a function from source text.
    ///
    /// - Parameters:
    ///   - name: the function to call, defined by `source`.
    ///   - source: Python source.
    ///   - dependencies: helper sources (other functions, classes) run before `source`.
    ///   - imports: modules to import first, like pp's `modules=` (`"math"`, `"os.path"`).
    ///   - requires: what it needs of the worker's Python; its jobs run only where that
    ///     holds (see `Requirements`).
    public init(name: String, source: String, dependencies: [String] = [], imports: [String] = [], requires: Requirements? = nil) {
        self.bundle = FunctionBundle(name: name, source: source, filename: "<\(name)>", dependencies: dependencies, imports: imports, requirements: requires)
    }

    /// Defines a function from a `.py` file. The whole file is the bundle; its directory
    /// is added to the worker's `sys.path` so its sibling modules import.
    ///
    /// - Parameters:
    ///   - path: the file.
    ///   - name: the function to call, defined in the file.
    ///   - imports: extra modules to import first.
    ///   - requires: what it needs of the worker's Python (see `Requirements`).
    /// - Throws: `PythonFunctionError` when the file cannot be read.
    public init(file path: String, name: String, imports: [String] = [], requires: Requirements? = nil) throws {
        let url = URL(fileURLWithPath: path)
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw PythonFunctionError(message: "cannot read \(path): \(Self.reason(error)); give the path of a Python file")
        }
        guard let source = String(data: data, encoding: .utf8) else {
            throw PythonFunctionError(message: "\(path) is not UTF-8 text; save it as UTF-8")
        }
        self.bundle = FunctionBundle(
            name: name,
            source: source,
            filename: url.path,
            imports: imports,
            searchPath: url.deletingLastPathComponent().path,
            requirements: requires
        )
    }

    /// Parses `FILE.py:FUNCTION`, the form `pprun` takes.
    ///
    /// - Parameters:
    ///   - spec: a file path, a colon, and a function name.
    ///   - requires: what it needs of the worker's Python (see `Requirements`).
    /// - Throws: `PythonFunctionError` when the form is wrong or the file cannot be read.
    public init(spec: String, requires: Requirements? = nil) throws {
        guard let colon = spec.lastIndex(of: ":"), colon != spec.startIndex, spec.index(after: colon) != spec.endIndex else {
            throw PythonFunctionError(message: "'\(spec)' is not FILE.py:FUNCTION; write e.g. examples/sum_primes.py:sum_primes")
        }
        let name = String(spec[spec.index(after: colon)...])
        guard name.first.map({ $0 == "_" || $0.isLetter }) == true, name.allSatisfy({ $0 == "_" || $0.isLetter || $0.isNumber }) else {
            throw PythonFunctionError(message: "'\(name)' is not a Python function name (in '\(spec)'); write FILE.py:FUNCTION")
        }
        try self.init(file: String(spec[..<colon]), name: name, requires: requires)
    }

    private static func reason(_ error: any Error) -> String {
        let ns = error as NSError
        if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(underlying.code)))
        }
        if ns.domain == NSCocoaErrorDomain, ns.code == NSFileReadNoSuchFileError { return "No such file or directory" }
        return ns.localizedDescription
    }
}

/// A Python function could not be defined (unreadable file, malformed `FILE:FUNC`).
public struct PythonFunctionError: Error, Sendable, CustomStringConvertible {
    /// What is wrong and how to fix it.
    public var message: String

    public var description: String { self.message }
}
