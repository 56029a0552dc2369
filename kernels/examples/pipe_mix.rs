//! How many `vpdpbusd zmm` per nanosecond this core runs alone and beside the other
//! instructions of the int8 GEMMs' inner loops: which instructions compete with the dot
//! products for the same pipes (`bench/REPORT.md`, sixth and eleventh sessions). x86-64 with
//! AVX-512 VNNI.
//!
//! ```sh
//! cargo run --release -p tinygptv-kernels --example pipe_mix
//! ```
//!
//! Each mix is 64 `vpdpbusd` (8 weight vectors × 8 accumulators, the activation broadcast
//! from memory, as in `simd/x86/packed.rs`) plus 8 of the other instruction(s) on their own
//! registers, so that nothing waits on a result; the loop runs 10 million times. The dot
//! products go group by group (each weight vector against the 8 accumulators), the order of
//! the packed kernels' assembly. The last line issues them accumulator by accumulator (one
//! accumulator's 8 dependent `vpdpbusd` back to back), the order LLVM gave the intrinsic loops
//! before the eleventh session: on a core with two 512-bit pipes and a latency of 5 (Cascade
//! Lake) that order keeps too few chains in flight, and this example's rates until then were
//! that order's, not the pipes' limit.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// One pass: the 64 dot products, then `$extra` (assembler text using `\r` for the 8
    /// spare registers zmm8..zmm15, which hold 1.0 so the float instructions never meet a
    /// denormal; zmm28 holds 1.0, zmm29 holds 0).
    macro_rules! mix {
        ($buf:expr, $extra:literal) => {
            mix!(@order $buf, ".irp g,0,1,2,3,4,5,6,7", ".irp c,0,1,2,3,4,5,6,7", $extra)
        };
        (@order $buf:expr, $outer:literal, $inner:literal, $extra:literal) => {{
            let p = $buf.as_ptr();
            let iters = 10_000_000u64;
            let one = _mm512_set1_ps(1.0);
            let zero = _mm512_setzero_ps();
            let w = _mm512_set1_epi8(1);
            let (mut s0, mut s1, mut s2, mut s3) = (one, one, one, one);
            let (mut s4, mut s5, mut s6, mut s7) = (one, one, one, one);
            let t = Instant::now();
            for i in 0..iters {
                let q = p.wrapping_add((i as usize & 63) * 16);
                // SAFETY: reads at most 36·7 + 4·7 + 4 bytes from `q`, inside the buffer;
                // writes only the registers named below.
                unsafe {
                    asm!(
                        $outer,
                        $inner,
                        "vpdpbusd zmm\\c, zmm2\\g, dword ptr [{q} + 4*\\g + 36*\\c]{{1to16}}",
                        ".endr",
                        ".endr",
                        ".irp r,8,9,10,11,12,13,14,15",
                        $extra,
                        ".endr",
                        q = in(reg) q,
                        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                        out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                        inout("zmm8") s0, inout("zmm9") s1, inout("zmm10") s2,
                        inout("zmm11") s3, inout("zmm12") s4, inout("zmm13") s5,
                        inout("zmm14") s6, inout("zmm15") s7,
                        in("zmm20") w, in("zmm21") w, in("zmm22") w, in("zmm23") w,
                        in("zmm24") w, in("zmm25") w, in("zmm26") w, in("zmm27") w,
                        in("zmm28") one, in("zmm29") zero,
                        options(nostack, readonly),
                    );
                }
            }
            let rate = (iters * 64) as f64 / t.elapsed().as_nanos() as f64;
            std::hint::black_box([s0, s1, s2, s3, s4, s5, s6, s7]);
            rate
        }};
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run_all() {
        let buf = vec![1u8; 64 * 16 + 512];
        let base = mix!(buf, "");
        let row_by_row = mix!(
            @order buf,
            ".irp c,0,1,2,3,4,5,6,7",
            ".irp g,0,1,2,3,4,5,6,7",
            ""
        );
        let rows: [(&str, f64); 9] = [
            ("64 vpdpbusd alone", base),
            ("+ 8 vmulps", mix!(buf, "vmulps zmm\\r, zmm\\r, zmm28")),
            ("+ 8 vaddps", mix!(buf, "vaddps zmm\\r, zmm\\r, zmm29")),
            ("+ 8 vcvtdq2ps", mix!(buf, "vcvtdq2ps zmm\\r, zmm\\r")),
            ("+ 8 vpdpwssd", mix!(buf, "vpdpwssd zmm\\r, zmm28, zmm29")),
            ("+ 8 vprold 16", mix!(buf, "vprold zmm\\r, zmm\\r, 16")),
            (
                "+ 8 (vpslld 16, vpaddd)",
                mix!(
                    buf,
                    "vpslld zmm\\r, zmm\\r, 16\nvpaddd zmm\\r, zmm\\r, zmm29"
                ),
            ),
            (
                "+ 8 vpbroadcastd from memory",
                mix!(buf, "vpbroadcastd zmm\\r, dword ptr [{q} + 4*\\r]"),
            ),
            ("64 vpdpbusd alone, accumulator by accumulator", row_by_row),
        ];
        println!("| mix | vpdpbusd per ns | slots of the dot-product pipes per 64 |");
        println!("|---|---:|---:|");
        for (name, rate) in rows {
            println!("| {name} | {rate:.3} | {:.1} |", 64.0 * base / rate);
        }
    }

    pub fn main() {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni"))
        {
            eprintln!("pipe_mix: this CPU has no AVX-512 VNNI");
            std::process::exit(1);
        }
        // SAFETY: the features are present
        unsafe { run_all() };
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    x86::main();
    #[cfg(not(target_arch = "x86_64"))]
    eprintln!("pipe_mix: x86-64 only");
}
