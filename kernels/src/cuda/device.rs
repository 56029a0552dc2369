//! [`Device`]: one GPU (or the CPU emulator), its memory ([`DeviceBuffer`], [`DevSlice`]) and
//! kernel launches, with the kernels compiled by NVRTC at first use and cached in memory and
//! on disk.

use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytemuck::Pod;

use super::driver::{CudaBackend, CudaFunction};
use super::emu::EmuBackend;
use super::nvrtc::{Compiled, Nvrtc, Target};
use super::sources::{self, Fnv, SourceFile};
use super::CudaError;

enum Backend {
    Cuda(CudaBackend),
    Emu(EmuBackend),
}

#[derive(Clone, Copy)]
enum Func {
    Cuda(CudaFunction),
    Emu,
}

struct Inner {
    backend: Backend,
    /// Kernel name → loaded function; a whole source file is compiled and loaded at once.
    functions: Mutex<HashMap<&'static str, Func>>,
    /// One line per module compiled or loaded from the disk cache (for `--verbose` output).
    build_log: Mutex<Vec<String>>,
    /// The quantized GEMV variant when forced: 1 + index into `GemvVariant::ALL` (0: chosen
    /// per type).
    gemv_variant: std::sync::atomic::AtomicUsize,
}

/// A CUDA device (or the CPU emulator of the same kernels). Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.describe())
    }
}

/// A kernel argument.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device address (0 for a null pointer).
    Ptr(u64),
    I32(i32),
    F32(f32),
    U64(u64),
}

impl Device {
    /// Opens CUDA device `ordinal`. Fails with [`CudaError::NoDriver`] ("no CUDA driver found")
    /// when `libcuda.so` cannot be loaded, and never panics. Kernels are compiled on first use
    /// (or [`Device::precompile`]).
    pub fn cuda(ordinal: usize) -> Result<Device, CudaError> {
        Ok(Device::with_backend(Backend::Cuda(CudaBackend::new(
            ordinal,
        )?)))
    }

    /// The CPU emulator of the kernels (tests only: slow). Needs a C++ compiler and the source
    /// tree; see `emu.rs`.
    pub fn emulator() -> Result<Device, CudaError> {
        Ok(Device::with_backend(Backend::Emu(EmuBackend::new()?)))
    }

