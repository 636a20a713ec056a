//! Atomic file replacement that leaves no file behind when the writer dies.
//!
//! On Linux the new contents go to an anonymous file (`O_TMPFILE`) in the
//! target's directory: a writer killed at any point before `commit` leaves
//! nothing, because the file has no name. `commit` gives it a fresh unique
//! name (`linkat` of `/proc/self/fd/N`; `linkat` cannot replace a file) and
//! renames that over the target, so readers see the old file or the new one.
//! Where `O_TMPFILE` or `/proc` is missing, the file is a named temporary
//! `.NAME.RANDOM.tmp` from the start, as before.
//!
//! A named temporary survives a writer killed between its creation and the
//! rename (always in the fallback, a few microseconds otherwise). Each writer
//! holds an exclusive `flock` on its file while it lives, so the next
//! writer of the same target removes temporaries of exactly that name
//! pattern whose lock it can take (the writer is gone) and that were not
//! modified for [`STALE_AFTER`] (a writer that has just created its file,
//! or one that predates the lock, is left alone).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::crypto;
use crate::error::{Error, Result};
use crate::keys::b64e;

/// Random bytes in a temporary name: 8, as 11 base64url characters.
const RANDOM_LEN: usize = 8;
const RANDOM_CHARS: usize = 11;
/// How long an unlocked temporary must have been untouched to be removed.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// Attempts at a fresh temporary name before giving up (each is 64 random bits).
const NAME_ATTEMPTS: usize = 4;

/// A file that replaces `target` on `commit`, and otherwise leaves nothing.
pub struct AtomicFile {
    /// The open file being written (mode 0600: it may hold plaintext weights).
    pub file: File,
    dir: PathBuf,
    name: String,
    target: PathBuf,
    /// The named temporary, once there is one (from the start in the fallback).
    tmp: Option<PathBuf>,
    done: bool,
}

