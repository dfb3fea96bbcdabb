public import NIOCore

/// Text that came from a peer (a client's name, a node's error message, a goodbye
/// reason), made safe for a log line: control characters escaped, length cut.
public enum PeerText {
    /// `text` with control characters and other invisible characters escaped
    /// (`\n`, `\u{1b}`) and cut to `limit` characters, saying how much was cut.
    public static func cut(_ text: String, limit: Int = 200) -> String {
        var out = ""
        for s in text.unicodeScalars.prefix(limit) {
            switch s {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\\": out += "\\\\"
            default:
                if s.value < 0x20 || s.value == 0x7f || (0x80..<0xa0).contains(s.value) || (0x202a...0x202e).contains(s.value) || (0x2066...0x2069).contains(s.value) {
                    out += "\\u{\(String(s.value, radix: 16))}"
                } else {
                    out.unicodeScalars.append(s)
                }
            }
        }
        let rest = text.unicodeScalars.dropFirst(limit).count
        if rest > 0 { out += "... (\(rest) more characters)" }
        return out
    }

    /// An address as people write it: `192.0.2.1:7340`, `[2001:db8::1]:7340`.
    public static func address(_ address: SocketAddress) -> String {
        guard let ip = address.ipAddress, let port = address.port else { return "\(address)" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
