//! The real GPU backend: the CUDA driver API through `cudarc` (loaded at run time).
//!
//! Only cudarc's thin `result` layer is used (raw device pointers, the legacy default stream,
//! `cuLaunchKernel` with a parameter array), so the same launch code serves the emulator.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, DriverError};

use super::CudaError;

/// Whether the CUDA driver library (`libcuda.so`) can be loaded. Never panics; cudarc panics
/// on first use of the driver when it cannot, so every entry point checks this first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { sys::is_culib_present() }
}

fn drv(what: &str, e: DriverError) -> CudaError {
    CudaError::Driver {
        what: what.to_string(),
        err: format!("{e:?}"),
    }
}

/// Number of CUDA devices (0 when there is no driver or no device).
pub fn device_count() -> usize {
    if !driver_present() || result::init().is_err() {
        return 0;
    }
    result::device::get_count().map_or(0, |n| n.max(0) as usize)
}

pub(crate) struct CudaBackend {
    ctx: Arc<CudaContext>,
    pub(crate) name: String,
    pub(crate) compute_capability: (i32, i32),
    pub(crate) multiprocessors: i32,
}

/// A loaded module's function handle (plain driver handles; the driver allows their use from
/// any thread with the context current).
#[derive(Clone, Copy)]
pub(crate) struct CudaFunction(sys::CUfunction);
// SAFETY: CUfunction handles are process-wide and usable from any thread (the context is made
// current on the calling thread before each use).
unsafe impl Send for CudaFunction {}
// SAFETY: as above; launching does not mutate the handle.
unsafe impl Sync for CudaFunction {}

impl CudaBackend {
    pub(crate) fn new(ordinal: usize) -> Result<CudaBackend, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        result::init().map_err(|e| match e.0 {
            sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => {
                CudaError::NoSuchDevice { ordinal, count: 0 }
            }
            _ => drv("cuInit", e),
        })?;
        let count = result::device::get_count().map_err(|e| drv("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoSuchDevice {
                ordinal,
                count: count.max(0) as usize,
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| drv("creating the context", e))?;
        let name = ctx.name().map_err(|e| drv("cuDeviceGetName", e))?;
        let compute_capability = ctx
            .compute_capability()
            .map_err(|e| drv("reading the compute capability", e))?;
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| drv("reading the multiprocessor count", e))?;
        Ok(CudaBackend {
            ctx,
            name,
            compute_capability,
            multiprocessors,
        })
    }

    fn bind(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| drv("cuCtxSetCurrent", e))
    }

    pub(crate) fn alloc(&self, bytes: usize) -> Result<u64, CudaError> {
        self.bind()?;
        // SAFETY: plain allocation in the bound context.
        unsafe { result::malloc_sync(bytes.max(1)) }
            .map_err(|e| drv(&format!("cuMemAlloc({bytes} bytes)"), e))
    }

    pub(crate) fn free(&self, ptr: u64) {
        if self.bind().is_ok() {
            // SAFETY: `ptr` came from `alloc` and is freed once (DeviceBuffer's drop). Errors
            // (e.g. after a sticky kernel fault) cannot be reported from drop.
            let _ = unsafe { result::free_sync(ptr) };
        }
    }

    pub(crate) fn upload(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller checked that `dst` has room for `src.len()` bytes.
        unsafe { result::memcpy_htod_sync(dst, src) }.map_err(|e| drv("cuMemcpyHtoD", e))
    }

    pub(crate) fn download(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller checked that `src` holds `dst.len()` bytes.
        unsafe { result::memcpy_dtoh_sync(dst, src) }
            .map_err(|e| drv("cuMemcpyDtoH (a kernel may have failed)", e))
    }

    pub(crate) fn copy_device(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller checked both ranges.
        unsafe { result::memcpy_dtod_sync(dst, src, bytes) }.map_err(|e| drv("cuMemcpyDtoD", e))
    }

    /// Theoretical memory bandwidth in GB/s from the memory clock and bus width (None when the
    /// driver no longer reports them).
    pub(crate) fn peak_bandwidth_gbs(&self) -> Option<f64> {
        let clock_khz = self
            .ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
            .ok()?;
        let bus_bits = self
            .ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
            .ok()?;
        (clock_khz > 0 && bus_bits > 0)
            .then(|| 2.0 * clock_khz as f64 * 1e3 * bus_bits as f64 / 8.0 / 1e9)
    }

    pub(crate) fn fill_zero(&self, dst: u64, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller checked the range.
        unsafe { result::memset_d8_sync(dst, 0, bytes) }.map_err(|e| drv("cuMemsetD8", e))
    }

    pub(crate) fn load_module(
        &self,
        image: &[u8],
        kernels: &[&'static str],
    ) -> Result<Vec<CudaFunction>, CudaError> {
        self.bind()?;
        // SAFETY: `image` is a CUBIN or a NUL-terminated PTX produced by NVRTC.
        let module = unsafe { result::module::load_data(image.as_ptr().cast()) }
            .map_err(|e| drv("cuModuleLoadData", e))?;
        // The module stays loaded for the life of the process (kernels are looked up once).
        kernels
            .iter()
            .map(|k| {
                let name = std::ffi::CString::new(*k).expect("kernel names have no NUL");
                // SAFETY: a live module.
                unsafe { result::module::get_function(module, name) }
                    .map(CudaFunction)
                    .map_err(|e| drv(&format!("cuModuleGetFunction({k})"), e))
            })
            .collect()
    }

    pub(crate) fn launch(
        &self,
        f: CudaFunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the typed wrappers in ops.rs pass exactly the kernel's parameters, with device
        // pointers whose ranges they checked.
        unsafe { result::launch_kernel(f.0, grid, block, 0, std::ptr::null_mut(), params) }
            .map_err(|e| drv("cuLaunchKernel", e))
    }

    pub(crate) fn synchronize(&self) -> Result<(), CudaError> {
        self.bind()?;
        result::ctx::synchronize().map_err(|e| drv("cuCtxSynchronize (a kernel failed)", e))
    }

    /// Milliseconds the device spends on `f`'s work (CUDA events on the default stream).
    pub(crate) fn time<R>(
        &self,
        f: impl FnOnce() -> Result<R, CudaError>,
    ) -> Result<(R, f32), CudaError> {
        self.bind()?;
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let start = result::event::create(flags).map_err(|e| drv("cuEventCreate", e))?;
        let end = result::event::create(flags).map_err(|e| drv("cuEventCreate", e))?;
        let run = || -> Result<(R, f32), CudaError> {
            // SAFETY: events created above, default stream.
            unsafe { result::event::record(start, std::ptr::null_mut()) }
                .map_err(|e| drv("cuEventRecord", e))?;
            let r = f()?;
            self.bind()?;
            // SAFETY: as above.
            unsafe { result::event::record(end, std::ptr::null_mut()) }
                .map_err(|e| drv("cuEventRecord", e))?;
            // SAFETY: as above.
            unsafe { result::event::synchronize(end) }.map_err(|e| drv("cuEventSynchronize", e))?;
            // SAFETY: both events recorded and complete.
            let ms = unsafe { result::event::elapsed(start, end) }
                .map_err(|e| drv("cuEventElapsedTime", e))?;
            Ok((r, ms))
        };
        let out = run();
        // SAFETY: events created above, destroyed once.
        unsafe {
            let _ = result::event::destroy(start);
            let _ = result::event::destroy(end);
        }
        out
    }

    pub(crate) fn memory_info(&self) -> Result<(usize, usize), CudaError> {
        self.bind()?;
        result::mem_get_info().map_err(|e| drv("cuMemGetInfo", e))
    }
}
