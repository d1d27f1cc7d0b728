//! The catalog against real zips in a real folder: strict ids, records kept and re-verified,
//! leftovers of interrupted backups, retention.

use super::*;
use crate::backup::write_verified_zip;

fn nobody(_: &str) -> Option<String> {
    None
}

fn backup(dir: &Path, id: &str) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "a".repeat(5000)).unwrap();
    let zip = dir.join("backups").join(format!("{id}.zip"));
    fs::create_dir_all(zip.parent().unwrap()).unwrap();
    write_verified_zip(&src, &zip, Utc::now(), &Origin::new(&id[10..18], "u@example.com", "delete")).unwrap();
    zip
}

#[test]
fn ids_are_strict() {
    assert!(valid_id("workspace-abc12345-20250101-120000"));
    for bad in [
        "workspace-abc12345-20250101-120000.zip",
        "workspace-ABC12345-20250101-120000",
        "workspace-abc12345-20251301-120000",
        "workspace-abc1234x-20250101-120000",
        "../workspace-abc12345-20250101-12000",
        "workspace-abc12345/20250101-120000",
        "",
    ] {
        assert!(!valid_id(bad), "{bad}");
    }
    assert_eq!(session_of("workspace-abc12345-20250101-120000"), Some("abc12345"));
}

#[test]
fn records_are_trusted_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let id = "workspace-abc12345-20250101-120000";
    let zip = backup(dir.path(), id);
    let catalog = Catalog::new(dir.path().join("backups"), u64::MAX);
    let listed = catalog.list(Utc::now(), &nobody);
    assert_eq!(listed.len(), 1);
    let record = &listed[0];
    assert!(record.verified && record.reason == "delete" && record.user_id.as_deref() == Some("u@example.com"));
    assert_eq!(record.session.as_deref(), Some("abc12345"));

    let keep = catalog.set_keep(id, true, Utc::now(), &nobody).unwrap();
    assert!(keep.keep);
    assert!(catalog.get(id, Utc::now(), &nobody, false).unwrap().keep, "keep is persisted");

    // Flip one byte of the compressed data: the next look re-verifies and fails it.
    let mut bytes = fs::read(&zip).unwrap();
    bytes[60] ^= 0xff;
    fs::write(&zip, bytes).unwrap();
    let record = catalog.get(id, Utc::now(), &nobody, false).unwrap();
    assert!(!record.verified, "{record:?}");
    assert!(record.error.is_some());
    assert!(record.keep, "a failed backup keeps its keep flag");
}

#[test]
fn zips_without_a_record_are_verified_once_and_leftovers_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let id = "workspace-abc12345-20250101-120000";
    let zip = backup(dir.path(), id);
    fs::remove_file(sidecar_path(&zip)).unwrap();
    let backups = dir.path().join("backups");
    fs::write(backups.join("workspace-abc12345-20250102-120000.zip.partial"), "half").unwrap();
    fs::write(backups.join("workspace-abc12345-20250103-120000.json"), "{}").unwrap();
    fs::write(backups.join("workspace-abc12345-20250104-120000.zip"), "not a zip").unwrap();
    let catalog = Catalog::new(backups.clone(), u64::MAX);
    let user = |s: &str| (s == "abc12345").then(|| "owner@example.com".to_string());
    let listed = catalog.list(Utc::now(), &user);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed[0].verified && listed[0].reason == "found");
    assert_eq!(listed[0].user_id.as_deref(), Some("owner@example.com"));
    assert!(!listed[1].verified, "a broken zip is listed as failed, never as a backup");
    assert!(sidecar_path(&zip).exists(), "recorded after one verification");

    fs::write(backups.join("workspace-abc12345-20250105-120000.zip.partial"), "half").unwrap();
    fs::write(backups.join("workspace-abc12345-20250105-120000.json"), "{}").unwrap();
    let alone = Leftovers { sole_writer: true, writer: "r1".into(), stale_before: SystemTime::UNIX_EPOCH };
    let mut removed = catalog.clean_leftovers(&alone);
    removed.sort();
    assert_eq!(
        removed,
        [
            "workspace-abc12345-20250102-120000.zip.partial",
            "workspace-abc12345-20250103-120000.json",
            "workspace-abc12345-20250105-120000.json",
            "workspace-abc12345-20250105-120000.zip.partial",
        ]
    );
}

