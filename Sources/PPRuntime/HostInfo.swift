#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What this machine is, as a node announces it in its beacon and TXT record.
public enum HostInfo {
    /// The machine architecture (`x86_64`, `aarch64`), from `uname`.
    public static let architecture: String = Self.system.machine

    /// The operating system and its release (`Linux 6.1.0`), from `uname`.
    public static let operatingSystem: String = Self.system.name + " " + Self.system.release

    private static let system: (machine: String, name: String, release: String) = {
        var u = utsname()
        _ = uname(&u)
        func text<T>(_ field: T) -> String {
            withUnsafeBytes(of: field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return (text(u.machine), text(u.sysname), text(u.release))
    }()
}
