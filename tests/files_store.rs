//! File mode: walk, read, restore, and refusal of hostile manifests.

use custos::store::files::{
    open_entry, safe_relative, unchanged, walk, FileEntry, FileKind, FilesError, FilesRestorer,
};
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, Permissions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn at(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn set_mtime(path: &Path, ns: u64) {
    let f = File::open(path).unwrap();
    f.set_times(FileTimes::new().set_modified(at(ns))).unwrap();
}

fn write_file(path: &Path, data: &[u8], mode: u32, ns: u64) {
    fs::write(path, data).unwrap();
    set_mtime(path, ns);
    fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift), so the big file does not
/// compress or dedup trivially.
fn noise(len: usize, mut s: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Copies every entry of `from` (walked at `src`) into a new restore at `dst`.
fn restore(src: &Path, entries: &[FileEntry], dst: &Path) {
    let mut r = FilesRestorer::create(dst, false).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    for e in entries {
        match e.kind {
            FileKind::Dir => r.dir(e).unwrap(),
            FileKind::Symlink => r.symlink(e).unwrap(),
            FileKind::File => {
                r.begin_file(e).unwrap();
                let mut f = open_entry(src, e).unwrap();
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    r.write(&buf[..n]).unwrap();
                }
                r.end_file().unwrap();
            }
        }
    }
    r.finish().unwrap();
}

/// Symlink mtimes are recorded but cannot be restored (documented).
fn without_link_mtimes(entries: &[FileEntry]) -> Vec<FileEntry> {
    entries
        .iter()
        .cloned()
        .map(|mut e| {
            if e.kind == FileKind::Symlink {
                e.mtime_ns = 0;
            }
            e
        })
        .collect()
}

const T: u64 = 1_700_000_000_123_456_789;

fn build_tree(src: &Path) -> Vec<u8> {
    let big = noise(5 * 1024 * 1024 + 17, 0x9E37_79B9_7F4A_7C15);
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::create_dir(src.join("empty dir")).unwrap();
    fs::create_dir(src.join("ro")).unwrap();
    fs::create_dir(src.join("a-b")).unwrap();
    write_file(&src.join("a/b/c/big.bin"), &big, 0o644, T + 1);
    write_file(&src.join("empty.txt"), b"", 0o600, T + 2);
    write_file(&src.join("with space.txt"), b"space\n", 0o600, T + 3);
    write_file(&src.join("unicodé-日本.txt"), b"unicode\n", 0o644, T + 4);
    write_file(
        &src.join(OsStr::from_bytes(b"bad\xff\xfename")),
        b"not utf-8\n",
        0o644,
        T + 5,
    );
    write_file(&src.join("100%.txt"), b"percent\n", 0o644, T + 6);
    write_file(&src.join("a/run.sh"), b"#!/bin/sh\necho hi\n", 0o755, T + 7);
    write_file(&src.join("a/b/readonly"), b"frozen\n", 0o444, T + 8);
    write_file(
        &src.join("ro/inside"),
        b"in a read-only dir\n",
        0o640,
        T + 9,
    );
    write_file(&src.join("a-b/x"), b"x", 0o600, T + 10);
    symlink("a/b/c/big.bin", src.join("link-rel")).unwrap();
    symlink("does/not/exist", src.join("dangling")).unwrap();
    symlink(OsStr::from_bytes(b"../\xff"), src.join("a/odd-link")).unwrap();
    // Directory times last, deepest first, then the read-only mode.
    for (d, ns) in [
        ("a/b/c", T + 100),
        ("a/b", T + 101),
        ("a", T + 102),
        ("empty dir", T + 103),
        ("ro", T + 104),
        ("a-b", T + 105),
    ] {
        set_mtime(&src.join(d), ns);
    }
    fs::set_permissions(src.join("ro"), Permissions::from_mode(0o555)).unwrap();
    big
}

#[test]
fn round_trip_keeps_contents_modes_times_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("restored");
    fs::create_dir(&src).unwrap();
    let big = build_tree(&src);

    let w = walk(&src, false).unwrap();
    assert!(w.skipped.is_empty());
    let paths: Vec<&str> = w.entries.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "walk order is sorted by path bytes");
    assert!(paths.contains(&"bad%FF%FEname"));
    assert!(paths.contains(&"100%25.txt"));
    assert_eq!(w.entries.len(), 19);

    let find = |p: &str| w.entries.iter().find(|e| e.path == p).unwrap().clone();
    let bigent = find("a/b/c/big.bin");
    assert_eq!(
        (bigent.kind, bigent.size),
        (FileKind::File, big.len() as u64)
    );
    assert_eq!(bigent.mtime_ns, (T + 1) as i64);
    assert_eq!(find("a/run.sh").mode, 0o755);
    assert_eq!(find("a/b/readonly").mode, 0o444);
    assert_eq!(find("empty.txt").mode, 0o600);
    assert_eq!(find("ro").mode, 0o555);
    assert_eq!(find("ro").kind, FileKind::Dir);
    assert_eq!(find("a").mtime_ns, (T + 102) as i64);
    assert_eq!(find("link-rel").link.as_deref(), Some("a/b/c/big.bin"));
    assert_eq!(find("dangling").link.as_deref(), Some("does/not/exist"));
    assert_eq!(find("a/odd-link").link.as_deref(), Some("../%FF"));
    for e in &w.entries {
        assert!(unchanged(&src, e), "{} reported changed", e.path);
    }

    restore(&src, &w.entries, &dst);

    let back = walk(&dst, false).unwrap();
    assert_eq!(
        without_link_mtimes(&back.entries),
        without_link_mtimes(&w.entries)
    );
    for e in w.entries.iter().filter(|e| e.kind == FileKind::File) {
        let mut a = Vec::new();
        let mut b = Vec::new();
        open_entry(&src, e).unwrap().read_to_end(&mut a).unwrap();
        open_entry(&dst, e).unwrap().read_to_end(&mut b).unwrap();
        assert_eq!(a, b, "contents of {}", e.path);
    }
    assert_eq!(fs::read(dst.join("a/b/c/big.bin")).unwrap(), big);
    assert_eq!(
        fs::read(dst.join(OsStr::from_bytes(b"bad\xff\xfename"))).unwrap(),
        b"not utf-8\n"
    );
    assert_eq!(
        fs::read_link(dst.join("a/odd-link"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"../\xff"
    );
    // The link is restored as a link, and resolves inside the restore.
    assert_eq!(fs::read(dst.join("link-rel")).unwrap(), big);

    // Serde form: lowercase kinds, a stable shape for the manifest.
    let json = serde_json::to_string(&find("dangling")).unwrap();
    assert!(json.contains("\"kind\":\"symlink\""), "{json}");
    let again: FileEntry = serde_json::from_str(&json).unwrap();
    assert_eq!(again, find("dangling"));

    // Let the temporary directory be removed by a non-root user too.
    for r in [&src, &dst] {
        fs::set_permissions(r.join("ro"), Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn safe_relative_rejects_hostile_paths() {
    for bad in [
        "../x",
        "/etc/x",
        "a/../../x",
        "a//b",
        "",
        ".",
        "a/./b",
        "a/",
        "..",
        "a\0b",
        "%2E%2E/x",
        "a%2Fb",
        "a%00",
        "%zz",
        "%ff",
        "%41",
    ] {
        assert!(
            matches!(safe_relative(bad), Err(FilesError::UnsafePath { .. })),
            "{bad:?} was accepted"
        );
    }
    assert_eq!(
        safe_relative("a/b c/bad%FFname").unwrap(),
        vec!["a", "b c", "bad%FFname"]
    );
    assert_eq!(safe_relative("100%25.txt").unwrap(), vec!["100%25.txt"]);
}

fn entry(path: &str, kind: FileKind, size: u64, link: Option<&str>) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind,
        mode: 0o644,
        mtime_ns: T as i64,
        size,
        link: link.map(Into::into),
    }
}

#[test]
fn restorer_refuses_hostile_paths_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("box/root");
    let mut r = FilesRestorer::create(&dst, false).unwrap();
    for bad in ["../x", "/etc/x", "a/../../x", "a//b", "../escape-dir"] {
        assert!(r.begin_file(&entry(bad, FileKind::File, 1, None)).is_err());
        assert!(r.dir(&entry(bad, FileKind::Dir, 0, None)).is_err());
        assert!(r
            .symlink(&entry(bad, FileKind::Symlink, 0, Some("t")))
            .is_err());
    }
    r.finish().unwrap();
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 0);
    // Only the root was created next to nothing else.
    let names: Vec<_> = fs::read_dir(tmp.path().join("box"))
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsStr::new("root").to_os_string()]);
    assert!(!tmp.path().join("x").exists() && !tmp.path().join("box/x").exists());
}

