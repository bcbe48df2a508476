//! The TLS uprobe programs, loaded through the system libbpf (aya 0.14 cannot load a program for uprobe_multi links) onto the capture's own maps.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use aya::maps::{Map, MapData};
use aya::Ebpf;

/// `BPF_TRACE_UPROBE_MULTI` and its return flag (linux/bpf.h, Linux 6.6+).
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;
const BPF_LINK_CREATE: c_int = 28;

#[repr(C)]
struct BpfObject {
    _private: [u8; 0],
}
#[repr(C)]
struct BpfMap {
    _private: [u8; 0],
}
#[repr(C)]
struct BpfProgram {
    _private: [u8; 0],
}

#[link(name = "bpf")]
unsafe extern "C" {
    fn bpf_object__open_mem(buf: *const c_void, size: usize, opts: *const c_void)
        -> *mut BpfObject;
    fn bpf_object__next_map(obj: *const BpfObject, prev: *const BpfMap) -> *mut BpfMap;
    fn bpf_map__name(map: *const BpfMap) -> *const c_char;
    fn bpf_map__reuse_fd(map: *mut BpfMap, fd: c_int) -> c_int;
    fn bpf_object__next_program(obj: *const BpfObject, prev: *const BpfProgram) -> *mut BpfProgram;
    fn bpf_program__name(prog: *const BpfProgram) -> *const c_char;
    fn bpf_program__set_autoload(prog: *mut BpfProgram, autoload: bool) -> c_int;
    fn bpf_program__set_expected_attach_type(prog: *mut BpfProgram, t: u32) -> c_int;
    fn bpf_object__load(obj: *mut BpfObject) -> c_int;
    fn bpf_program__fd(prog: *const BpfProgram) -> c_int;
    fn bpf_object__close(obj: *mut BpfObject);
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("libbpf could not open the embedded capture object (errno {0})")]
    Open(i32),
    #[error("map {0} of the capture object is not among the loader's maps")]
    MissingMap(String),
    #[error("libbpf refused map {name}: error {code}")]
    Reuse { name: String, code: i32 },
    #[error("loading the TLS programs failed: error {0} (the verifier's log is above)")]
    Load(i32),
    #[error("program {0} missing from the capture object")]
    MissingProgram(&'static str),
}

/// The loaded programs, kept for the daemon's life; closing the object unloads them.
#[derive(Debug)]
pub struct UprobePrograms {
    obj: *mut BpfObject,
    fds: HashMap<&'static str, RawFd>,
}

// SAFETY: the libbpf object is only touched by the thread that holds this value, and libbpf
// keeps no thread-bound state in it.
unsafe impl Send for UprobePrograms {}

impl Drop for UprobePrograms {
    fn drop(&mut self) {
        // SAFETY: obj came from bpf_object__open_mem and is closed once.
        unsafe { bpf_object__close(self.obj) }
    }
}

/// The aya map behind any of the kinds the capture object declares.
pub fn map_data(map: &Map) -> Option<&MapData> {
    Some(match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::RingBuf(m)
        | Map::SkStorage(m)
        // aya 0.14 has no type for task storage
        | Map::Unsupported(m) => m,
        _ => return None,
    })
}

