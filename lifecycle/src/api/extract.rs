//! The API's extractors, each refusing with a precise JSON error: `SessionPath` and `BackupPath`
//! (400 `invalid_uuid`, `invalid_backup_id`) and `JsonBody<T>`, the one reader of request bodies:
//! `T` is a `Deserialize` struct, refused with 400 `invalid_json` (empty, not JSON), 413
//! `body_too_large`, 422 `invalid_body` (not an object), `missing_field`, `invalid_field` (wrong
//! type, unknown field), then by the body's own checks of values ([`Body::check`]).

use std::fmt;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request};
use bytes::Bytes;
use http::StatusCode;
use http::request::Parts;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde_json::Value;

use wakeway_proxy::SessionId;

use super::{ApiError, ApiState};
use crate::catalog::valid_id;

/// A session id from the path (`/session/{uuid}/…`).
pub(super) struct SessionPath(pub SessionId);

impl<S: Send + Sync> FromRequestParts<S> for SessionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let text = path_segment(parts, state).await?;
        parse_id(&text).map(SessionPath)
    }
}

/// A backup id from the path (`/backups/{id}…`).
pub(super) struct BackupPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BackupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let id = path_segment(parts, state).await?;
        check_backup_id(&id)?;
        Ok(BackupPath(id))
    }
}

/// The route's one `{…}` segment.
async fn path_segment<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    let Path(text) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))?;
    Ok(text)
}

pub(super) fn parse_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_uuid",
            format!("{text:?} is not a session id (8 hex digits, e.g. \"abc12345\")."),
        )
    })
}

/// What a backup id field must be, and one.
pub(super) const BACKUP_ID: &str = "a backup id (a string; see GET /backups)";
pub(super) const BACKUP_EXAMPLE: &str = "\"workspace-abc12345-20250101-120000\"";

pub(crate) fn check_backup_id(id: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_backup_id",
        format!("{id:?} is not a backup id (e.g. {BACKUP_EXAMPLE}; see GET /backups)."),
    ))
}

/// A body field, in the words its refusals use.
pub(super) struct Field {
    pub name: &'static str,
    /// Ends "The field "name" must be …" (a wrong type).
    pub must_be: &'static str,
    /// A value in JSON, for "The field "name" is required, e.g. {"name": example}".
    pub example: &'static str,
}

/// A request body: its fields and the checks of their values.
pub(super) trait Body: DeserializeOwned {
    /// Every field `T` has.
    const FIELDS: &'static [Field];

    /// Values that are the right type but wrong (run once every field is read).
    fn check(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// A JSON body read as `T`. Any `Content-Type` is read as JSON: v3.1.0 never asked for one, and
/// `curl -d` (the README's examples) sends `application/x-www-form-urlencoded`.
pub(super) struct JsonBody<T>(pub T);

impl<T: Body> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let max = state.manager.config().limits.max_api_body_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                // The proxy refuses these before the router in the same words.
                ApiError::new(e.status(), "body_too_large", format!("request body is larger than {max} bytes"))
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("The body could not be read: {e}."))
            }
        })?;
        let body = read::<T>(&bytes)?;
        body.check()?;
        Ok(JsonBody(body))
    }
}

/// The router's own body limit: `max_api_body_bytes`, as the proxy enforces it.
pub(super) fn limit(state: &ApiState) -> DefaultBodyLimit {
    DefaultBodyLimit::max(state.manager.config().limits.max_api_body_bytes)
}

/// Parse `bytes` as `T`'s JSON object: 400 for broken JSON, 422 for a wrong shape.
fn read<T: Body>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "The request needs a JSON body."));
    }
    // The whole text is parsed first, so broken JSON is `invalid_json` wherever it breaks.
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("The body is not valid JSON: {e}."))
    })?;
    let Value::Object(map) = value else {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", "The body must be a JSON object."));
    };
    T::deserialize(Fields { entries: map.into_iter().collect::<Vec<_>>().into_iter(), value: None })
        .map_err(|e| e.answer(T::FIELDS))
}

/// Why a body's fields do not make a `T`; each names its field.
#[derive(Debug)]
enum FieldError {
    /// Absent, or `null` where a value is required (v3.1.0 read `null` as absent).
    Missing(String),
    Unknown(String, &'static [&'static str]),
    /// The wrong JSON type (or a value the field's type refuses).
    Invalid(String),
    Other(String),
}

impl FieldError {
    fn answer(self, fields: &[Field]) -> ApiError {
        let field = |name: &str| fields.iter().find(|f| f.name == name);
        let invalid = |message| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message);
        match self {
            FieldError::Missing(name) => {
                let example = field(&name).map_or("…", |f| f.example);
                let message = format!("The field {name:?} is required, e.g. {{\"{name}\": {example}}}.");
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "missing_field", message)
            }
            FieldError::Unknown(name, known) => {
                invalid(format!("Unknown field {name:?}; the fields are {}.", known.join(", ")))
            }
            FieldError::Invalid(name) => {
                invalid(format!("The field {name:?} must be {}.", field(&name).map_or("another type", |f| f.must_be)))
            }
            FieldError::Other(why) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("The body is not valid: {why}."),
            ),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for FieldError {}