    fn with_backend(backend: Backend) -> Device {
        Device {
            inner: Arc::new(Inner {
                backend,
                functions: Mutex::new(HashMap::new()),
                build_log: Mutex::new(Vec::new()),
                gemv_variant: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// Forces the quantized GEMV variant for every type, or with `None` goes back to the
    /// per-type choice (the benchmark and the tests compare the variants).
    pub fn force_gemv_variant(&self, v: Option<super::GemvVariant>) {
        let code = v.map_or(0, |v| 1 + v.index());
        self.inner
            .gemv_variant
            .store(code, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn forced_gemv_variant(&self) -> Option<super::GemvVariant> {
        match self
            .inner
            .gemv_variant
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            c => Some(super::GemvVariant::ALL[c - 1]),
        }
    }

    /// Whether this is the CPU emulator.
    pub fn is_emulator(&self) -> bool {
        matches!(self.inner.backend, Backend::Emu(_))
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)", or "CPU emulator".
    pub fn describe(&self) -> String {
        match &self.inner.backend {
            Backend::Cuda(c) => format!(
                "{} (sm_{}{}, {} SMs)",
                c.name, c.compute_capability.0, c.compute_capability.1, c.multiprocessors
            ),
            Backend::Emu(_) => "CPU emulator".to_string(),
        }
    }

    /// Compute capability (major, minor); the emulator reports (9, 0).
    pub fn compute_capability(&self) -> (i32, i32) {
        match &self.inner.backend {
            Backend::Cuda(c) => c.compute_capability,
            Backend::Emu(_) => (9, 0),
        }
    }

    /// (free, total) device memory in bytes; the emulator reports (0, 0).
    pub fn memory_info(&self) -> Result<(usize, usize), CudaError> {
        match &self.inner.backend {
            Backend::Cuda(c) => c.memory_info(),
            Backend::Emu(_) => Ok((0, 0)),
        }
    }

    /// Lines describing each module compiled (or read from the disk cache) so far.
    pub fn build_log(&self) -> Vec<String> {
        self.inner
            .build_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    // ---- memory ------------------------------------------------------------------------------

    /// `bytes` of uninitialized device memory (256-byte aligned on CUDA, 16 on the emulator).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, CudaError> {
        match &self.inner.backend {
            Backend::Cuda(c) => {
                let ptr = c.alloc(bytes)?;
                Ok(DeviceBuffer {
                    ptr,
                    len: bytes,
                    owner: Owner::Cuda(self.clone()),
                })
            }
            Backend::Emu(_) => {
                let words = bytes.div_ceil(16).max(1);
                let mut host = Vec::new();
                host.try_reserve_exact(words)
                    .map_err(|_| CudaError::OutOfMemory { bytes })?;
                host.resize(words, 0u128);
                let host = host.into_boxed_slice();
                Ok(DeviceBuffer {
                    ptr: host.as_ptr() as u64,
                    len: bytes,
                    owner: Owner::Host(host),
                })
            }
        }
    }

    /// `bytes` of zeroed device memory.
    pub fn alloc_zeroed(&self, bytes: usize) -> Result<DeviceBuffer, CudaError> {
        let b = self.alloc(bytes)?;
        if let Backend::Cuda(c) = &self.inner.backend {
            c.fill_zero(b.ptr, bytes)?;
        }
        Ok(b)
    }

    /// A new buffer holding `data`.
    pub fn upload<T: Pod>(&self, data: &[T]) -> Result<DeviceBuffer, CudaError> {
        let b = self.alloc(std::mem::size_of_val(data))?;
        self.write(b.slice::<T>(), data)?;
        Ok(b)
    }

    /// Copies `src` into `dst` (equal lengths).
    pub fn write<T: Pod>(&self, dst: DevSlice<'_, T>, src: &[T]) -> Result<(), CudaError> {
        check_len("write: destination", dst.len, src.len())?;
        let bytes: &[u8] = bytemuck::cast_slice(src);
        match &self.inner.backend {
            Backend::Cuda(c) => c.upload(dst.ptr, bytes),
            Backend::Emu(_) => {
                // SAFETY: `dst` lies inside a live emulator buffer (host memory) of this length.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.ptr as *mut u8, bytes.len())
                };
                Ok(())
            }
        }
    }

    /// Device-to-device copy of `src` into `dst` (equal lengths).
    pub fn copy<T: Pod>(
        &self,
        dst: DevSlice<'_, T>,
        src: DevSlice<'_, T>,
    ) -> Result<(), CudaError> {
        check_len("copy: destination", dst.len, src.len)?;
        let bytes = src.len * std::mem::size_of::<T>();
        match &self.inner.backend {
            Backend::Cuda(c) => c.copy_device(dst.ptr, src.ptr, bytes),
            Backend::Emu(_) => {
                // SAFETY: both ranges lie in live emulator buffers; `copy` allows overlap.
                unsafe { std::ptr::copy(src.ptr as *const u8, dst.ptr as *mut u8, bytes) };
                Ok(())
            }
        }
    }

    /// Theoretical memory bandwidth in GB/s (memory clock × bus width), when the driver says.
    pub fn peak_bandwidth_gbs(&self) -> Option<f64> {
        match &self.inner.backend {
            Backend::Cuda(c) => c.peak_bandwidth_gbs(),
            Backend::Emu(_) => None,
        }
    }

    /// Copies `src` into `dst` (equal lengths); waits for the kernels before it.
    pub fn read<T: Pod>(&self, src: DevSlice<'_, T>, dst: &mut [T]) -> Result<(), CudaError> {
        check_len("read: destination", src.len, dst.len())?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        match &self.inner.backend {
            Backend::Cuda(c) => c.download(bytes, src.ptr),
            Backend::Emu(_) => {
                // SAFETY: `src` lies inside a live emulator buffer of this length.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.ptr as *const u8,
                        bytes.as_mut_ptr(),
                        bytes.len(),
                    )
                };
                Ok(())
            }
        }
    }

    /// `src` copied to a new vector.
    pub fn to_vec<T: Pod>(&self, src: DevSlice<'_, T>) -> Result<Vec<T>, CudaError> {
        let mut v = vec![T::zeroed(); src.len];
        self.read(src, &mut v)?;
        Ok(v)
    }

    /// Waits for every launched kernel; reports a kernel fault.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        match &self.inner.backend {
            Backend::Cuda(c) => c.synchronize(),
            Backend::Emu(_) => Ok(()),
        }
    }

    /// Runs `f` and returns its result with the milliseconds the device spent (CUDA events; wall
    /// clock on the emulator).
    pub fn time<R>(&self, f: impl FnOnce() -> Result<R, CudaError>) -> Result<(R, f32), CudaError> {
        match &self.inner.backend {
            Backend::Cuda(c) => c.time(f),
            Backend::Emu(_) => {
                let t = std::time::Instant::now();
                let r = f()?;
                Ok((r, t.elapsed().as_secs_f32() * 1e3))
            }
        }
    }

