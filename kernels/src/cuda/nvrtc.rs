//! NVRTC (CUDA's run-time compiler) loaded at run time, without the CUDA driver.
//!
//! cudarc's own NVRTC loader only tries the sonames of the CUDA version it was built for
//! (`libnvrtc.so`, `.so.12`, `.so.11`, … for `cuda-12080`) and cannot be pointed at a file, while
//! NVRTC is often installed as the PyPI wheel `nvidia-cuda-nvrtc`, whose library is
//! `site-packages/nvidia/cu13/lib/libnvrtc.so.13`. So this module binds the few stable NVRTC
//! entry points itself and finds the library in this order:
//!
//! 1. `TINYGPTV_NVRTC_LIB`: a file, or a folder holding `libnvrtc.so*`;
//! 2. the dynamic loader's search (`LD_LIBRARY_PATH`, the ld cache) for `libnvrtc.so`,
//!    `libnvrtc.so.13`, `libnvrtc.so.12`, `libnvrtc.so.11.2`;
//! 3. `lib64` under `CUDA_HOME`, `CUDA_PATH`, and `/usr/local/cuda`.
//!
//! The API used here (create / compile / log / PTX / CUBIN) is the same in NVRTC 11.2 to 13.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::CudaError;

type NvrtcProgram = *mut std::ffi::c_void;
type NvrtcResult = c_int;

const NVRTC_SUCCESS: NvrtcResult = 0;

type FnVersion = unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult;
type FnCreate = unsafe extern "C" fn(
    *mut NvrtcProgram,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> NvrtcResult;
type FnCompile = unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> NvrtcResult;
type FnSize = unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult;
type FnData = unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult;
type FnDestroy = unsafe extern "C" fn(*mut NvrtcProgram) -> NvrtcResult;
type FnErrorString = unsafe extern "C" fn(NvrtcResult) -> *const c_char;
type FnNumArchs = unsafe extern "C" fn(*mut c_int) -> NvrtcResult;
type FnArchs = unsafe extern "C" fn(*mut c_int) -> NvrtcResult;

/// A loaded NVRTC library.
pub struct Nvrtc {
    path: PathBuf,
    version: (i32, i32),
    create: FnCreate,
    compile: FnCompile,
    log_size: FnSize,
    log: FnData,
    ptx_size: FnSize,
    ptx: FnData,
    cubin_size: FnSize,
    cubin: FnData,
    destroy: FnDestroy,
    error_string: FnErrorString,
    archs: Vec<i32>,
    // Keeps the function pointers above valid; last so it is dropped last.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Nvrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Nvrtc({} {}.{})",
            self.path.display(),
            self.version.0,
            self.version.1
        )
    }
}

/// What NVRTC should produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// PTX for the virtual architecture `compute_XY` (e.g. 80, 90), JIT-compiled by the driver.
    Ptx(u32),
    /// Machine code (CUBIN) for the real architecture `sm_XY`. Preferred at run time: a driver
    /// rejects PTX from an NVRTC newer than itself, but loads CUBIN of its major version.
    Cubin(u32),
}

impl Target {
    /// The `--gpu-architecture` value.
    pub fn arch_flag(self) -> String {
        match self {
            Target::Ptx(a) => format!("compute_{a}"),
            Target::Cubin(a) => format!("sm_{a}"),
        }
    }
}

/// A compiled module: PTX text or CUBIN bytes (as given to `cuModuleLoadData`, NUL-terminated
/// for PTX), and NVRTC's log (warnings).
#[derive(Debug, Clone)]
pub struct Compiled {
    pub target: Target,
    pub image: Vec<u8>,
    pub log: String,
}

impl Compiled {
    /// The PTX text, for `Target::Ptx`.
    pub fn ptx(&self) -> Option<&str> {
        match self.target {
            Target::Ptx(_) => {
                std::str::from_utf8(self.image.strip_suffix(&[0]).unwrap_or(&self.image)).ok()
            }
            Target::Cubin(_) => None,
        }
    }
}

/// The environment variable naming the NVRTC library (a file or a folder).
pub const NVRTC_LIB_ENV: &str = "TINYGPTV_NVRTC_LIB";

/// Names tried through the dynamic loader, newest first.
const SONAMES: [&str; 4] = [
    "libnvrtc.so",
    "libnvrtc.so.13",
    "libnvrtc.so.12",
    "libnvrtc.so.11.2",
];