impl de::Error for FieldError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        FieldError::Other(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        FieldError::Missing(field.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        FieldError::Unknown(field.to_string(), expected)
    }
}

/// A body's fields, handed to `T`'s derived `Deserialize` so that each error knows its field.
struct Fields {
    entries: std::vec::IntoIter<(String, Value)>,
    /// The value of the key just read.
    value: Option<(String, Value)>,
}

impl<'de> de::Deserializer<'de> for Fields {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        visitor.visit_map(self)
    }

    /// Unknown fields first (a strict body refuses them before reading anything), then `T`'s in
    /// its order: the first fault found is the same whatever order the client wrote them in.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        let mut entries: Vec<_> = self.entries.collect();
        entries.sort_by_key(|(k, _)| fields.iter().position(|f| f == k).map_or(0, |i| i + 1));
        visitor.visit_map(Fields { entries: entries.into_iter(), value: None })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

impl<'de> MapAccess<'de> for Fields {
    type Error = FieldError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, FieldError> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        let read = seed.deserialize(key.as_str().into_deserializer())?;
        self.value = Some((key, value));
        Ok(Some(read))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, FieldError> {
        let Some((key, value)) = self.value.take() else {
            return Err(FieldError::Other("a value before its key".into()));
        };
        let null = value.is_null();
        seed.deserialize(value).map_err(|_| if null { FieldError::Missing(key) } else { FieldError::Invalid(key) })
    }
}

/// For `Option<Option<T>>` fields: absent is `None`, `null` is `Some(None)`.
pub(super) fn present<'de, D: de::Deserializer<'de>, T: serde::Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CreateBody;
    use crate::api::backups::{KeepBody, PolicyBody, RestoreBody};

    fn refusal<T: Body>(json: &str) -> (u16, &'static str, String) {
        match read::<T>(json.as_bytes()).and_then(|body| body.check().map(|()| body)) {
            Ok(_) => panic!("{json} was accepted"),
            Err(e) => (e.status.as_u16(), e.code, e.message),
        }
    }

    #[test]
    fn v3_bodies_keep_accepting_fields_they_do_not_know() {
        let body = read::<CreateBody>(br#"{"user_id":"u@example.com","team":"x","size":3}"#).unwrap();
        assert_eq!(body.user_id, "u@example.com");
    }

    #[test]
    fn strict_bodies_refuse_unknown_fields_before_anything_else() {
        let (status, code, message) = refusal::<KeepBody>(r#"{"keep":"no","why":1}"#);
        assert_eq!((status, code), (422, "invalid_field"));
        assert_eq!(message, "Unknown field \"why\"; the fields are keep.");
        let (_, _, message) = refusal::<RestoreBody>(r#"{"extra":1,"backup":7}"#);
        assert!(message.starts_with("Unknown field \"extra\""), "{message}");
    }

    #[test]
    fn the_first_fault_does_not_depend_on_the_order_fields_are_written_in() {
        let a = refusal::<RestoreBody>(r#"{"backup":7,"skip_escaping_symlinks":"x"}"#);
        let b = refusal::<RestoreBody>(r#"{"skip_escaping_symlinks":"x","backup":7}"#);
        assert_eq!(a, b);
        assert!(a.2.contains("\"backup\""), "{a:?}");
    }

    #[test]
    fn null_is_absent_and_absent_is_missing_where_a_value_is_required() {
        for json in [r#"{}"#, r#"{"keep":null}"#] {
            let (status, code, message) = refusal::<KeepBody>(json);
            assert_eq!((status, code), (422, "missing_field"), "{json}");
            assert_eq!(message, "The field \"keep\" is required, e.g. {\"keep\": true}.");
        }
    }

    #[test]
    fn a_policy_tells_null_from_absent() {
        let body = read::<PolicyBody>(br#"{"idle_timeout":null,"keep":true}"#).unwrap();
        assert_eq!((body.idle_timeout, body.sleep_to_delete, body.keep), (Some(None), None, Some(true)));
        let body = read::<PolicyBody>(br#"{"sleep_to_delete":"3d"}"#).unwrap();
        assert_eq!(body.sleep_to_delete, Some(Some("3d".to_string())));
        assert_eq!(refusal::<PolicyBody>("{}").1, "missing_field");
    }

    #[test]
    fn values_are_checked_after_types() {
        let (status, code, _) = refusal::<CreateBody>(r#"{"user_id":"a","restore_from":"../x"}"#);
        assert_eq!((status, code), (400, "invalid_backup_id"));
        let (status, code, _) = refusal::<CreateBody>(r#"{"user_id":""}"#);
        assert_eq!((status, code), (422, "invalid_user_id"));
    }
}
