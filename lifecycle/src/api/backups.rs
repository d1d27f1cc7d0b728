//! The API's backup catalog (`GET /backups`, `GET|PATCH /backups/{id}`, `GET /backups/{id}/download`),
//! restores (`POST /session/{uuid}/restore`, `restore_from` at create) and per-session policy
//! overrides (`PATCH /session/{uuid}/policy`).

use std::io;
use std::time::Duration;

use axum::body::Body as ResponseBody;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use wakeway_config::{format_duration, parse_duration};

use super::answers::{Backups, PolicySet, Record, RestoreDone, RestoreReport};
use super::extract::{
    BACKUP_EXAMPLE, BACKUP_ID, BackupPath, Body, Field, JsonBody, SessionPath, check_backup_id, present,
};
use super::{ApiError, ApiState, answer, bad_query, parse_id};
use crate::catalog::BackupRecord;
use crate::manager::{BackupFilter, Manager, PolicyPatch, RestoreRequest};

#[derive(Deserialize)]
pub(super) struct BackupsQuery {
    user_id: Option<String>,
    uuid: Option<String>,
}

pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<BackupsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(BackupsQuery { user_id, uuid }) = query.map_err(bad_query)?;
    if let Some(id) = &uuid {
        parse_id(id)?;
    }
    let records = state.manager.backups(BackupFilter { user_id, session: uuid }).await?;
    let backups: Vec<Record> = records.iter().map(|r| Record::of(&state.manager, r)).collect();
    Ok(answer(Backups { count: backups.len(), backups }))
}

#[derive(Deserialize)]
pub(super) struct DetailQuery {
    #[serde(default)]
    verify: bool,
}

pub(super) async fn detail(
    State(state): State<ApiState>,
    BackupPath(id): BackupPath,
    query: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let verify = query.map_err(bad_query)?.verify;
    let record = state.manager.backup_record(&id, verify).await?;
    Ok(answer(Record::of(&state.manager, &record)))
}

/// `PATCH /backups/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeepBody {
    keep: bool,
}

impl Body for KeepBody {
    const FIELDS: &'static [Field] = &[Field { name: "keep", must_be: "true or false", example: "true" }];
}

pub(super) async fn patch(
    State(state): State<ApiState>,
    BackupPath(id): BackupPath,
    JsonBody(body): JsonBody<KeepBody>,
) -> Result<Response, ApiError> {
    let record = state.manager.set_backup_keep(&id, body.keep).await?;
    Ok(answer(Record::of(&state.manager, &record)))
}

/// The zip, streamed from disk in 256 KiB chunks (never buffered whole), with its size and its
/// SHA-256 as the ETag.
pub(super) async fn download(
    State(state): State<ApiState>,
    BackupPath(id): BackupPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve_zip(&state.manager, &id, &headers).await
}

/// Backup `id`'s verified zip as a download answering `headers` (`If-None-Match`, `Range`,
/// `If-Range`): the API's `GET /backups/{id}/download` and the admin page's Download link.
pub(crate) async fn serve_zip(manager: &Manager, id: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    check_backup_id(id)?;
    let (path, record) = manager.backup_download(id).await?;
    let etag = format!("\"{}\"", record.sha256);
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    let header = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if header(header::IF_NONE_MATCH).is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*")) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let unreadable = |what: &str, e: io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backup_unreadable",
            format!("Cannot {what} backup {id}: {e}."),
        )
    };
    let (mut file, len) = open_zip(&path).await.map_err(|e| unreadable("open", e))?;
    if len != record.size {
        return Err(size_changed(&record, len));
    }
    // A resumed download asks for the rest: one byte range, honoured only for this very zip.
    let same_zip = header(header::IF_RANGE).is_none_or(|tag| tag.trim() == etag);
    let range = match header(header::RANGE) {
        Some(spec) if same_zip => byte_range(spec, len),
        _ => ByteRange::Whole,
    };
    let (status, start, end) = match range {
        ByteRange::Whole => (StatusCode::OK, 0, len),
        ByteRange::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        ByteRange::Unsatisfiable => return Ok(unsatisfiable(id, len)),
    };
    if start > 0 {
        file.seek(io::SeekFrom::Start(start)).await.map_err(|e| unreadable("read", e))?;
    }
    let response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/zip")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag_value)
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", record.file))
        .header(header::CACHE_CONTROL, "no-store");
    let response = match status {
        StatusCode::PARTIAL_CONTENT => {
            response.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", end - 1))
        }
        _ => response,
    };
    response
        .body(ResponseBody::from_stream(chunks(file, end - start)))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// The zip and its length on disk.
async fn open_zip(path: &std::path::Path) -> io::Result<(tokio::fs::File, u64)> {
    let file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    Ok((file, len))
}