    // ---- kernels -----------------------------------------------------------------------------

    /// Compiles (or loads from the disk cache) and loads every kernel module now, so that later
    /// timings exclude compilation.
    pub fn precompile(&self) -> Result<(), CudaError> {
        for f in &sources::FILES {
            self.function(f.kernels[0])?;
        }
        Ok(())
    }

    fn function(&self, kernel: &'static str) -> Result<Func, CudaError> {
        let mut funcs = self
            .inner
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(f) = funcs.get(kernel) {
            return Ok(*f);
        }
        let file = sources::file_of(kernel)
            .ok_or_else(|| CudaError::Unsupported(format!("no kernel named {kernel}")))?;
        match &self.inner.backend {
            Backend::Emu(e) => {
                for k in file.kernels {
                    if !e.has(k) {
                        return Err(CudaError::Emulator(format!(
                            "the emulator lacks kernel {k} (add it to emu.cpp)"
                        )));
                    }
                    funcs.insert(k, Func::Emu);
                }
            }
            Backend::Cuda(c) => {
                let (compiled, note) = compile_cached(file, c.compute_capability)?;
                let handles = c.load_module(&compiled.image, file.kernels)?;
                for (k, h) in file.kernels.iter().zip(handles) {
                    funcs.insert(k, Func::Cuda(h));
                }
                self.inner
                    .build_log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!(
                        "{} → {} ({note})",
                        file.name,
                        compiled.target.arch_flag()
                    ));
            }
        }
        funcs.get(kernel).copied().ok_or_else(|| {
            CudaError::Unsupported(format!("kernel {kernel} missing from {}", file.name))
        })
    }

    /// Launches `kernel` with `args` (exactly its parameters, in order). An empty grid is a
    /// no-op.
    pub(crate) fn launch(
        &self,
        kernel: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &[Arg],
    ) -> Result<(), CudaError> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        if grid.0 > i32::MAX as u32 || grid.1 > 65535 || grid.2 > 65535 {
            return Err(CudaError::Shape(format!(
                "{kernel}: grid {grid:?} exceeds the CUDA limits"
            )));
        }
        let f = self.function(kernel)?;
        // One 8-byte slot per parameter; the driver reads sizeof(parameter) bytes from each
        // (little-endian, so 4-byte values sit at the start of their slot).
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p,
                Arg::I32(v) => v as u32 as u64,
                Arg::F32(v) => v.to_bits() as u64,
                Arg::U64(v) => v,
            })
            .collect();
        let mut params: Vec<*mut c_void> =
            slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
        match (&self.inner.backend, f) {
            (Backend::Cuda(c), Func::Cuda(h)) => c.launch(h, grid, block, &mut params),
            (Backend::Emu(e), Func::Emu) => e.launch(kernel, grid, block, &mut params),
            _ => unreachable!("functions are loaded by their own backend"),
        }
    }
}

/// Compiles `file` for a device of compute capability `cc`, through the disk cache. Returns the
/// module and where it came from.
fn compile_cached(file: &SourceFile, cc: (i32, i32)) -> Result<(Compiled, String), CudaError> {
    let nvrtc = Nvrtc::get()?;
    let target = pick_target(nvrtc, cc);
    let mut h = Fnv::new();
    h.write(&sources::source_hash().to_le_bytes());
    h.write(file.name.as_bytes());
    h.write(&nvrtc.version().0.to_le_bytes());
    h.write(&nvrtc.version().1.to_le_bytes());
    h.write(target.arch_flag().as_bytes());
    let stem = file.name.trim_end_matches(".cu");
    let ext = match target {
        Target::Ptx(_) => "ptx",
        Target::Cubin(_) => "cubin",
    };
    let cache_file = cache_dir().map(|d| {
        d.join(format!(
            "{stem}-{}-{:016x}.{ext}",
            target.arch_flag(),
            h.finish()
        ))
    });
    if let Some(p) = &cache_file {
        if let Ok(image) = std::fs::read(p) {
            if !image.is_empty() {
                return Ok((
                    Compiled {
                        target,
                        image,
                        log: String::new(),
                    },
                    format!("cached {}", p.display()),
                ));
            }
        }
    }
    let t = std::time::Instant::now();
    let compiled = nvrtc.compile(file.name, file.source, &sources::HEADERS, target, &[])?;
    let mut note = format!(
        "NVRTC {}.{} from {}, {:.0} ms",
        nvrtc.version().0,
        nvrtc.version().1,
        nvrtc.path().display(),
        t.elapsed().as_secs_f64() * 1e3
    );
    if let Some(p) = &cache_file {
        // best effort: a read-only or full cache only costs a recompilation next time
        let tmp = p.with_extension(format!("{ext}.{}.tmp", std::process::id()));
        let saved = p
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::write(&tmp, &compiled.image))
            .and_then(|_| std::fs::rename(&tmp, p));
        if saved.is_ok() {
            note.push_str(&format!(", saved to {}", p.display()));
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((compiled, note))
}

/// CUBIN for the device's own architecture when NVRTC knows it (a driver loads CUBIN from a
/// newer NVRTC of its major version, but rejects newer PTX); else PTX for the newest
/// architecture NVRTC supports below it.
fn pick_target(nvrtc: &Nvrtc, cc: (i32, i32)) -> Target {
    let arch = (cc.0 * 10 + cc.1).max(0) as u32;
    let archs = nvrtc.supported_archs();
    if archs.is_empty() || archs.contains(&(arch as i32)) {
        return Target::Cubin(arch);
    }
    match archs.iter().copied().filter(|&a| a as u32 <= arch).max() {
        Some(a) => Target::Ptx(a as u32),
        None => Target::Cubin(arch),
    }
}

/// The compiled-module cache folder: `TINYGPTV_CUDA_CACHE` (`off` disables it), else
/// `$XDG_CACHE_HOME/tinygptv/cuda`, else `~/.cache/tinygptv/cuda`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("TINYGPTV_CUDA_CACHE") {
        if v == "off" || v.is_empty() {
            return None;
        }
        return Some(PathBuf::from(v));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tinygptv").join("cuda"))
}

