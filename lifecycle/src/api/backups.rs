//! The API's backup catalog (`GET /backups`, `GET|PATCH /backups/{id}`, `GET /backups/{id}/download`),
//! restores (`POST /session/{uuid}/restore`, `restore_from` at create) and per-session policy
//! overrides (`PATCH /session/{uuid}/policy`).

use std::io;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use wakeway_config::{format_duration, parse_duration};

use super::{ApiError, ApiState, bad_query, json_object, parse_id, rfc3339};
use crate::catalog::{BackupRecord, valid_id};
use crate::manager::{BackupFilter, Manager, PolicyPatch, RestoreRequest};
use crate::restore::Report;
use crate::session::Session;

/// The JSON of one backup.
pub(super) fn record_json(manager: &Manager, r: &BackupRecord) -> Value {
    json!({
        "id": r.id,
        "file": r.file,
        "session": r.session,
        "user_id": r.user_id,
        "created_at": rfc3339(r.created_at),
        "size": r.size,
        "sha256": r.sha256,
        "entries": r.entries,
        "content_bytes": r.content_bytes,
        "skipped": r.skipped,
        "layout": r.layout,
        "roots": r.roots,
        "verified": r.verified,
        "verification": if r.verified { "ok" } else { "failed" },
        "error": r.error,
        "verified_at": rfc3339(r.verified_at),
        "reason": r.reason,
        "keep": r.keep,
        "expires_at": (!r.keep).then(|| rfc3339(crate::policy::after(r.created_at, manager.config().backup_retention))),
        "download": format!("/backups/{}/download", r.id),
    })
}

pub(super) fn report_json(r: &Report) -> Value {
    json!({
        "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks, "bytes": r.bytes, "skipped": r.skipped,
        "roots": r.roots, "left_out": r.left_out,
    })
}

/// The session's effective policy, its overrides and the admin's bounds.
pub(super) fn policy_json(manager: &Manager, s: &Session) -> Value {
    let policy = manager.policy();
    let config = manager.config();
    let ms = |v: Option<u64>| v.map(|ms| format_duration(Duration::from_millis(ms)));
    json!({
        "idle_timeout": format_duration(policy.idle_timeout(s)),
        "sleep_to_delete": format_duration(policy.sleep_to_delete(s)),
        "keep": s.policy.keep,
        "overrides": {
            "idle_timeout": ms(s.policy.idle_timeout_ms),
            "sleep_to_delete": ms(s.policy.sleep_to_delete_ms),
        },
        "bounds": {
            "max_idle_timeout": format_duration(config.max_idle_timeout),
            "max_sleep_to_delete": format_duration(config.max_sleep_to_delete),
        },
    })
}

fn check_backup_id(id: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_backup_id",
        format!("{id:?} is not a backup id (e.g. \"workspace-abc12345-20250101-120000\"; see GET /backups)."),
    ))
}

fn optional_bool(map: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("The field {name:?} must be true or false."),
        )),
    }
}

fn only_fields(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("Unknown field {unknown:?}; the fields are {}.", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// `{"backup": id, "skip_escaping_symlinks": bool}` (or `restore_from` at create).
pub(super) fn restore_request(map: &Map<String, Value>, field: &str) -> Result<Option<RestoreRequest>, ApiError> {
    let backup = match map.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(id)) => id.clone(),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("The field {field:?} must be a backup id (a string; see GET /backups)."),
            ));
        }
    };
    check_backup_id(&backup)?;
    let skip_escaping_symlinks = optional_bool(map, "skip_escaping_symlinks")?.unwrap_or(false);
    Ok(Some(RestoreRequest { backup, skip_escaping_symlinks }))
}

#[derive(Deserialize)]
pub(super) struct BackupsQuery {
    user_id: Option<String>,
    uuid: Option<String>,
}

pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<BackupsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(BackupsQuery { user_id, uuid }) = query.map_err(bad_query)?;
    if let Some(id) = &uuid {
        parse_id(id)?;
    }
    let records = state.manager.backups(BackupFilter { user_id, session: uuid }).await?;
    let backups: Vec<Value> = records.iter().map(|r| record_json(&state.manager, r)).collect();
    Ok(Json(json!({ "count": backups.len(), "backups": backups })))
}