/// 409 for a zip whose size is not the one verified.
fn size_changed(record: &BackupRecord, len: u64) -> ApiError {
    let id = &record.id;
    ApiError::new(
        StatusCode::CONFLICT,
        "backup_unverified",
        format!(
            "Backup {id} is {len} bytes on disk, {} were verified; check it with GET /backups/{id}?verify=true.",
            record.size
        ),
    )
}

/// 416 for a range past the end of a zip of `len` bytes, with the `Content-Range` RFC 9110 asks for.
fn unsatisfiable(id: &str, len: u64) -> Response {
    let mut response = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
        format!("Backup {id} is {len} bytes: ask for a range within it (bytes=0-{}).", len.saturating_sub(1)),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    response
}

/// The next `left` bytes of `file`, in chunks of at most 256 KiB; an error if it ends before.
fn chunks(file: tokio::fs::File, left: u64) -> impl futures::Stream<Item = io::Result<bytes::Bytes>> {
    futures::stream::unfold((file, left), |(mut file, left)| async move {
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
    })
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

/// `POST /session/{uuid}/restore`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RestoreBody {
    backup: String,
    skip_escaping_symlinks: Option<bool>,
}

impl Body for RestoreBody {
    const FIELDS: &'static [Field] = &[
        Field { name: "backup", must_be: BACKUP_ID, example: BACKUP_EXAMPLE },
        Field { name: "skip_escaping_symlinks", must_be: "true or false", example: "true" },
    ];

    fn check(&self) -> Result<(), ApiError> {
        check_backup_id(&self.backup)
    }
}

pub(super) async fn restore(
    State(state): State<ApiState>,
    SessionPath(id): SessionPath,
    JsonBody(body): JsonBody<RestoreBody>,
) -> Result<Response, ApiError> {
    let request =
        RestoreRequest { backup: body.backup, skip_escaping_symlinks: body.skip_escaping_symlinks.unwrap_or(false) };
    let (s, report) = state.manager.restore(&id, request).await?;
    Ok(answer(RestoreDone {
        uuid: &s.uuid,
        status: s.state.as_str(),
        restored_from: s.restored_from.as_deref(),
        pre_restore_backup: s.pre_restore_backup.as_deref(),
        restore: RestoreReport::of(&report),
        message: "The backup was restored; the content it replaced is in pre_restore_backup. The next request wakes the workspace.",
    }))
}

/// `PATCH /session/{uuid}/policy`: each field absent (unchanged), `null` (the default) or a value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyBody {
    #[serde(default, deserialize_with = "present")]
    pub(super) idle_timeout: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) sleep_to_delete: Option<Option<String>>,
    pub(super) keep: Option<bool>,
}

const DURATION: &str = "a duration such as \"30m\" or \"3d\", or null";

impl Body for PolicyBody {
    const FIELDS: &'static [Field] = &[
        Field { name: "idle_timeout", must_be: DURATION, example: "\"30m\"" },
        Field { name: "sleep_to_delete", must_be: DURATION, example: "\"3d\"" },
        Field { name: "keep", must_be: "true or false", example: "true" },
    ];

    fn check(&self) -> Result<(), ApiError> {
        if self.idle_timeout.is_none() && self.sleep_to_delete.is_none() && self.keep.is_none() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_field",
                "Send at least one of idle_timeout, sleep_to_delete (a duration such as \"30m\", or null for the \
                 default) and keep (true or false).",
            ));
        }
        Ok(())
    }
}

/// An override as sent (`Some(None)`: back to the default), read within `max`.
fn override_of(name: &str, sent: Option<Option<String>>, max: Duration) -> Result<Option<Option<Duration>>, ApiError> {
    let Some(Some(text)) = sent else { return Ok(sent.map(|_| None)) };
    let d = parse_duration(&text)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_duration", format!("{name}: {e}.")))?;
    if d < Duration::from_secs(1) || d > max {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_out_of_bounds",
            format!("{name} must be between 1s and {} (max_{name}); {text:?} is not.", format_duration(max)),
        ));
    }
    Ok(Some(Some(d)))
}

pub(super) async fn set_policy(
    State(state): State<ApiState>,
    SessionPath(id): SessionPath,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Result<Response, ApiError> {
    let config = state.manager.config();
    let patch = PolicyPatch {
        idle_timeout: override_of("idle_timeout", body.idle_timeout, config.lifecycle.max_idle_timeout)?,
        sleep_to_delete: override_of("sleep_to_delete", body.sleep_to_delete, config.lifecycle.max_sleep_to_delete)?,
        keep: body.keep,
    };
    state.manager.set_policy(&id, patch).await?;
    let v = state.manager.view(&id).await?;
    Ok(answer(PolicySet::of(&state.manager, &v)))
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
