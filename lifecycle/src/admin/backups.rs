//! The backups tab: every backup in the catalog (what `GET /backups` lists), newest first, with
//! Verify (read back end to end now) and Download (the API's download, shared).

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use http::HeaderMap;
use serde::Deserialize;
use wakeway_proxy::pages::escape;

use super::actions::token;
use super::page::{self, Tab, admin_page};
use super::sessions::when;
use super::signin::{Why, form};
use super::{Admin, AdminState};
use crate::catalog::BackupRecord;
use crate::manager::BackupFilter;

/// `?verified=<id>`: the backup just verified.
#[derive(Deserialize)]
pub(super) struct Shown {
    verified: Option<String>,
}

/// `GET /admin/backups`.
pub(super) async fn page(State(admin): State<AdminState>, headers: HeaderMap, Query(shown): Query<Shown>) -> Response {
    let Some(who) = admin.admin(&headers).await else { return form(Why::Expired, admin.oidc.is_some()) };
    let mut records = match admin.manager.backups(BackupFilter::default()).await {
        Ok(records) => records,
        Err(e) => return page::failed(e, "/admin/backups"),
    };
    records.reverse();
    let flash = shown.verified.and_then(|id| records.iter().find(|r| r.id == id)).map(verified).unwrap_or_default();
    let body = if records.is_empty() {
        "    <div class=\"empty\"><p><b>No backups yet.</b></p><p>A verified backup is made before every deletion \
         (Delete on the Sessions tab, <code>DELETE /session/{uuid}</code>, or the idle policy after \
         <code>sleep_to_delete</code>) and before every restore.</p></div>"
            .to_string()
    } else {
        table(&who, &records)
    };
    admin_page("Backups", Tab::Backups, &who.corner(), &format!("{flash}\n{body}"))
}

fn verified(r: &BackupRecord) -> String {
    match (&r.error, r.verified) {
        (None, true) => format!(
            "    <p class=\"flash\" role=\"status\">Backup {} verified just now: {} entries, SHA-256 {}.</p>",
            escape(&r.id),
            r.entries,
            escape(&r.sha256)
        ),
        (error, _) => format!(
            "    <p class=\"flash bad\" role=\"alert\">Backup {} failed verification: {}.</p>",
            escape(&r.id),
            escape(error.as_deref().unwrap_or("not verified"))
        ),
    }
}

fn table(who: &Admin, records: &[BackupRecord]) -> String {
    let rows: String = records
        .iter()
        .map(|r| {
            let id = escape(&r.id);
            let status = match (&r.error, r.verified) {
                (None, true) => "<span class=\"pill running\">verified</span>".to_string(),
                (error, _) => format!("<span class=\"pill failed\" title=\"{}\">unverified</span>", escape(error.as_deref().unwrap_or(""))),
            };
            format!(
                "<tr data-id=\"{id}\"><td><code>{id}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td>{status}</td><td>{}</td><td><code title=\"{sha}\">{}…</code></td><td class=\"acts\">\
                 <form class=\"inline\" method=\"post\" action=\"/admin/backups/{id}/verify\">{}<button>Verify</button></form>\
                 <a class=\"button\" href=\"/admin/backups/{id}/download\" download>Download</a></td></tr>\n",
                escape(r.user_id.as_deref().unwrap_or("—")),
                escape(r.reason.as_str()),
                when(Some(r.created_at)),
                size(r.size),
                if r.keep { "keep" } else { "—" },
                escape(r.sha256.get(..12).unwrap_or(&r.sha256)),
                token(who),
                sha = escape(&r.sha256),
            )
        })
        .collect();
    format!(
        "    <div class=\"scroll\"><table id=\"backups\"><thead><tr><th>backup</th><th>user</th><th>reason</th>\
         <th>made (UTC)</th><th>size</th><th>status</th><th>kept</th><th>sha-256</th><th>actions</th></tr></thead>\
         <tbody>{rows}</tbody></table></div>\n    <p class=\"meta\">{} backups</p>",
        records.len()
    )
}

/// Bytes in the largest unit that keeps a number ≥ 1.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[derive(Deserialize)]
pub(super) struct VerifyForm {
    csrf: Option<String>,
}

/// `POST /admin/backups/{id}/verify`: read the zip back now, then show the result.
pub(super) async fn verify(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Form<VerifyForm>, FormRejection>,
) -> Response {
    let Some(who) = admin.admin(&headers).await else { return form(Why::Expired, admin.oidc.is_some()) };
    let csrf = body.ok().and_then(|Form(f)| f.csrf);
    if !admin.form_allowed(&who, &headers, csrf.as_deref()) {
        return page::refused();
    }
    if let Err(e) = crate::api::check_backup_id(&id) {
        return page::api_error(e, "/admin/backups");
    }
    match admin.manager.backup_record(&id, true).await {
        Ok(r) => page::see_other(&format!("/admin/backups?verified={}", r.id), None),
        Err(e) => page::failed(e, "/admin/backups"),
    }
}

/// `GET /admin/backups/{id}/download`: the zip, as the API serves it.
pub(super) async fn download(State(admin): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if admin.admin(&headers).await.is_none() {
        return form(Why::Expired, admin.oidc.is_some());
    }
    crate::api::serve_zip(&admin.manager, &id, &headers).await.unwrap_or_else(|e| page::api_error(e, "/admin/backups"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_are_shown_in_a_readable_unit() {
        assert_eq!(super::size(512), "512 B");
        assert_eq!(super::size(2048), "2.0 KiB");
        assert_eq!(super::size(5 << 20), "5.0 MiB");
    }
}