#[test]
fn pruning_spares_kept_and_protected_backups() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["workspace-abc12345-20200101-000000", "workspace-abc12345-20200102-000000"];
    let kept = "workspace-abc12345-20200103-000000";
    let fresh = "workspace-abc12345-20991231-000000";
    for id in ids.iter().chain([&kept, &fresh]) {
        backup(dir.path(), id);
    }
    let catalog = Catalog::new(dir.path().join("backups"), u64::MAX);
    catalog.set_keep(kept, true, Utc::now(), &nobody).unwrap();
    let protected = HashSet::from([ids[1].to_string()]);
    let pruned = catalog.prune(Utc::now(), &protected);
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0].0, ids[0]);
    assert!(!catalog.zip_path(ids[0]).exists() && !sidecar_path(&catalog.zip_path(ids[0])).exists());
    let left: Vec<String> = catalog.list(Utc::now(), &nobody).into_iter().map(|r| r.id).collect();
    assert_eq!(left, [ids[1], kept, fresh]);
}

/// Set `name`'s modification time to `age` ago (an abandoned leftover).
fn age(dir: &Path, name: &str, age: std::time::Duration) {
    let file = File::options().write(true).open(dir.join(name)).unwrap();
    file.set_modified(std::time::SystemTime::now() - age).unwrap();
}

#[test]
fn a_shared_folder_loses_only_this_replicas_leftovers_and_abandoned_ones() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    fs::create_dir_all(&backups).unwrap();
    // Another replica (or a backup Job) is writing a backup right now: its partial and record.
    let busy = "workspace-abc12345-20250101-120000";
    fs::write(backups.join(format!("{busy}.zip.replica-b.partial")), "being written").unwrap();
    fs::write(backups.join(format!("{busy}.json")), "{}").unwrap();
    fs::write(backups.join("workspace-abc12345-20250101-120001.zip.partial"), "a Job's, running").unwrap();
    fs::write(backups.join("workspace-abc12345-20250101-120002.json.tmp"), "{}").unwrap();
    // This replica's own, from before its crash (its name is not a file name as it is).
    let own = "workspace-abc12345-20250102-120000";
    fs::write(backups.join(format!("{own}.zip.replica_a_0.partial")), "half").unwrap();
    fs::write(backups.join(format!("{own}.json")), "{}").unwrap();
    // A writer that died long ago.
    let dead = "workspace-abc12345-20250103-120000";
    fs::write(backups.join(format!("{dead}.zip.partial")), "half").unwrap();
    fs::write(backups.join(format!("{dead}.json")), "{}").unwrap();
    let hour = std::time::Duration::from_secs(3600);
    age(&backups, &format!("{dead}.zip.partial"), 2 * hour);
    age(&backups, &format!("{dead}.json"), 2 * hour);

    let catalog = Catalog::new(backups.clone(), u64::MAX);
    let rule = Leftovers {
        sole_writer: false,
        writer: "replica a/0".into(),
        stale_before: std::time::SystemTime::now() - hour,
    };
    let mut removed = catalog.clean_leftovers(&rule);
    removed.sort();
    assert_eq!(
        removed,
        [
            format!("{own}.json"),
            format!("{own}.zip.replica_a_0.partial"),
            format!("{dead}.json"),
            format!("{dead}.zip.partial"),
        ]
    );
    for left in [
        format!("{busy}.zip.replica-b.partial"),
        format!("{busy}.json"),
        "workspace-abc12345-20250101-120001.zip.partial".into(),
        "workspace-abc12345-20250101-120002.json.tmp".into(),
    ] {
        assert!(backups.join(&left).exists(), "{left}: another writer's, in use");
    }
}

#[test]
fn a_backup_whose_record_cannot_be_read_is_never_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let unreadable = "workspace-abc12345-20200101-000000";
    let unrecorded = "workspace-abc12345-20200102-000000";
    for id in [unreadable, unrecorded] {
        backup(dir.path(), id);
    }
    let catalog = Catalog::new(dir.path().join("backups"), u64::MAX);
    catalog.set_keep(unreadable, true, Utc::now(), &nobody).unwrap();
    let sidecar = sidecar_path(&catalog.zip_path(unreadable));
    fs::write(&sidecar, "{\"keep\": tr").unwrap();
    fs::remove_file(sidecar_path(&catalog.zip_path(unrecorded))).unwrap();

    let mut pruned = catalog.prune(Utc::now(), &HashSet::new());
    pruned.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(pruned.len(), 2, "{pruned:?}");
    assert_eq!(pruned[0].0, unreadable);
    let why = pruned[0].1.as_ref().unwrap_err().to_string();
    assert!(why.contains("kept: its record") && why.contains("cannot be read"), "{why}");
    assert!(catalog.zip_path(unreadable).exists(), "a zip that may be kept stays");
    assert_eq!(pruned[1].0, unrecorded);
    assert!(pruned[1].1.is_ok() && !catalog.zip_path(unrecorded).exists(), "never recorded: never kept");
}