#[derive(Deserialize)]
pub(super) struct DetailQuery {
    #[serde(default)]
    verify: bool,
}

pub(super) async fn detail(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    check_backup_id(&id)?;
    let verify = query.map_err(bad_query)?.verify;
    let record = state.manager.backup_record(&id, verify).await?;
    Ok(Json(record_json(&state.manager, &record)))
}

pub(super) async fn patch(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_backup_id(&id)?;
    let map = json_object(&body)?;
    only_fields(&map, &["keep"])?;
    let Some(keep) = optional_bool(&map, "keep")? else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            "The field \"keep\" is required, e.g. {\"keep\": true}.",
        ));
    };
    let record = state.manager.set_backup_keep(&id, keep).await?;
    Ok(Json(record_json(&state.manager, &record)))
}

/// The zip, streamed from disk in 256 KiB chunks (never buffered whole), with its size and its
/// SHA-256 as the ETag.
pub(super) async fn download(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_backup_id(&id)?;
    let (path, record) = state.manager.backup_download(&id).await?;
    let etag = format!("\"{}\"", record.sha256);
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backup_unreadable", format!("Cannot open backup {id}: {e}."))
    })?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    if len != record.size {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backup_unverified",
            format!(
                "Backup {id} is {len} bytes on disk, {} were verified; check it with GET /backups/{id}?verify=true.",
                record.size
            ),
        ));
    }
    // A resumed download asks for the rest: one byte range, honoured only for this very zip.
    let same_zip = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|tag| tag.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(spec) if same_zip => byte_range(spec, len),
        _ => ByteRange::Whole,
    };
    let (status, start, end) = match range {
        ByteRange::Whole => (StatusCode::OK, 0, len),
        ByteRange::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        ByteRange::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("Backup {id} is {len} bytes: ask for a range within it (bytes=0-{}).", len.saturating_sub(1)),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
    };
    if start > 0 {
        file.seek(io::SeekFrom::Start(start)).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backup_unreadable",
                format!("Cannot read backup {id}: {e}."),
            )
        })?;
    }
    let chunks = futures::stream::unfold((file, end - start), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = BytesMut::zeroed(left.min(256 * 1024) as usize);
        match file.read(&mut buf).await {
            Ok(0) => {
                Some((Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the backup shrank while sent")), (file, 0)))
            }
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf.freeze()), (file, left.saturating_sub(n as u64))))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    let disposition = format!("attachment; filename=\"{}\"", record.file);
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/zip")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag_value)
        .header(header::CONTENT_DISPOSITION, disposition)
        .header(header::CACHE_CONTROL, "no-store");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", end - 1));
    }
    response
        .body(Body::from_stream(chunks))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ByteRange {
    /// No usable range (absent, several ranges, another unit, malformed): the whole file, 200.
    Whole,
    /// Bytes `start..end` (end exclusive), 206.
    Part { start: u64, end: u64 },
    /// A well-formed range that starts past the end: 416.
    Unsatisfiable,
}

/// RFC 9110 §14.1.2, one range: `bytes=a-b`, `bytes=a-`, `bytes=-n` (the last n bytes). Anything
/// else is ignored (the whole file is sent), as the RFC allows.
pub(super) fn byte_range(spec: &str, len: u64) -> ByteRange {
    let Some(set) = spec.trim().strip_prefix("bytes=") else { return ByteRange::Whole };
    if set.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else { return ByteRange::Whole };
    let number =
        |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().ok()).flatten();
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => ByteRange::Unsatisfiable,
            Some(n) if len > 0 => ByteRange::Part { start: len.saturating_sub(n), end: len },
            Some(_) => ByteRange::Unsatisfiable,
            None => ByteRange::Whole,
        },
        (first, last) => match (number(first), last) {
            (Some(start), _) if start >= len => ByteRange::Unsatisfiable,
            (Some(start), "") => ByteRange::Part { start, end: len },
            (Some(start), last) => match number(last) {
                Some(last) if last >= start => ByteRange::Part { start, end: last.saturating_add(1).min(len) },
                _ => ByteRange::Whole,
            },
            (None, _) => ByteRange::Whole,
        },
    }
}

