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
use tokio::io::AsyncReadExt;
use wakeway_config::{format_duration, parse_duration};

use super::{ApiError, ApiState, bad_query, json_object, parse_id, rfc3339};
use crate::catalog::{BackupRecord, valid_id};
use crate::manager::{BackupFilter, Manager, PolicyPatch, RestoreRequest};
use crate::restore::Report;
use crate::session::Session;

/// The JSON of one backup.
pub(super) fn record_json(manager: &Manager, r: &BackupRecord) -> Value {
    let retention = chrono::Duration::from_std(manager.config().backup_retention).unwrap_or(chrono::Duration::MAX);
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
        "verified": r.verified,
        "verification": if r.verified { "ok" } else { "failed" },
        "error": r.error,
        "verified_at": rfc3339(r.verified_at),
        "reason": r.reason,
        "keep": r.keep,
        "expires_at": if r.keep { None } else { r.created_at.checked_add_signed(retention).map(rfc3339) },
        "download": format!("/backups/{}/download", r.id),
    })
}

pub(super) fn report_json(r: &Report) -> Value {
    json!({ "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks, "bytes": r.bytes, "skipped": r.skipped })
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
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
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
    let chunks = futures::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = BytesMut::zeroed(256 * 1024);
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
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/zip")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ETAG, etag_value)
        .header(header::CONTENT_DISPOSITION, disposition)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(chunks))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(response)
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
