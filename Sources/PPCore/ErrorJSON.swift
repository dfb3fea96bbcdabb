internal import Foundation

/// Reads the `{"type","message","traceback"}` objects workers write for errors.
enum ErrorJSON {
    struct Fields {
        var type: String?
        var message: String
        var traceback: String
    }

    static func parse(_ bytes: [UInt8]) -> Fields {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            return Fields(type: nil, message: String(decoding: bytes, as: UTF8.self), traceback: "")
        }
        return Fields(
            type: object["type"] as? String,
            message: object["message"] as? String ?? "",
            traceback: object["traceback"] as? String ?? ""
        )
    }
}
