//! Finds the files in a target that may hold OpenSSL (its mapped libssl, its executable) and opens them through the target's own mount namespace.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use seam_proto::msg::TlsFile;

/// A file a process maps, as /proc/PID/maps names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub path: String,
    /// Device as the kernel encodes st_dev, from the maps line's major:minor.
    pub dev: u64,
    pub inode: u64,
    pub kind: TlsFile,
}

/// The distinct libssl libraries and the executable among a maps listing. `exe` is the
/// process's executable as /proc/PID/exe names it.
pub fn candidates(maps: &str, exe: &str) -> Vec<Mapped> {
    let mut out: Vec<Mapped> = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(_range), Some(_perms), Some(_offset), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.collect::<Vec<_>>().join(" ");
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or_default();
        let kind = if name.starts_with("libssl.so") {
            TlsFile::Library
        } else if path == exe {
            TlsFile::Executable
        } else {
            continue;
        };
        let (Some(dev), Ok(inode)) = (parse_dev(dev), inode.parse::<u64>()) else {
            continue;
        };
        if inode == 0 || out.iter().any(|m| m.dev == dev && m.inode == inode) {
            continue;
        }
        out.push(Mapped {
            path,
            dev,
            inode,
            kind,
        });
    }
    out
}

/// "fd:01" (hex major:minor) as st_dev.
fn parse_dev(text: &str) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some(libc::makedev(major, minor))
}

/// Opens `m` and only if it is still the file the target maps (a path replaced since is not the
/// library in use). A maps path is the target's own when its mount is outside discover's view (a
/// container's), so it is tried through /proc/PID/root first, then as it reads.
pub fn open(proc_root: &Path, pid: u32, m: &Mapped) -> std::io::Result<File> {
    let in_target = proc_root
        .join(pid.to_string())
        .join("root")
        .join(m.path.trim_start_matches('/'));
    let mut last = std::io::Error::other("the path now names another file than the one mapped");
    for path in [in_target.as_path(), Path::new(&m.path)] {
        match File::open(path) {
            Ok(file) => {
                let meta = file.metadata()?;
                if meta.dev() == m.dev && meta.ino() == m.inode {
                    return Ok(file);
                }
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a20000 r--p 00000000 fd:01 1311 /usr/bin/python3.11
55d0c0a20000-55d0c0b00000 r-xp 00020000 fd:01 1311 /usr/bin/python3.11
7f00a0000000-7f00a0020000 r--p 00000000 fd:01 2222 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f00a0020000-7f00a0080000 r-xp 00020000 fd:01 2222 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f00a1000000-7f00a1200000 r--p 00000000 fd:01 3333 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f00a2000000-7f00a2001000 r--p 00000000 fd:01 4444 /tmp/old/libssl.so.1.1 (deleted)
7f00a3000000-7f00a3001000 rw-p 00000000 00:00 0 [heap]
7f00a4000000-7f00a4001000 r--p 00000000 00:05 5555 /memfd:x (deleted)
";

    #[test]
    fn libssl_and_the_executable_once_each() {
        let c = candidates(MAPS, "/usr/bin/python3.11");
        let got: Vec<(&str, u64, TlsFile)> = c
            .iter()
            .map(|m| (m.path.as_str(), m.inode, m.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/usr/bin/python3.11", 1311, TlsFile::Executable),
                (
                    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                    2222,
                    TlsFile::Library
                ),
            ]
        );
        assert_eq!(c[0].dev, libc::makedev(0xfd, 0x01));
    }

    #[test]
    fn the_open_file_must_be_the_mapped_one() {
        let me = std::process::id();
        let maps = std::fs::read_to_string(format!("/proc/{me}/maps")).expect("own maps");
        let exe = std::fs::read_link("/proc/self/exe").expect("own exe");
        let c = candidates(&maps, &exe.to_string_lossy());
        let own = c
            .iter()
            .find(|m| m.kind == TlsFile::Executable)
            .expect("exe mapped");
        assert!(open(Path::new("/proc"), me, own).is_ok());
        let mut wrong = own.clone();
        wrong.inode += 1;
        assert!(open(Path::new("/proc"), me, &wrong).is_err());
    }
}
