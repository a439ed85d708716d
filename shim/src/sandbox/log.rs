//! Logs of a sandbox's helpers (the guest console through the VMM, and
//! virtiofsd's messages), kept under a size bound. A guest can print without
//! end on its console; `/run` is memory. Each log is fed through a pipe that
//! the shim reads: when the file reaches the bound, it becomes `<name>.1`
//! (replacing the previous one) and a new file starts. So at most twice the
//! bound is on disk per log, and the newest output is always kept, with the
//! one before it (the boot, for a log that fills slowly).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// A pipe whose far end a helper writes its log to.
pub struct LogPipe {
    /// The write end, for the helper's stdout and stderr.
    pub writer: OwnedFd,
    /// Copies until every writer has closed; its result is the bytes kept.
    pub copier: JoinHandle<io::Result<u64>>,
}

/// Starts copying what is written to a new pipe into `path`, rotating at
/// `max_bytes`. The file is created mode 0600: a guest's console may hold
/// what a container printed.
pub fn capped_log(path: &Path, max_bytes: u64) -> io::Result<LogPipe> {
    let (read, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let path = path.to_owned();
    let copier = tokio::spawn(copy_capped(reader, path, max_bytes.max(1)));
    Ok(LogPipe { writer, copier })
}

async fn copy_capped<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    path: PathBuf,
    max_bytes: u64,
) -> io::Result<u64> {
    let rotated = rotated_path(&path);
    let mut file = open_log(&path).await?;
    let mut size = file.metadata().await?.len();
    let mut kept = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            if size >= max_bytes {
                file.flush().await?;
                drop(file);
                tokio::fs::rename(&path, &rotated).await?;
                file = open_log(&path).await?;
                size = 0;
            }
            let room = usize::try_from(max_bytes - size).unwrap_or(usize::MAX);
            let (now, later) = chunk.split_at(room.min(chunk.len()));
            file.write_all(now).await?;
            size += now.len() as u64;
            kept += now.len() as u64;
            chunk = later;
        }
    }
    file.flush().await?;
    Ok(kept)
}

async fn open_log(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await
}

/// `<path>.1`, where the previous part of a rotated log is kept.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn a_gibibyte_of_console_output_leaves_a_bounded_log_with_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let max = 1 << 20;
        let LogPipe { writer, copier } = capped_log(&path, max).unwrap();
        let total: u64 = 1 << 30;
        let writing = std::thread::spawn(move || {
            let mut pipe = std::fs::File::from(writer);
            let line = [b'x'; 4096];
            for _ in 0..(total / 4096 - 1) {
                pipe.write_all(&line).unwrap();
            }
            pipe.write_all(&[b'e'; 4095]).unwrap();
            pipe.write_all(b"\n").unwrap();
        });
        let kept = copier.await.unwrap().unwrap();
        writing.join().unwrap();
        assert_eq!(kept, total);
        let current = std::fs::metadata(&path).unwrap().len();
        let previous = std::fs::metadata(rotated_path(&path)).unwrap().len();
        assert!(current <= max && previous == max, "{current} {previous}");
        let tail = std::fs::read(&path).unwrap();
        assert!(tail.ends_with(&[[b'e'; 4095].as_slice(), b"\n"].concat()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[tokio::test]
    async fn a_small_log_is_kept_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virtiofsd.log");
        let LogPipe { writer, copier } = capped_log(&path, 1 << 20).unwrap();
        std::fs::File::from(writer).write_all(b"warning\n").unwrap();
        copier.await.unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "warning\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!rotated_path(&path).exists());
    }
}
