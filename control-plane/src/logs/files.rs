//! On-disk log files of one service: JSON lines in `<dir>/<service_id>/current.log`, rotated by
//! size into `1.log` (newest) .. `<max_files-1>.log` (oldest); older files are deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::LogEntry;

const CURRENT: &str = "current.log";

/// Appends to one service's current file and rotates it.
pub(super) struct Writer {
    dir: PathBuf,
    file: File,
    size: u64,
}

impl Writer {
    pub(super) fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(CURRENT))?;
        let size = file.metadata()?.len();
        Ok(Writer { dir, file, size })
    }

    /// Writes one JSON line, rotating first when it would push the file past `max_bytes`.
    pub(super) fn append(
        &mut self,
        line: &[u8],
        max_bytes: u64,
        max_files: usize,
    ) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > max_bytes {
            self.rotate(max_files)?;
        }
        // One write per line (line + newline) so concurrent readers never see half a record
        // except at the very end of the file, which they skip.
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self, max_files: usize) -> io::Result<()> {
        let keep_rotated = max_files.saturating_sub(1);
        if keep_rotated == 0 {
            // Only the current file is kept: start it over.
            self.file = File::create(self.dir.join(CURRENT))?;
            self.file = OpenOptions::new()
                .append(true)
                .open(self.dir.join(CURRENT))?;
            self.size = 0;
            return Ok(());
        }
        let _ = fs::remove_file(self.dir.join(format!("{keep_rotated}.log")));
        for n in (1..keep_rotated).rev() {
            let from = self.dir.join(format!("{n}.log"));
            if from.exists() {
                fs::rename(&from, self.dir.join(format!("{}.log", n + 1)))?;
            }
        }
        fs::rename(self.dir.join(CURRENT), self.dir.join("1.log"))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(CURRENT))?;
        self.size = 0;
        Ok(())
    }
}

/// The service's files, oldest first.
pub(super) fn files_oldest_first(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n: u32 = name.strip_suffix(".log")?.parse().ok()?;
                Some((n, e.path()))
            })
            .collect(),
        Err(_) => return Vec::new(),
    };
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let current = dir.join(CURRENT);
    if current.exists() {
        out.push(current);
    }
    out
}

/// Calls `f` with every parseable entry of the service, oldest first. Unparseable lines (a
/// half-written last line, foreign text) are skipped.
pub(super) fn for_each_entry(dir: &Path, mut f: impl FnMut(LogEntry)) {
    for path in files_oldest_first(dir) {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        for line in BufReader::new(file).split(b'\n') {
            let Ok(line) = line else { break };
            if let Ok(entry) = serde_json::from_slice::<LogEntry>(&line) {
                f(entry);
            }
        }
    }
}
