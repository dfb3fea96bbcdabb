import Foundation

/// What this machine is, as a node announces it in its beacon and TXT record.
public enum HostInfo {
    /// The machine architecture (`x86_64`, `aarch64`), from `uname`.
    public static let architecture = Self.field(\.machine)

    /// The operating system and its release (`Linux 6.1.0`), from `uname`.
    public static let operatingSystem = Self.field(\.sysname) + " " + Self.field(\.release)

    /// One field of `uname`'s answer, as text.
    private static func field<Field>(_ field: KeyPath<utsname, Field>) -> String {
        var u = utsname()
        _ = uname(&u)
        return withUnsafeBytes(of: u[keyPath: field]) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}
