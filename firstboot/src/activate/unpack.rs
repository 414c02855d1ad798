//! Unpacking a bundle while it is verified: a [`Sink`] that writes the members the streaming reader
//! lets through into a staging directory, never following links, fsyncing every file and directory.
//! The caller renames the directory into place only when the whole report is clean.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use kiln_bundle::error::{Error, IoContext, Result};
use kiln_bundle::index::{FileRecord, Index, INDEX_NAME};
use kiln_bundle::reader::Sink;

/// The channel to the fsync thread, and the thread.
type Syncer = (mpsc::Sender<(PathBuf, File)>, std::thread::JoinHandle<Result<()>>);

pub struct Unpack {
    dir: PathBuf,
    dirs: Vec<PathBuf>,
    buf: Vec<u8>,
    /// Files are fsynced on a second thread while the next ones are written.
    syncer: Option<Syncer>,
}

impl Unpack {
    /// Stage into `dir`, which must not exist yet.
    pub fn new(dir: &Path) -> Result<Unpack> {
        fs::create_dir(dir).at(dir)?;
        let (tx, rx) = mpsc::channel::<(PathBuf, File)>();
        let handle = std::thread::spawn(move || -> Result<()> {
            let mut first = Ok(());
            for (path, f) in rx {
                if first.is_ok() {
                    first = f.sync_all().at(&path);
                }
            }
            first
        });
        Ok(Unpack {
            dir: dir.to_path_buf(),
            dirs: vec![dir.to_path_buf()],
            buf: vec![0; 1 << 20],
            syncer: Some((tx, handle)),
        })
    }

    /// Wait for every file's fsync, then fsync every directory written, innermost first, so the
    /// tree survives a crash once renamed.
    pub fn finish(mut self) -> Result<()> {
        if let Some((tx, handle)) = self.syncer.take() {
            drop(tx);
            handle
                .join()
                .map_err(|_| Error::bundle(self.dir.display().to_string(), "the fsync thread panicked"))??;
        }
        for d in self.dirs.iter().rev() {
            File::open(d).and_then(|f| f.sync_all()).at(d)?;
        }
        Ok(())
    }
}

impl Drop for Unpack {
    /// An unpack that was abandoned (a bad bundle) still waits for its fsync thread, so no thread
    /// outlives the staging directory it writes to.
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.syncer.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

impl Sink for Unpack {
    fn begin(&mut self, index: &Index) -> Result<()> {
        // The index itself is kept, so a later run can tell which bundle this directory holds.
        let p = self.dir.join(INDEX_NAME);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&p)
            .at(&p)?;
        f.write_all(&index.to_json()).at(&p)?;
        f.sync_all().at(&p)
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let p = self.dir.join(path);
        fs::create_dir(&p).at(&p)?;
        self.dirs.push(p);
        Ok(())
    }

    fn file(&mut self, rec: &FileRecord, data: &mut dyn Read) -> Result<()> {
        let p = self.dir.join(&rec.path);
        // O_EXCL|O_NOFOLLOW: never write through anything that is already there.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .mode(0o600)
            .open(&p)
            .at(&p)?;
        loop {
            let n = data
                .read(&mut self.buf)
                .map_err(|e| Error::bundle(rec.path.clone(), format!("read error: {e}")))?;
            if n == 0 {
                break;
            }
            f.write_all(&self.buf[..n]).at(&p)?;
        }
        // The mode is set after the content, so a setuid bit never sits on a half-written file.
        f.set_permissions(fs::Permissions::from_mode(rec.mode.0)).at(&p)?;
        match &self.syncer {
            Some((tx, _)) if tx.send((p.clone(), f)).is_ok() => Ok(()),
            _ => Err(Error::bundle(p.display().to_string(), "the fsync thread stopped")),
        }
    }

    fn symlink(&mut self, rec: &FileRecord, target: &str) -> Result<()> {
        let p = self.dir.join(&rec.path);
        std::os::unix::fs::symlink(target, &p).at(&p)
    }
}