#[test]
fn a_planted_symlink_is_never_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let dst = tmp.path().join("root");
    let mut r = FilesRestorer::create(&dst, false).unwrap();

    // a -> <outside>, then a/evil, a/sub, a/l: all refused.
    let target = outside.to_str().unwrap();
    r.symlink(&entry("a", FileKind::Symlink, 0, Some(target)))
        .unwrap();
    let e = r.begin_file(&entry("a/evil", FileKind::File, 4, None));
    assert!(matches!(e, Err(FilesError::SymlinkInPath { .. })), "{e:?}");
    assert!(r.dir(&entry("a/sub", FileKind::Dir, 0, None)).is_err());
    assert!(r
        .symlink(&entry("a/l", FileKind::Symlink, 0, Some("x")))
        .is_err());
    assert!(r
        .begin_file(&entry("a/deeper/evil", FileKind::File, 4, None))
        .is_err());

    // The classic case: t -> /tmp, then t/<unique>.
    let unique = format!("custos-evil-{}", std::process::id());
    r.symlink(&entry("t", FileKind::Symlink, 0, Some("/tmp")))
        .unwrap();
    assert!(r
        .begin_file(&entry(&format!("t/{unique}"), FileKind::File, 4, None))
        .is_err());

    // s -> <outside>/target, then a file named s: refused, target not created.
    let s_target = outside.join("target");
    r.symlink(&entry(
        "s",
        FileKind::Symlink,
        0,
        Some(s_target.to_str().unwrap()),
    ))
    .unwrap();
    let e = r.begin_file(&entry("s", FileKind::File, 4, None));
    assert!(matches!(e, Err(FilesError::Exists { .. })), "{e:?}");
    assert!(r.dir(&entry("s", FileKind::Dir, 0, None)).is_err());
    r.finish().unwrap();

    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!Path::new("/tmp").join(&unique).exists());
    // The links themselves are still links.
    assert!(fs::symlink_metadata(dst.join("a"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn force_replaces_a_link_without_following_it() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("secret");
    fs::write(&outside, b"keep me").unwrap();
    let dst = tmp.path().join("root");
    fs::create_dir(&dst).unwrap();
    symlink(&outside, dst.join("f")).unwrap();

    assert!(matches!(
        FilesRestorer::create(&dst, false),
        Err(FilesError::RootNotEmpty { .. })
    ));
    let mut r = FilesRestorer::create(&dst, true).unwrap();
    r.begin_file(&entry("f", FileKind::File, 3, None)).unwrap();
    r.write(b"new").unwrap();
    r.end_file().unwrap();
    r.finish().unwrap();
    assert_eq!(fs::read(&outside).unwrap(), b"keep me");
    assert_eq!(fs::read(dst.join("f")).unwrap(), b"new");
    assert!(fs::symlink_metadata(dst.join("f")).unwrap().is_file());

    let file_root = tmp.path().join("plain");
    fs::write(&file_root, b"").unwrap();
    assert!(matches!(
        FilesRestorer::create(&file_root, true),
        Err(FilesError::RootNotDirectory { .. })
    ));
}

#[test]
fn sizes_are_enforced_and_partial_files_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("root");
    let mut r = FilesRestorer::create(&dst, false).unwrap();

    r.begin_file(&entry("short", FileKind::File, 10, None))
        .unwrap();
    r.write(b"12345").unwrap();
    assert!(matches!(
        r.end_file(),
        Err(FilesError::SizeMismatch {
            expected: 10,
            written: 5,
            ..
        })
    ));
    assert!(!dst.join("short").exists());

    r.begin_file(&entry("long", FileKind::File, 3, None))
        .unwrap();
    assert!(matches!(
        r.write(b"12345"),
        Err(FilesError::SizeMismatch { .. })
    ));
    assert!(!dst.join("long").exists());

    // Misuse is an error, not a panic.
    assert!(matches!(r.write(b"x"), Err(FilesError::State(_))));
    assert!(matches!(r.end_file(), Err(FilesError::State(_))));
    assert!(r.dir(&entry("f", FileKind::File, 0, None)).is_err());
    r.begin_file(&entry("open", FileKind::File, 1, None))
        .unwrap();
    assert!(matches!(
        r.dir(&entry("d", FileKind::Dir, 0, None)),
        Err(FilesError::State(_))
    ));
    assert!(matches!(r.finish(), Err(FilesError::State(_))));
}

#[test]
fn special_files_are_errors_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/keep"), b"k").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("d/sock")).unwrap();

    match walk(root, false) {
        Err(FilesError::Special { path, kind }) => {
            assert_eq!(path, "d/sock");
            assert_eq!(kind, "socket");
        }
        other => panic!("expected a special-file error, got {other:?}"),
    }
    let w = walk(root, true).unwrap();
    assert_eq!(w.skipped, vec!["d/sock".to_string()]);
    let paths: Vec<_> = w.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["d", "d/keep"]);

    assert!(matches!(
        walk(&root.join("d/keep"), false),
        Err(FilesError::RootNotDirectory { .. })
    ));
    assert!(matches!(
        walk(&root.join("missing"), false),
        Err(FilesError::Io { .. })
    ));
}