fn check_len(what: &str, expected: usize, actual: usize) -> Result<(), CudaError> {
    if expected != actual {
        return Err(CudaError::Shape(format!(
            "{what}: expected {expected} elements, got {actual}"
        )));
    }
    Ok(())
}

// ---- memory ---------------------------------------------------------------------------------

enum Owner {
    Cuda(Device),
    // Emulator memory: host words (16-byte aligned), freed with the buffer.
    #[allow(dead_code)] // only its address is used, through `ptr`
    Host(Box<[u128]>),
}

/// Device memory, freed on drop (after the kernels launched before the drop, on CUDA: the free
/// is ordered on the same stream).
pub struct DeviceBuffer {
    ptr: u64,
    len: usize,
    owner: Owner,
}

impl DeviceBuffer {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole buffer as elements of `T` (a trailing partial element is left out).
    pub fn slice<T: Pod>(&self) -> DevSlice<'_, T> {
        debug_assert_eq!(self.ptr % std::mem::align_of::<T>() as u64, 0);
        DevSlice {
            ptr: self.ptr,
            len: self.len / std::mem::size_of::<T>(),
            _m: PhantomData,
        }
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} bytes)", self.ptr, self.len)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Owner::Cuda(d) = &self.owner {
            if let Backend::Cuda(c) = &d.inner.backend {
                c.free(self.ptr);
            }
        }
    }
}

/// A typed range of device memory, borrowed from a [`DeviceBuffer`]. Kernels may write through
/// it: device memory is never dereferenced on the host, so copies of a slice do not alias
/// anything Rust tracks.
pub struct DevSlice<'a, T> {
    ptr: u64,
    len: usize,
    _m: PhantomData<(&'a DeviceBuffer, T)>,
}

impl<T> Clone for DevSlice<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevSlice<'_, T> {}

impl<T> std::fmt::Debug for DevSlice<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DevSlice({:#x}, {} × {})",
            self.ptr,
            self.len,
            std::any::type_name::<T>()
        )
    }
}

impl<'a, T> DevSlice<'a, T> {
    /// Length in elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements `start .. start + len`.
    ///
    /// # Panics
    /// If the range is out of bounds (like slice indexing).
    pub fn range(self, start: usize, len: usize) -> DevSlice<'a, T> {
        self.get(start, len).unwrap_or_else(|| {
            panic!(
                "DevSlice::range: {start}..{start}+{len} is out of bounds of {} elements",
                self.len
            )
        })
    }

    /// Elements `start .. start + len`, or `None` when out of bounds.
    pub fn get(self, start: usize, len: usize) -> Option<DevSlice<'a, T>> {
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(DevSlice {
            ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64,
            len,
            _m: PhantomData,
        })
    }

    /// Elements `start ..`.
    pub fn tail(self, start: usize) -> DevSlice<'a, T> {
        self.range(start, self.len.saturating_sub(start))
    }

    pub(crate) fn arg(self) -> Arg {
        Arg::Ptr(self.ptr)
    }

    /// The device address.
    pub fn addr(&self) -> u64 {
        self.ptr
    }
}
