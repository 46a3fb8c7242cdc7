//! Scratch space for one drill: `<state>/scratch/drill-<id>/`, with a lock
//! file `<state>/scratch/drill-<id>.lock` beside it.
//!
//! The drill holds an exclusive lock on its lock file while it runs. The
//! kernel releases that lock when the process ends, however it ends, so a
//! later drill can tell an abandoned scratch directory (lock free: its owner
//! died, e.g. by SIGKILL) from one in use (lock held) and removes only the
//! former. A drill that ends normally, fails or is dropped removes its own
//! directory ([`Scratch`]'s `Drop`).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The prefix of every drill's scratch entry.
pub const PREFIX: &str = "drill-";

/// A drill's scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    lock_path: PathBuf,
    // Held for the life of the drill; closing it releases the lock.
    lock: Option<File>,
}

impl Scratch {
    /// Creates `root/drill-<id>/` and takes its lock. `id` is the drill id
    /// (which already starts with `drill-`).
    pub fn create(root: &Path, id: &str) -> std::io::Result<Scratch> {
        std::fs::create_dir_all(root)?;
        let lock_path = root.join(format!("{id}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        lock.try_lock().map_err(|e| {
            std::io::Error::other(format!(
                "cannot lock {}: {e} (another drill with this id?)",
                lock_path.display()
            ))
        })?;
        let dir = root.join(id);
        std::fs::create_dir(&dir)?;
        Ok(Scratch {
            dir,
            lock_path,
            lock: Some(lock),
        })
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the directory and its lock file now, reporting a failure
    /// (dropping does the same, silently).
    pub fn remove(mut self) -> std::io::Result<()> {
        self.remove_now()
    }

    fn remove_now(&mut self) -> std::io::Result<()> {
        let r = match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        if self.lock.take().is_some() {
            let _ = std::fs::remove_file(&self.lock_path);
        }
        r
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.remove_now() {
            tracing::error!(
                "cannot remove drill scratch space {}: {e}; remove it by hand",
                self.dir.display()
            );
        }
    }
}

/// Removes the scratch directories of drills that are no longer running
/// (their lock is free). Returns the directories removed. Entries in use,
/// and entries not named like a drill's, are left alone.
pub fn sweep(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) || name.ends_with(".lock") {
            continue;
        }
        let dir = e.path();
        let lock_path = root.join(format!("{name}.lock"));
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(f) => f,
            Err(_) => continue,
        };
        if lock.try_lock().is_err() {
            continue; // a running drill owns it
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(
                    "cannot remove abandoned drill scratch {}: {err}",
                    dir.display()
                );
                continue;
            }
        }
        let _ = std::fs::remove_file(&lock_path);
    }
    // Lock files whose directory is gone (a drill killed between the two).
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".lock") {
                if stem.starts_with(PREFIX) && !root.join(stem).exists() {
                    if let Ok(f) = OpenOptions::new().write(true).open(e.path()) {
                        if f.try_lock().is_ok() {
                            let _ = std::fs::remove_file(e.path());
                        }
                    }
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_scratch_is_removed_and_abandoned_one_is_swept() {
        let t = tempfile::tempdir().unwrap();
        let s = Scratch::create(t.path(), "drill-a").unwrap();
        std::fs::write(s.dir().join("x"), b"1").unwrap();
        // In use: the sweep leaves it.
        assert!(sweep(t.path()).unwrap().is_empty());
        assert!(s.dir().exists());
        let dir = s.dir().to_path_buf();
        drop(s);
        assert!(!dir.exists());
        assert!(!t.path().join("drill-a.lock").exists());
        // Abandoned (no lock holder): swept.
        std::fs::create_dir(t.path().join("drill-b")).unwrap();
        std::fs::write(t.path().join("drill-b.lock"), b"").unwrap();
        let removed = sweep(t.path()).unwrap();
        assert_eq!(removed, vec![t.path().join("drill-b")]);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