#[test]
fn change_detection_and_guarded_open() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(&outside, b"secret").unwrap();
    write_file(&root.join("d/f"), b"hello", 0o644, T);
    write_file(&root.join("g"), b"world", 0o644, T);
    let w = walk(&root, false).unwrap();
    let f = w.entries.iter().find(|e| e.path == "d/f").unwrap().clone();
    let g = w.entries.iter().find(|e| e.path == "g").unwrap().clone();
    let d = w.entries.iter().find(|e| e.path == "d").unwrap().clone();
    assert!(unchanged(&root, &f) && unchanged(&root, &g) && unchanged(&root, &d));

    // Same size, new mtime: changed.
    write_file(&root.join("d/f"), b"HELLO", 0o644, T + 1);
    assert!(!unchanged(&root, &f));
    // Same mtime, new size: changed.
    write_file(&root.join("d/f"), b"hello!", 0o644, T);
    assert!(!unchanged(&root, &f));
    // Wrong kind for open_entry.
    assert!(matches!(
        open_entry(&root, &d),
        Err(FilesError::BadEntry { .. })
    ));

    // g replaced by a symlink to a file outside the root: not followed.
    fs::remove_file(root.join("g")).unwrap();
    symlink(&outside, root.join("g")).unwrap();
    assert!(!unchanged(&root, &g));
    assert!(matches!(
        open_entry(&root, &g),
        Err(FilesError::Changed { .. })
    ));

    // d replaced by a symlink to a directory with an `f`: not gone through.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    write_file(&other.join("f"), b"hello", 0o644, T);
    fs::remove_dir_all(root.join("d")).unwrap();
    symlink(&other, root.join("d")).unwrap();
    assert!(!unchanged(&root, &f));
    assert!(matches!(
        open_entry(&root, &f),
        Err(FilesError::SymlinkInPath { .. })
    ));
    // A hostile entry path cannot be opened either.
    let mut hostile = f.clone();
    hostile.path = "../outside".into();
    assert!(matches!(
        open_entry(&root, &hostile),
        Err(FilesError::UnsafePath { .. })
    ));
    let mut out = Vec::new();
    File::open(&outside).unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, b"secret");
}

#[test]
fn setuid_and_setgid_are_dropped_unless_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = entry("prog", FileKind::File, 2, None);
    e.mode = 0o6755;
    let mut d = entry("sticky", FileKind::Dir, 0, None);
    d.mode = 0o1777;
    for (keep, want) in [(false, 0o755), (true, 0o6755)] {
        let dst = tmp.path().join(format!("keep-{keep}"));
        let mut r = FilesRestorer::create(&dst, false).unwrap().keep_setid(keep);
        r.begin_file(&e).unwrap();
        r.write(b"#!").unwrap();
        r.end_file().unwrap();
        r.dir(&d).unwrap();
        r.finish().unwrap();
        let w = walk(&dst, false).unwrap();
        assert_eq!(w.entries[0].path, "prog");
        assert_eq!(w.entries[0].mode, want, "keep_setid({keep})");
        assert_eq!(w.entries[1].mode, 0o1777, "sticky bit kept");
    }
}