impl AtomicFile {
    /// Creates the new file in the directory of `target`, first removing
    /// stale temporaries of `target` left by writers that died.
    pub fn create(target: &Path) -> Result<AtomicFile> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{} is not a file path", target.display()))
            })?
            .to_string_lossy()
            .into_owned();
        remove_stale(&dir, &name);
        let (file, tmp) = match anonymous(&dir) {
            Some(file) => (file, None),
            None => {
                let (file, tmp) = create_named(&dir, &name)?;
                (file, Some(tmp))
            }
        };
        // Held until the file is closed (or the process dies): tells
        // `remove_stale` of other writers that this one is alive. Best
        // effort: a file system without flock still gets its file (with
        // the age rule alone to protect it).
        let _ = file.try_lock();
        Ok(AtomicFile {
            file,
            dir,
            name,
            target: target.to_path_buf(),
            tmp,
            done: false,
        })
    }

    /// Syncs the file (with `fsync`) and puts it in place of the target.
    pub fn commit(mut self, fsync: bool) -> Result<()> {
        if fsync {
            self.file.sync_all()?;
        }
        if self.tmp.is_none() {
            self.tmp = Some(self.link_anonymous()?);
        }
        let tmp = self.tmp.as_ref().expect("named above");
        fs::rename(tmp, &self.target)?;
        self.done = true;
        Ok(())
    }

    /// Gives the anonymous file a fresh temporary name in its directory.
    #[cfg(target_os = "linux")]
    fn link_anonymous(&self) -> Result<PathBuf> {
        use rustix::fs::CWD;
        use std::os::fd::AsRawFd;
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        for _ in 0..NAME_ATTEMPTS {
            let tmp = temp_path(&self.dir, &self.name)?;
            match rustix::fs::linkat(
                CWD,
                proc_path.as_str(),
                CWD,
                &tmp,
                rustix::fs::AtFlags::SYMLINK_FOLLOW,
            ) {
                Ok(()) => return Ok(tmp),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
        }
        Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists).into())
    }

    /// Only Linux makes anonymous files; elsewhere the file is named from the start.
    #[cfg(not(target_os = "linux"))]
    fn link_anonymous(&self) -> Result<PathBuf> {
        let _ = (&self.dir, &self.name);
        unreachable!("anonymous files exist only on Linux")
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            if let Some(tmp) = &self.tmp {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

/// An anonymous file in `dir`, where the system has `O_TMPFILE` and `/proc`
/// to name it later; None otherwise (the caller falls back to a named file).
#[cfg(target_os = "linux")]
fn anonymous(dir: &Path) -> Option<File> {
    use rustix::fs::{Mode, OFlags, CWD};
    use std::os::fd::AsRawFd;
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(CWD, dir, flags, Mode::from_raw_mode(0o600)).ok()?;
    let file = File::from(fd);
    // Without /proc the file could never be linked: find out now, not at commit.
    fs::symlink_metadata(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    Some(file)
}

#[cfg(not(target_os = "linux"))]
fn anonymous(_dir: &Path) -> Option<File> {
    None
}

fn create_named(dir: &Path, name: &str) -> Result<(File, PathBuf)> {
    for _ in 0..NAME_ATTEMPTS {
        let tmp = temp_path(dir, name)?;
        let mut options = OpenOptions::new();
        options.write(true).read(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists).into())
}

fn temp_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut rnd = [0u8; RANDOM_LEN];
    crypto::fill_random(&mut rnd)?;
    Ok(dir.join(format!(".{name}.{}.tmp", b64e(&rnd))))
}

/// Whether `file_name` is one of our temporaries of target `name`:
/// `.NAME.` + 11 base64url characters + `.tmp`, nothing else.
fn is_temp_of(file_name: &OsStr, name: &str) -> bool {
    let Some(s) = file_name.to_str() else {
        return false;
    };
    let Some(rest) = s.strip_prefix('.').and_then(|r| r.strip_prefix(name)) else {
        return false;
    };
    let Some(random) = rest.strip_prefix('.').and_then(|r| r.strip_suffix(".tmp")) else {
        return false;
    };
    random.len() == RANDOM_CHARS
        && random
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Removes temporaries of target `name` in `dir` whose writer is gone
/// (their lock is free) and that were untouched for [`STALE_AFTER`]. Best
/// effort: a failure here never fails the write.
fn remove_stale(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if !is_temp_of(&entry.file_name(), name) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if !meta.file_type().is_file() || !old {
            continue;
        }
        let Some(file) = open_nofollow(&path) else {
            continue;
        };
        if file.try_lock().is_ok() {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Opens an existing temporary for reading, refusing a name that has been
/// swapped for a link since it was checked (Unix `O_NOFOLLOW`; Windows
/// opens the link itself, and the file-type check just before is the guard).
fn open_nofollow(path: &Path) -> Option<File> {
    #[cfg(unix)]
    {
        use rustix::fs::{Mode, OFlags, CWD};
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        rustix::fs::openat(CWD, path, flags, Mode::empty())
            .ok()
            .map(File::from)
    }
    #[cfg(not(unix))]
    {
        File::open(path).ok()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> PathBuf {
        let mut rnd = [0u8; 8];
        crypto::fill_random(&mut rnd).unwrap();
        let d = std::env::temp_dir().join(format!("ct-atomic-{}", b64e(&rnd)));
        fs::create_dir(&d).unwrap();
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn age(path: &Path) {
        let past = SystemTime::now() - STALE_AFTER - Duration::from_secs(5);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }

    #[test]
    fn nothing_named_until_commit() {
        let d = dir();
        let target = d.join("m.safetensors");
        let mut f = AtomicFile::create(&target).unwrap();
        f.file.write_all(b"new").unwrap();
        if cfg!(target_os = "linux") {
            assert!(names(&d).is_empty(), "{:?}", names(&d));
        }
        f.commit(true).unwrap();
        assert_eq!(names(&d), ["m.safetensors"]);
        assert_eq!(fs::read(&target).unwrap(), b"new");
        // Replaces an existing target; an uncommitted one leaves it as it was.
        let mut f = AtomicFile::create(&target).unwrap();
        f.file.write_all(b"newer").unwrap();
        f.commit(false).unwrap();
        drop(AtomicFile::create(&target).unwrap());
        assert_eq!(names(&d), ["m.safetensors"]);
        assert_eq!(fs::read(&target).unwrap(), b"newer");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_temporaries_of_the_target_only_are_removed() {
        let d = dir();
        let target = d.join("m.safetensors");
        let stale = d.join(".m.safetensors.AAAAAAAAAAA.tmp");
        let fresh = d.join(".m.safetensors.BBBBBBBBBBB.tmp");
        let locked = d.join(".m.safetensors.CCCCCCCCCCC.tmp");
        let others = [
            ".m.safetensors.short.tmp",
            ".other.safetensors.DDDDDDDDDDD.tmp",
            "m.safetensors.EEEEEEEEEEE.tmp",
            ".m.safetensors.FFFFFFFFF+F.tmp",
        ];
        for p in [&stale, &fresh, &locked] {
            fs::write(p, b"x").unwrap();
        }
        for o in others {
            fs::write(d.join(o), b"x").unwrap();
            age(&d.join(o));
        }
        age(&stale);
        age(&locked);
        let holder = File::open(&locked).unwrap();
        holder.try_lock().unwrap();
        let link = d.join(".m.safetensors.GGGGGGGGGGG.tmp");
        std::os::unix::fs::symlink(&stale, &link).unwrap();
        AtomicFile::create(&target).unwrap().commit(false).unwrap();
        let left = names(&d);
        assert!(
            !left.contains(&".m.safetensors.AAAAAAAAAAA.tmp".to_string()),
            "{left:?}"
        );
        for kept in [
            ".m.safetensors.BBBBBBBBBBB.tmp",
            ".m.safetensors.CCCCCCCCCCC.tmp",
            ".m.safetensors.GGGGGGGGGGG.tmp",
        ]
        .iter()
        .chain(others.iter())
        {
            assert!(left.contains(&kept.to_string()), "{kept} removed: {left:?}");
        }
        drop(holder);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn named_fallback_matches_the_stale_pattern() {
        let d = dir();
        let (file, tmp) = create_named(&d, "m.safetensors").unwrap();
        assert!(
            is_temp_of(tmp.file_name().unwrap(), "m.safetensors"),
            "{tmp:?}"
        );
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn pattern() {
        assert!(is_temp_of(OsStr::new(".a.b.abcdefghij_.tmp"), "a.b"));
        assert!(!is_temp_of(OsStr::new(".a.b.abcdefghij_.tmp"), "a"));
        assert!(!is_temp_of(OsStr::new(".a.b.abcdefghij_.tmpx"), "a.b"));
        assert!(!is_temp_of(OsStr::new("a.b.abcdefghij_.tmp"), "a.b"));
    }
}