pub(super) async fn restore(
    State(state): State<ApiState>,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let map = json_object(&body)?;
    only_fields(&map, &["backup", "skip_escaping_symlinks"])?;
    let Some(request) = restore_request(&map, "backup")? else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            "The field \"backup\" is required, e.g. {\"backup\": \"workspace-abc12345-20250101-120000\"}.",
        ));
    };
    let (s, report) = state.manager.restore(&id, request).await?;
    Ok(Json(json!({
        "uuid": s.uuid,
        "status": s.state.as_str(),
        "restored_from": s.restored_from,
        "pre_restore_backup": s.pre_restore_backup,
        "restore": report_json(&report),
        "message": "The backup was restored; the content it replaced is in pre_restore_backup. The next request wakes the workspace.",
    })))
}

pub(super) async fn set_policy(
    State(state): State<ApiState>,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let map = json_object(&body)?;
    only_fields(&map, &["idle_timeout", "sleep_to_delete", "keep"])?;
    if map.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            "Send at least one of idle_timeout, sleep_to_delete (a duration such as \"30m\", or null for the default) \
             and keep (true or false).",
        ));
    }
    let config = state.manager.config();
    let duration = |name: &str, max: Duration| -> Result<Option<Option<Duration>>, ApiError> {
        let text = match map.get(name) {
            None => return Ok(None),
            Some(Value::Null) => return Ok(Some(None)),
            Some(Value::String(text)) => text,
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    format!("The field {name:?} must be a duration such as \"30m\" or \"3d\", or null."),
                ));
            }
        };
        let d = parse_duration(text).map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_duration", format!("{name}: {e}."))
        })?;
        if d < Duration::from_secs(1) || d > max {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy_out_of_bounds",
                format!("{name} must be between 1s and {} (max_{name}); {text:?} is not.", format_duration(max)),
            ));
        }
        Ok(Some(Some(d)))
    };
    let patch = PolicyPatch {
        idle_timeout: duration("idle_timeout", config.max_idle_timeout)?,
        sleep_to_delete: duration("sleep_to_delete", config.max_sleep_to_delete)?,
        keep: optional_bool(&map, "keep")?,
    };
    state.manager.set_policy(&id, patch).await?;
    let v = state.manager.view(&id).await?;
    Ok(Json(json!({
        "uuid": v.session.uuid,
        "policy": policy_json(&state.manager, &v.session),
        "sleeps_at": v.sleeps_at.map(rfc3339),
        "deletes_at": v.deletes_at.map(rfc3339),
    })))
}

#[cfg(test)]
mod range_tests {
    use super::{ByteRange, byte_range};

    #[test]
    fn one_byte_range_is_honoured_and_anything_else_sends_the_whole_file() {
        let part = |start, end| ByteRange::Part { start, end };
        assert_eq!(byte_range("bytes=0-99", 1000), part(0, 100));
        assert_eq!(byte_range("bytes=500-", 1000), part(500, 1000), "the rest, to resume a download");
        assert_eq!(byte_range("bytes=-100", 1000), part(900, 1000), "the last 100 bytes");
        assert_eq!(byte_range("bytes=-5000", 1000), part(0, 1000));
        assert_eq!(byte_range("bytes=900-5000", 1000), part(900, 1000), "clipped to the end");
        assert_eq!(byte_range(" bytes=10-10", 1000), part(10, 11));
        assert_eq!(byte_range("bytes=1000-", 1000), ByteRange::Unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 1000), ByteRange::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-", 0), ByteRange::Unsatisfiable, "nothing to send of an empty file");
        for ignored in
            ["bytes=5-1", "bytes=0-1,5-9", "items=0-1", "bytes=a-b", "bytes=", "bytes=-", "0-1", "bytes=+1-2"]
        {
            assert_eq!(byte_range(ignored, 1000), ByteRange::Whole, "{ignored}");
        }
    }
}