impl Nvrtc {
    /// The process-wide NVRTC, found as the module documentation says (searched once).
    pub fn get() -> Result<&'static Nvrtc, CudaError> {
        static NVRTC: OnceLock<Result<Nvrtc, String>> = OnceLock::new();
        NVRTC
            .get_or_init(|| Nvrtc::find().map_err(reason))
            .as_ref()
            .map_err(|e| CudaError::NoNvrtc(e.clone()))
    }

    /// Searches for the library (see the module documentation).
    pub fn find() -> Result<Nvrtc, CudaError> {
        let mut tried = Vec::new();
        if let Some(v) = std::env::var_os(NVRTC_LIB_ENV) {
            let p = PathBuf::from(v);
            let candidates = if p.is_dir() {
                candidates_in(&p)
            } else {
                vec![p.clone()]
            };
            for c in &candidates {
                match Nvrtc::load_from(c) {
                    Ok(n) => return Ok(n),
                    Err(e) => tried.push(reason(e)),
                }
            }
            return Err(CudaError::NoNvrtc(format!(
                "{NVRTC_LIB_ENV}={} does not name a loadable NVRTC library; tried: {}",
                p.display(),
                if tried.is_empty() {
                    "no libnvrtc.so* in that folder".to_string()
                } else {
                    tried.join("; ")
                }
            )));
        }
        for name in SONAMES {
            match Nvrtc::load_from(Path::new(name)) {
                Ok(n) => return Ok(n),
                Err(_) => tried.push(name.to_string()),
            }
        }
        let mut dirs: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
            .iter()
            .filter_map(std::env::var_os)
            .map(|v| PathBuf::from(v).join("lib64"))
            .collect();
        dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
        for d in dirs {
            for c in candidates_in(&d) {
                match Nvrtc::load_from(&c) {
                    Ok(n) => return Ok(n),
                    Err(_) => tried.push(c.display().to_string()),
                }
            }
        }
        Err(CudaError::NoNvrtc(format!(
            "no NVRTC library found (tried {}); install the CUDA toolkit or `pip install \
             nvidia-cuda-nvrtc` and set {NVRTC_LIB_ENV} to its libnvrtc.so.* (for the wheel: \
             site-packages/nvidia/cu13/lib)",
            tried.join(", ")
        )))
    }

    /// Loads NVRTC from `path` (a file path, or a bare soname for the dynamic loader's search).
    pub fn load_from(path: &Path) -> Result<Nvrtc, CudaError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            CudaError::NoNvrtc(format!("{}: {what}: {e}", path.display()))
        };
        // SAFETY: loading NVRTC runs its initialisers, which have no preconditions.
        let lib = unsafe { libloading::Library::new(path.as_os_str()) }.map_err(|e| {
            // libloading's Display drops dlerror's text; its Debug keeps it
            let e = format!("{e:?}");
            err("cannot load", &e)
        })?;
        macro_rules! sym {
            ($name:literal, $ty:ty) => {{
                // SAFETY: the symbol has this C signature in every NVRTC from 11.2 on.
                let s: libloading::Symbol<$ty> = unsafe { lib.get($name) }
                    .map_err(|e| err(concat!("missing ", stringify!($name)), &e))?;
                *s
            }};
        }
        let version_fn = sym!(b"nvrtcVersion\0", FnVersion);
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        let r = unsafe { version_fn(&mut major, &mut minor) };
        if r != NVRTC_SUCCESS {
            return Err(err("nvrtcVersion failed", &r));
        }
        let mut archs = Vec::new();
        // nvrtcGetSupportedArchs exists from NVRTC 11.2; optional all the same
        // SAFETY: symbol types as declared by NVRTC.
        if let (Ok(num), Ok(get)) = unsafe {
            (
                lib.get::<FnNumArchs>(b"nvrtcGetNumSupportedArchs\0"),
                lib.get::<FnArchs>(b"nvrtcGetSupportedArchs\0"),
            )
        } {
            let mut n = 0;
            // SAFETY: out-pointer; then a buffer of the reported length (bounded).
            if unsafe { num(&mut n) } == NVRTC_SUCCESS && (0..=256).contains(&n) {
                let mut v = vec![0; n as usize];
                if unsafe { get(v.as_mut_ptr()) } == NVRTC_SUCCESS {
                    archs = v;
                }
            }
        }
        Ok(Nvrtc {
            path: path.to_path_buf(),
            version: (major, minor),
            create: sym!(b"nvrtcCreateProgram\0", FnCreate),
            compile: sym!(b"nvrtcCompileProgram\0", FnCompile),
            log_size: sym!(b"nvrtcGetProgramLogSize\0", FnSize),
            log: sym!(b"nvrtcGetProgramLog\0", FnData),
            ptx_size: sym!(b"nvrtcGetPTXSize\0", FnSize),
            ptx: sym!(b"nvrtcGetPTX\0", FnData),
            cubin_size: sym!(b"nvrtcGetCUBINSize\0", FnSize),
            cubin: sym!(b"nvrtcGetCUBIN\0", FnData),
            destroy: sym!(b"nvrtcDestroyProgram\0", FnDestroy),
            error_string: sym!(b"nvrtcGetErrorString\0", FnErrorString),
            archs,
            _lib: lib,
        })
    }

    /// Where the library was loaded from (as searched: a path or a soname).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// The `sm_XY` / `compute_XY` numbers this NVRTC can target (empty if it does not say).
    pub fn supported_archs(&self) -> &[i32] {
        &self.archs
    }

    fn error_name(&self, r: NvrtcResult) -> String {
        // SAFETY: NVRTC returns a static string for any code (or null).
        let p = unsafe { (self.error_string)(r) };
        if p.is_null() {
            format!("NVRTC error {r}")
        } else {
            // SAFETY: non-null, NUL-terminated static string.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    }

    /// Compiles one CUDA C file (`name` is used in messages and `#line`s) with in-memory
    /// `headers` (include name, text) for `target`. Extra `options` follow the defaults
    /// (`--gpu-architecture`, `--std=c++17`, `-lineinfo`).
    pub fn compile(
        &self,
        name: &str,
        source: &str,
        headers: &[(&str, &str)],
        target: Target,
        options: &[&str],
    ) -> Result<Compiled, CudaError> {
        let cstr = |s: &str, what: &str| {
            CString::new(s).map_err(|_| CudaError::Compile {
                file: name.to_string(),
                arch: target.arch_flag(),
                log: format!("{what} contains a NUL byte"),
            })
        };
        let c_src = cstr(source, "the source")?;
        let c_name = cstr(name, "the file name")?;
        let mut c_hdr = Vec::with_capacity(headers.len());
        let mut c_hdr_names = Vec::with_capacity(headers.len());
        for (n, text) in headers {
            c_hdr_names.push(cstr(n, "a header name")?);
            c_hdr.push(cstr(text, "a header")?);
        }
        let hdr_ptrs: Vec<*const c_char> = c_hdr.iter().map(|c| c.as_ptr()).collect();
        let hdr_name_ptrs: Vec<*const c_char> = c_hdr_names.iter().map(|c| c.as_ptr()).collect();
        let mut opts = vec![
            format!("--gpu-architecture={}", target.arch_flag()),
            "--std=c++17".to_string(),
            "-lineinfo".to_string(),
        ];
        opts.extend(options.iter().map(|s| s.to_string()));
        let c_opts = opts
            .iter()
            .map(|o| cstr(o, "an option"))
            .collect::<Result<Vec<_>, _>>()?;
        let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|c| c.as_ptr()).collect();

        let fail = |what: &str, r: NvrtcResult, log: String| CudaError::Compile {
            file: name.to_string(),
            arch: target.arch_flag(),
            log: format!(
                "{what}: {}{}",
                self.error_name(r),
                if log.is_empty() {
                    String::new()
                } else {
                    format!("\n{log}")
                }
            ),
        };
        let mut prog: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: all pointers are valid NUL-terminated strings (or arrays of them) that outlive
        // the call; the header arrays have `headers.len()` entries.
        let r = unsafe {
            (self.create)(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                headers.len() as c_int,
                hdr_ptrs.as_ptr(),
                hdr_name_ptrs.as_ptr(),
            )
        };
        if r != NVRTC_SUCCESS {
            return Err(fail("nvrtcCreateProgram", r, String::new()));
        }
        let program = Program { nvrtc: self, prog };
        // SAFETY: a live program and `opts.len()` option strings.
        let r = unsafe { (self.compile)(program.prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        let log = program.read(self.log_size, self.log).unwrap_or_default();
        let log = String::from_utf8_lossy(log.strip_suffix(&[0]).unwrap_or(&log))
            .trim()
            .to_string();
        if r != NVRTC_SUCCESS {
            return Err(fail("compilation failed", r, log));
        }
        let image = match target {
            Target::Ptx(_) => program.read(self.ptx_size, self.ptx),
            Target::Cubin(_) => program.read(self.cubin_size, self.cubin),
        }
        .map_err(|r| fail("reading the compiled module", r, String::new()))?;
        if image.is_empty() {
            return Err(fail("NVRTC produced an empty module", NVRTC_SUCCESS, log));
        }
        Ok(Compiled { target, image, log })
    }
}

/// An NVRTC program, destroyed on drop.
struct Program<'a> {
    nvrtc: &'a Nvrtc,
    prog: NvrtcProgram,
}

impl Program<'_> {
    fn read(&self, size_fn: FnSize, data_fn: FnData) -> Result<Vec<u8>, NvrtcResult> {
        let mut n = 0usize;
        // SAFETY: a live program and an out-pointer.
        let r = unsafe { size_fn(self.prog, &mut n) };
        if r != NVRTC_SUCCESS {
            return Err(r);
        }
        // NVRTC's outputs are small (a few MB at most); refuse absurd sizes
        if n > (1 << 30) {
            return Err(-1);
        }
        let mut buf = vec![0u8; n];
        if n == 0 {
            return Ok(buf);
        }
        // SAFETY: the buffer holds the `n` bytes NVRTC reported.
        let r = unsafe { data_fn(self.prog, buf.as_mut_ptr().cast()) };
        if r != NVRTC_SUCCESS {
            return Err(r);
        }
        Ok(buf)
    }
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe { (self.nvrtc.destroy)(&mut self.prog) };
    }
}

/// The text of a [`CudaError::NoNvrtc`] without its prefix (for nesting in another one).
fn reason(e: CudaError) -> String {
    match e {
        CudaError::NoNvrtc(s) => s,
        other => other.to_string(),
    }
}

/// `libnvrtc.so*` files in `dir` (not the `-builtins` library), newest name first.
fn candidates_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc.so"))
        })
        .collect();
    v.sort();
    v.reverse();
    v
}
