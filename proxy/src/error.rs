//! The one JSON error body every wakeway error uses: `{"error":{"code":..,"message":..}}`.

use bytes::Bytes;

/// Serialize an error body. `code` is a stable snake_case identifier; `message` says what to do.
pub fn error_body(code: &str, message: &str) -> Bytes {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    Bytes::from(body.to_string())
}