/// The aya map a libbpf map name refers to: libbpf prefixes internal maps (`.rodata`) with
/// part of the object's name.
fn matching_fd(ebpf: &Ebpf, libbpf_name: &str) -> Option<RawFd> {
    ebpf.maps().find_map(|(name, map)| {
        let same = name == libbpf_name || (name.starts_with('.') && libbpf_name.ends_with(name));
        same.then(|| map_data(map).map(|d| d.fd().as_fd().as_raw_fd()))
            .flatten()
    })
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libbpf returns NUL-terminated names that live as long as the object.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl UprobePrograms {
    /// Loads `programs` of the embedded `object` for uprobe_multi, every map shared with the
    /// capture `ebpf` already loaded (so events, connections and targets are one set).
    pub fn load(object: &[u8], ebpf: &Ebpf, programs: &[&'static str]) -> Result<Self, LoadError> {
        // SAFETY: object is a valid buffer for the call; libbpf copies what it keeps.
        let obj =
            unsafe { bpf_object__open_mem(object.as_ptr().cast(), object.len(), std::ptr::null()) };
        if obj.is_null() {
            return Err(LoadError::Open(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ));
        }
        let mut loaded = Self {
            obj,
            fds: HashMap::new(),
        };
        // SAFETY (this block): obj is open; the map and program pointers come from its own
        // iterators and stay valid until it is closed.
        unsafe {
            let mut map = bpf_object__next_map(obj, std::ptr::null());
            while !map.is_null() {
                let name = text(bpf_map__name(map));
                let fd =
                    matching_fd(ebpf, &name).ok_or_else(|| LoadError::MissingMap(name.clone()))?;
                let code = bpf_map__reuse_fd(map, fd);
                if code != 0 {
                    return Err(LoadError::Reuse { name, code });
                }
                map = bpf_object__next_map(obj, map);
            }
            let mut prog = bpf_object__next_program(obj, std::ptr::null());
            while !prog.is_null() {
                let name = text(bpf_program__name(prog));
                let wanted = programs.contains(&name.as_str());
                bpf_program__set_autoload(prog, wanted);
                if wanted {
                    bpf_program__set_expected_attach_type(prog, BPF_TRACE_UPROBE_MULTI);
                }
                prog = bpf_object__next_program(obj, prog);
            }
            let code = bpf_object__load(obj);
            if code != 0 {
                return Err(LoadError::Load(code));
            }
            let mut prog = bpf_object__next_program(obj, std::ptr::null());
            while !prog.is_null() {
                let name = text(bpf_program__name(prog));
                if let Some(&wanted) = programs.iter().find(|p| **p == name) {
                    loaded.fds.insert(wanted, bpf_program__fd(prog));
                }
                prog = bpf_object__next_program(obj, prog);
            }
        }
        for p in programs {
            if loaded.fds.get(p).is_none_or(|fd| *fd < 0) {
                return Err(LoadError::MissingProgram(p));
            }
        }
        Ok(loaded)
    }

    /// Attaches `program` at each of `offsets` in the file open as `file`, with a cookie per
    /// offset, for process `pid` alone (the kernel places the breakpoints in it only, so other
    /// processes running the file pay nothing) or, with 0, for every process that runs it; the
    /// link lasts until the returned fd is closed.
    pub fn attach(
        &self,
        program: &'static str,
        file: &impl AsFd,
        offsets: &[u64],
        cookies: &[u64],
        on_return: bool,
        pid: u32,
    ) -> std::io::Result<OwnedFd> {
        let prog_fd = *self
            .fds
            .get(program)
            .ok_or_else(|| std::io::Error::other(format!("program {program} not loaded")))?;
        if offsets.is_empty() || offsets.len() != cookies.len() {
            return Err(std::io::Error::other(
                "one cookie per offset, at least one offset",
            ));
        }
        // The kernel resolves the path itself: the descriptor discover handed over, not a name.
        let path = CString::new(format!("/proc/self/fd/{}", file.as_fd().as_raw_fd()))
            .map_err(std::io::Error::other)?;
        // union bpf_attr for BPF_LINK_CREATE with its uprobe_multi member.
        #[repr(C)]
        #[derive(Default)]
        struct LinkCreate {
            prog_fd: u32,
            target_fd: u32,
            attach_type: u32,
            flags: u32,
            path: u64,
            offsets: u64,
            ref_ctr_offsets: u64,
            cookies: u64,
            cnt: u32,
            multi_flags: u32,
            pid: u32,
            pad: [u32; 5],
        }
        let attr = LinkCreate {
            prog_fd: prog_fd as u32,
            attach_type: BPF_TRACE_UPROBE_MULTI,
            path: path.as_ptr() as u64,
            offsets: offsets.as_ptr() as u64,
            cookies: cookies.as_ptr() as u64,
            cnt: offsets.len() as u32,
            multi_flags: if on_return {
                BPF_F_UPROBE_MULTI_RETURN
            } else {
                0
            },
            pid,
            ..LinkCreate::default()
        };
        // SAFETY: attr is a complete, initialised bpf_attr prefix of the size passed; the
        // pointers in it outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_CREATE,
                &attr as *const LinkCreate,
                std::mem::size_of::<LinkCreate>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new link descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}
