//! What one zip entry records besides its content: the whole Unix mode and the exact modification
//! time (wakeway's own extra field), written and read the same way everywhere.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use chrono::{DateTime, Datelike, Timelike, Utc};
use zip::CompressionMethod;
use zip::extra_fields::ExtraField;
use zip::write::FullFileOptions;

use super::BackupError;

/// wakeway's own zip extra field: the exact modification time (`"WW"`: version 1, i64 seconds and
/// u32 nanoseconds since the Unix epoch, little-endian). The DOS time every zip has is local time
/// with 2 s resolution and no zone; the Info-ZIP extended timestamp (also written, for `unzip`) has
/// 1 s resolution.
pub const MTIME_FIELD: u16 = 0x5757;

/// An entry's modification time as (seconds, nanoseconds) since the Unix epoch.
pub type Mtime = (i64, u32);

/// The modification time of `meta`, exactly.
pub fn mtime_of(meta: &fs::Metadata) -> Mtime {
    (meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32)
}

/// The options of the entry for something with metadata `meta`: its whole st_mode (type and all 12
/// permission bits: setuid, setgid and sticky too; `unix_permissions` would keep only 0o777) and
/// its times.
pub(super) fn options_for(
    meta: &fs::Metadata,
    partial: &Path,
) -> Result<FullFileOptions<'static, 'static>, BackupError> {
    let mtime = mtime_of(meta);
    let mut options = FullFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .system(zip::System::Unix)
        .external_attributes((meta.mode() & 0xffff) << 16)
        .large_file(meta.len() >= u32::MAX as u64);
    if let Some(t) = DateTime::<Utc>::from_timestamp(mtime.0, 0)
        && let Ok(dt) = zip::DateTime::from_date_and_time(
            t.year().clamp(1980, 2107) as u16,
            t.month() as u8,
            t.day() as u8,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
        )
    {
        options = options.last_modified_time(dt);
    }
    let zip_err = |source| BackupError::Zip { path: partial.to_owned(), source };
    let mut exact = [0u8; 13];
    exact[0] = 1;
    exact[1..9].copy_from_slice(&mtime.0.to_le_bytes());
    exact[9..13].copy_from_slice(&mtime.1.to_le_bytes());
    options.add_extra_field(MTIME_FIELD, exact, false).map_err(zip_err)?;
    if let Ok(secs) = u32::try_from(mtime.0) {
        options = options.with_extended_timestamp(Some(secs), None, None).map_err(zip_err)?;
    }
    Ok(options)
}

/// An entry's Unix mode with all 12 permission bits (the zip reader's `unix_mode` clears setuid,
/// setgid and sticky).
pub fn entry_mode<R: Read>(entry: &zip::read::ZipFile<'_, R>) -> Option<u32> {
    let attributes = entry.external_attributes();
    if entry.system() == zip::System::Unix && attributes >> 16 != 0 {
        return Some(attributes >> 16);
    }
    entry.unix_mode()
}

/// An entry's modification time: wakeway's exact field, else the extended timestamp (1 s), else
/// the DOS time (2 s, read as UTC, which is how wakeway wrote it before the exact field existed).
pub fn entry_mtime<R: Read>(entry: &zip::read::ZipFile<'_, R>) -> Option<Mtime> {
    let mut extended = None;
    for field in entry.extra_data_fields() {
        match field {
            ExtraField::Custom(c) if c.header_id == MTIME_FIELD && c.data.len() >= 13 && c.data[0] == 1 => {
                let secs = i64::from_le_bytes(c.data[1..9].try_into().ok()?);
                let nanos = u32::from_le_bytes(c.data[9..13].try_into().ok()?);
                if nanos < 1_000_000_000 {
                    return Some((secs, nanos));
                }
            }
            ExtraField::ExtendedTimestamp(t) => extended = t.mod_time().map(|s| (i64::from(s), 0)),
            _ => {}
        }
    }
    if extended.is_some() {
        return extended;
    }
    let dos = entry.last_modified()?;
    let date = chrono::NaiveDate::from_ymd_opt(dos.year().into(), dos.month().into(), dos.day().into())?;
    let time = date.and_hms_opt(dos.hour().into(), dos.minute().into(), dos.second().into())?;
    Some((time.and_utc().timestamp(), 0))
}
