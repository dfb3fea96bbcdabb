internal import COpenSSL

/// Pieces of the Parallel Python (ppft) wire protocol that ppnode's pp-compatible
/// listener needs: its framing, its digests, and the few pickles it must produce
/// itself. The protocol is described in docs/PP-COMPAT.md.
public enum PPWire {
    /// The ppft release whose version string the listener announces by default: ppft
    /// clients only talk to a server that sends exactly their own version.
    public static let defaultVersion = "1.7.8"
    /// The secret ppft uses when none is given. Anyone can read it in ppft's source,
    /// so a node refuses it unless told otherwise.
    public static let defaultSecret = "epo20pdosl;dksldkmm"

    /// One frame: the payload's length as a big-endian u64, then the payload.
    public static func frame(_ payload: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: UInt64(payload.count).bigEndian, Array.init) + payload
    }

    /// The answer a client must give to `challenge`: lowercase hex SHA-1 of the
    /// challenge followed by the secret.
    public static func answer(challenge: [UInt8], secret: [UInt8]) -> String {
        Hex.encode(Self.digest(EVP_sha1(), challenge + secret))
    }

    /// Lowercase hex MD5, the name of a function in the "H" cache messages.
    public static func md5Hex(_ bytes: [UInt8]) -> String {
        Hex.encode(Self.digest(EVP_md5(), bytes))
    }

    private static func digest(_ type: OpaquePointer?, _ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        _ = EVP_Digest(bytes, bytes.count, &out, &length, type, nil)
        return Array(out.prefix(Int(length)))
    }

    /// A pickle (protocol 2) of the tuple `(None, text)`: the result a ppft client
    /// receives for a job that produced no value, with `text` as its captured output,
    /// which the client prints. Used when the job could not run at all (worker died,
    /// timeout, node shutting down).
    public static func pickledNoneResult(output text: String) -> [UInt8] {
        let utf8 = Array(text.utf8)
        var out: [UInt8] = [0x80, 0x02, UInt8(ascii: "N"), UInt8(ascii: "X")]
        out += withUnsafeBytes(of: UInt32(utf8.count).littleEndian, Array.init)  // BINUNICODE's length
        out += utf8
        out += [0x86, UInt8(ascii: ".")]  // TUPLE2, STOP
        return out
    }
}
