//! Tries, as whatever user it runs as, to open a seam pin and connect to a seam socket; prints what happened.

use std::ffi::CString;

fn obj_get(path: &str) -> String {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        pad: u32,
    }
    let Ok(c) = CString::new(path) else {
        return "bad-path".into();
    };
    let attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    // SAFETY: BPF_OBJ_GET (7) with a zeroed, correctly laid out attr that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            7,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: fd was just returned by the kernel and is owned here.
        unsafe { libc::close(fd as i32) };
        "ok".into()
    } else {
        std::io::Error::last_os_error()
            .raw_os_error()
            .map_or("error".into(), |e| format!("errno{e}"))
    }
}

fn main() {
    let mut out = Vec::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--pin", Some(p)) => out.push(format!("pin:{}", obj_get(p))),
            ("--socket", Some(s)) => out.push(format!(
                "socket:{}",
                match std::os::unix::net::UnixStream::connect(s) {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e
                        .raw_os_error()
                        .map_or("error".into(), |e| format!("errno{e}")),
                }
            )),
            _ => out.push("usage".into()),
        }
    }
    std::process::exit(if out.iter().any(|l| l == "usage") {
        2
    } else {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{}", out.join(" "));
        0
    });
}
