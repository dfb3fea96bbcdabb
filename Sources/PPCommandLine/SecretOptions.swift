public import ArgumentParser
public import PPCore
import PPRuntime

/// `--secret-file PATH`: the cluster secret's file, as `pprun map`, `ppnode` and
/// `ppnodes` take it (`@OptionGroup var secret: SecretOptions`).
///
/// Without the flag the secret is `$PP_SECRET`, then the file `$PP_SECRET_FILE`, then
/// the default file (`ClusterSecret.load(file:origin:create:)`). A file that is named
/// must exist; only ppnode creates the default file.
public struct SecretOptions: ParsableArguments {
    /// The file given with `--secret-file`, or `nil`.
    @Option(
        name: .customLong("secret-file"),
        help: ArgumentHelp(
            "File holding the cluster secret; it must exist (default: $PP_SECRET, then $PP_SECRET_FILE, then ~/.config/ppnode/secret).",
            valueName: "PATH"
        )
    )
    public var secretFile: String?

    /// No file given; ArgumentParser fills `secretFile` from the command line.
    public init() {}

    /// Loads the cluster secret: the `--secret-file` file, else what the environment or
    /// the default file holds.
    ///
    /// - Parameter create: create the default file when no secret exists (ppnode only).
    /// - Returns: the secret and whether this call created it.
    /// - Throws: `SecretError` naming the fix.
    public func load(create: Bool = false) throws -> (secret: ClusterSecret, created: Bool) {
        try ClusterSecret.load(file: self.secretFile, origin: "--secret-file", create: create)
    }
}
