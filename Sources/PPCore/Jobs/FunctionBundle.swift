/// A Python function and everything it needs to run: its source, helper sources and
/// modules to import. Named by the SHA-256 of its canonical encoding, so the same
/// function is loaded once per worker (and, across the network, sent once per node).
public struct FunctionBundle: Sendable, Hashable {
    /// The name of the function to call.
    public var name: String { self.storage.name }
    /// The Python source that defines the function (a whole `.py` file is fine).
    public var source: String { self.storage.source }
    /// The file name shown in tracebacks.
    public var filename: String { self.storage.filename }
    /// Helper sources executed before `source`, in the same namespace.
    public var dependencies: [String] { self.storage.dependencies }
    /// Modules imported into the namespace before the sources run (`"os.path"` binds `os`).
    public var imports: [String] { self.storage.imports }
    /// A directory added to the worker's `sys.path`, so a file's sibling modules import.
    public var searchPath: String? { self.storage.searchPath }
    /// What the function needs of the Python that runs it (`"requires"` in the spec).
    public var requirements: Requirements? { self.storage.requirements }
    /// The spec as the worker reads it: canonical JSON.
    public var spec: [UInt8] { self.storage.spec }
    /// SHA-256 of `spec`: the bundle's name on the wire.
    public var digest: SHA256Digest { self.storage.digest }

    /// The fields, behind one reference: every job carries its bundle, and a copy of
    /// the struct is then one retain, not one per field.
    private final class Storage: Sendable {
        let name: String
        let source: String
        let filename: String
        let dependencies: [String]
        let imports: [String]
        let searchPath: String?
        let requirements: Requirements?
        let spec: [UInt8]
        let digest: SHA256Digest

        init(
            name: String, source: String, filename: String, dependencies: [String], imports: [String], searchPath: String?, requirements: Requirements?,
            spec: [UInt8]
        ) {
            self.name = name
            self.source = source
            self.filename = filename
            self.dependencies = dependencies
            self.imports = imports
            self.searchPath = searchPath
            self.requirements = requirements
            self.spec = spec
            self.digest = SHA256Digest(hashing: spec)
        }
    }

    private let storage: Storage

    /// Creates a bundle.
    ///
    /// - Parameters:
    ///   - name: the function to call.
    ///   - source: Python source defining `name`.
    ///   - filename: the file name tracebacks show.
    ///   - dependencies: helper sources run before `source`.
    ///   - imports: modules to import first.
    ///   - searchPath: a directory to add to `sys.path`.
    ///   - requirements: what the function needs of the worker's Python.
    public init(
        name: String,
        source: String,
        filename: String = "<string>",
        dependencies: [String] = [],
        imports: [String] = [],
        searchPath: String? = nil,
        requirements: Requirements? = nil
    ) {
        var w = JSONWriter()
        w.raw("{\"name\":")
        w.string(name)
        w.member("filename", filename)
        w.raw(",\"imports\":")
        w.array(imports) { $0.string($1) }
        w.raw(",\"deps\":")
        w.array(dependencies) { $0.string($1) }
        w.member("path", searchPath)
        if let requirements {
            w.raw(",\"requires\":")
            requirements.write(to: &w)
        }
        w.member("source", source)
        w.raw("}")
        self.storage = Storage(
            name: name, source: source, filename: filename, dependencies: dependencies, imports: imports, searchPath: searchPath, requirements: requirements,
            spec: w.bytes
        )
    }

    /// A bundle received as its spec bytes (from a client, by a node). Only `spec` and
    /// `digest` (and `requirements`, when given) are meaningful; the worker reads the
    /// rest from the spec itself.
    ///
    /// - Parameters:
    ///   - spec: the spec JSON; its SHA-256 becomes the digest.
    ///   - requirements: its `"requires"` (see `Requirements.read(bundleSpec:)`), for
    ///     the client's scheduler.
    public init(spec: [UInt8], requirements: Requirements? = nil) {
        self.storage = Storage(name: "", source: "", filename: "", dependencies: [], imports: [], searchPath: nil, requirements: requirements, spec: spec)
    }

    public static func == (a: Self, b: Self) -> Bool { a.digest == b.digest }
    public func hash(into h: inout Hasher) { h.combine(self.digest) }
}
