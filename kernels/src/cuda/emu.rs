//! The CPU emulator backend: the CUDA C kernels compiled as host C++ (`kernels/cuda/emu/`) with
//! the system C++ compiler, loaded with `dlopen`, and launched by name with the same parameter
//! arrays as `cuLaunchKernel`. Tests use it to run every kernel against the CPU reference on
//! machines without a GPU; it is slow (one fiber per CUDA thread) and never used for inference.
//!
//! The library is built once per source version into the temporary directory
//! (`tinygptv-cuda-emu-<hash>.so`); the compiler is `$CXX`, else `g++`, else `c++`. It needs the
//! source tree (the files are compiled from `kernels/cuda/` of this crate's manifest directory).

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::sources::{source_hash, Fnv};
use super::CudaError;

const EMU_HEADER: &str = include_str!("../../cuda/emu/cuda_emu.h");
const EMU_MAIN: &str = include_str!("../../cuda/emu/emu.cpp");

type FnLaunch = unsafe extern "C" fn(
    *const c_char,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut *mut c_void,
    *mut c_char,
    c_ulong,
) -> c_int;
type FnHas = unsafe extern "C" fn(*const c_char) -> c_int;

pub(crate) struct EmuBackend {
    launch: FnLaunch,
    has: FnHas,
    _lib: libloading::Library,
}

/// Builds (or reuses) the emulator library and returns its path.
fn library_path() -> Result<PathBuf, CudaError> {
    static PATH: OnceLock<Result<PathBuf, CudaError>> = OnceLock::new();
    PATH.get_or_init(build).clone()
}

/// Builds the library. No C++ compiler at all is [`CudaError::NoCompiler`] (tests skip); a
/// compiler that rejects the sources is [`CudaError::Emulator`] (tests fail).
fn build() -> Result<PathBuf, CudaError> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let main = dir.join("emu").join("emu.cpp");
    if !main.is_file() {
        return Err(CudaError::NoCompiler(format!(
            "{} is missing (the emulator compiles the kernel sources of the source tree)",
            main.display()
        )));
    }
    let mut h = Fnv::new();
    h.write(&source_hash().to_le_bytes());
    h.write(EMU_HEADER.as_bytes());
    h.write(EMU_MAIN.as_bytes());
    let out = std::env::temp_dir().join(format!("tinygptv-cuda-emu-{:016x}.so", h.finish()));
    if out.is_file() {
        return Ok(out);
    }
    let compilers: Vec<String> = match std::env::var("CXX") {
        Ok(c) if !c.trim().is_empty() => vec![c],
        _ => vec!["g++".into(), "c++".into()],
    };
    let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
    let mut missing = Vec::new();
    for cxx in &compilers {
        let result = Command::new(cxx)
            .args([
                "-std=c++17",
                "-O1",
                "-fno-strict-aliasing",
                "-fPIC",
                "-shared",
                "-w",
                "-o",
            ])
            .arg(&tmp)
            .arg(&main)
            .output();
        match result {
            Ok(o) if o.status.success() => {
                std::fs::rename(&tmp, &out).map_err(|e| {
                    CudaError::Emulator(format!("moving {} into place: {e}", tmp.display()))
                })?;
                return Ok(out);
            }
            Ok(o) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(CudaError::Emulator(format!(
                    "{cxx} cannot compile the kernels for the emulator:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                        .chars()
                        .take(4000)
                        .collect::<String>()
                )));
            }
            Err(e) => missing.push(format!("{cxx}: {e}")),
        }
    }
    Err(CudaError::NoCompiler(missing.join("; ")))
}

impl EmuBackend {
    pub(crate) fn new() -> Result<EmuBackend, CudaError> {
        let path = library_path()?;
        // SAFETY: our own library; its initialisers only set up globals.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| CudaError::Emulator(format!("loading {}: {e}", path.display())))?;
        // SAFETY: the symbols have these signatures (emu.cpp).
        let (launch, has) = unsafe {
            let l: libloading::Symbol<FnLaunch> = lib
                .get(b"tinygptv_emu_launch\0")
                .map_err(|e| CudaError::Emulator(e.to_string()))?;
            let h: libloading::Symbol<FnHas> = lib
                .get(b"tinygptv_emu_has\0")
                .map_err(|e| CudaError::Emulator(e.to_string()))?;
            (*l, *h)
        };
        Ok(EmuBackend {
            launch,
            has,
            _lib: lib,
        })
    }

    pub(crate) fn has(&self, kernel: &str) -> bool {
        let name = CString::new(kernel).expect("kernel names have no NUL");
        // SAFETY: a NUL-terminated string.
        unsafe { (self.has)(name.as_ptr()) != 0 }
    }

    pub(crate) fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        let name = CString::new(kernel).expect("kernel names have no NUL");
        let mut err = vec![0 as c_char; 1024];
        // The emulator keeps its launch state in globals: one launch at a time per process.
        static LAUNCH: Mutex<()> = Mutex::new(());
        let _guard = LAUNCH.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `params` holds one pointer per kernel parameter (ops.rs), pointing at values
        // of the parameter types; device pointers are host addresses of live buffers.
        let r = unsafe {
            (self.launch)(
                name.as_ptr(),
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                params.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len() as c_ulong,
            )
        };
        match r {
            0 => Ok(()),
            1 => Err(CudaError::Emulator(format!("no kernel named {kernel}"))),
            _ => {
                // SAFETY: the emulator wrote a NUL-terminated message (snprintf).
                let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
                    .to_string_lossy()
                    .into_owned();
                Err(CudaError::Emulator(msg))
            }
        }
    }
}
