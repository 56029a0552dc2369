//! How many ymm instructions per nanosecond this core issues, alone and interleaved, and how
//! fast the bare inner loops of the AVX2 ×16 int8 GEMMs run (`bench/REPORT.md`, eighteenth
//! and nineteenth sessions: which operations share pipes on a core without VNNI, and what
//! bounds the Q4_0 / Q8_0 prompt passes). x86-64 with AVX2.
//!
//! ```sh
//! cargo run --release -p tinygptv-kernels --example pipe_mix_avx2
//! ```
//!
//! Each instruction line is 48 instructions on 12 destination registers that only read
//! `ymm12`/`ymm13` (1.0 in every f32 lane), so that nothing waits on a result. The block loops are the kernels'
//! instruction sequences on data in L1: Q4_0's `q4_0_pairs_both` (both 8-row halves against 4
//! activation rows) and Q8_0's `dots_both` as LLVM compiles it (per chunk: 4 broadcasts, 2
//! weight vectors, 8 signs, 8 `maddubs`, 8 `madd`, 8 adds).

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::_mm256_set1_ps;
    use std::time::Instant;

    const ITERS: u64 = 2_000_000;

    /// Instructions per ns of `$body` (`$per` instructions per pass; `{p}` a 16 KiB buffer).
    macro_rules! rate {
        ($buf:expr, $per:expr, $($body:literal),+ $(,)?) => {{
            let p = $buf.as_ptr();
            // 1.0 in every f32 lane: no float operand is ever a denormal
            let one = _mm256_set1_ps(1.0);
            let t = Instant::now();
            for _ in 0..ITERS {
                // SAFETY: the bodies read at most 2 KiB from `p` (inside the buffer) and
                // write only the registers named below.
                unsafe {
                    asm!(
                        "/* {p} */",
                        $($body,)+
                        p = in(reg) p,
                        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                        out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                        inout("ymm12") one => _, inout("ymm13") one => _,
                        out("ymm14") _, out("ymm15") _,
                        out("rax") _,
                        options(nostack, readonly),
                    );
                }
            }
            ($per * ITERS) as f64 / t.elapsed().as_nanos() as f64
        }};
    }

    /// 48 independent instructions: `$op` (and `$op2`) into `ymm0..ymm11` from `ymm12`, `ymm13`.
    macro_rules! independent {
        ($buf:expr, $op:literal) => {
            rate!(
                $buf,
                48,
                ".rept 4",
                ".irp d,0,1,2,3,4,5,6,7,8,9,10,11",
                $op,
                ".endr",
                ".endr"
            )
        };
        ($buf:expr, $op:literal, $op2:literal) => {
            rate!(
                $buf,
                48,
                ".rept 2",
                ".irp d,0,1,2,3,4,5,6,7,8,9,10,11",
                $op,
                $op2,
                ".endr",
                ".endr"
            )
        };
    }

    #[target_feature(enable = "avx2")]
    unsafe fn run_all() {
        let buf = vec![1u8; 16 * 1024];
        let ghz = rate!(buf, 64, ".rept 64", "add rax, rax", ".endr");
        println!("dependent add: {ghz:.2} per ns (≈ the clock in GHz)\n");
        println!("| instructions (ymm), interleaved 1:1 | per ns |");
        println!("|---|---:|");
        let rows = [
            ("vpaddd", independent!(buf, "vpaddd ymm\\d, ymm12, ymm13")),
            ("vpxor", independent!(buf, "vpxor ymm\\d, ymm12, ymm13")),
            ("vpsignb", independent!(buf, "vpsignb ymm\\d, ymm12, ymm13")),
            (
                "vpmaddubsw",
                independent!(buf, "vpmaddubsw ymm\\d, ymm12, ymm13"),
            ),
            (
                "vpmaddwd",
                independent!(buf, "vpmaddwd ymm\\d, ymm12, ymm13"),
            ),
            ("vmulps", independent!(buf, "vmulps ymm\\d, ymm12, ymm13")),
            ("vphaddw", independent!(buf, "vphaddw ymm\\d, ymm12, ymm13")),
            (
                "vpunpckldq",
                independent!(buf, "vpunpckldq ymm\\d, ymm12, ymm13"),
            ),
            (
                "vpmaddubsw + vpaddd",
                independent!(
                    buf,
                    "vpmaddubsw ymm\\d, ymm12, ymm13",
                    "vpaddd ymm\\d, ymm12, ymm13"
                ),
            ),
            (
                "vpsignb + vpaddd",
                independent!(
                    buf,
                    "vpsignb ymm\\d, ymm12, ymm13",
                    "vpaddd ymm\\d, ymm12, ymm13"
                ),
            ),
            (
                "vpmaddubsw + vpsignb",
                independent!(
                    buf,
                    "vpmaddubsw ymm\\d, ymm12, ymm13",
                    "vpsignb ymm\\d, ymm12, ymm13"
                ),
            ),
            (
                "vpmaddwd + vpsignb",
                independent!(
                    buf,
                    "vpmaddwd ymm\\d, ymm12, ymm13",
                    "vpsignb ymm\\d, ymm12, ymm13"
                ),
            ),
            (
                "vpmaddubsw + vmulps",
                independent!(
                    buf,
                    "vpmaddubsw ymm\\d, ymm12, ymm13",
                    "vmulps ymm\\d, ymm12, ymm13"
                ),
            ),
            (
                "vpmaddubsw + vpmaddwd",
                independent!(
                    buf,
                    "vpmaddubsw ymm\\d, ymm12, ymm13",
                    "vpmaddwd ymm\\d, ymm12, ymm13"
                ),
            ),
            (
                "vpsignb + vmulps",
                independent!(
                    buf,
                    "vpsignb ymm\\d, ymm12, ymm13",
                    "vmulps ymm\\d, ymm12, ymm13"
                ),
            ),
        ];
        for (name, r) in rows {
            println!("| `{name}` | {r:.2} |");
        }

        // Q4_0: 4 chunks × (2 loads, 2+2 unpacking `and`, 2 shifts, 8 broadcasts, 16 maddubs,
        // 16 adds); activation values at 1024
        let q4_0 = rate!(
            buf,
            64,
            ".irp g,0,1,2,3",
            "vmovdqu ymm14, ymmword ptr [{p} + 64*\\g]",
            "vmovdqu ymm15, ymmword ptr [{p} + 64*\\g + 32]",
            "vpand ymm4, ymm14, ymm8",
            "vpand ymm5, ymm15, ymm8",
            ".irp c,0,1,2,3",
            "vpbroadcastd ymm6, dword ptr [{p} + 1024 + 32*\\c + 4*\\g]",
            "vpmaddubsw ymm7, ymm4, ymm6",
            "vpmaddubsw ymm9, ymm5, ymm6",
            "vpaddw ymm\\c, ymm\\c, ymm7",
            "vpaddw ymm1\\c, ymm1\\c, ymm9",
            ".endr",
            "vpsrlw ymm14, ymm14, 4",
            "vpsrlw ymm15, ymm15, 4",
            "vpand ymm4, ymm14, ymm8",
            "vpand ymm5, ymm15, ymm8",
            ".irp c,0,1,2,3",
            "vpbroadcastd ymm6, dword ptr [{p} + 1024 + 32*\\c + 16 + 4*\\g]",
            "vpmaddubsw ymm7, ymm4, ymm6",
            "vpmaddubsw ymm9, ymm5, ymm6",
            "vpaddw ymm\\c, ymm\\c, ymm7",
            "vpaddw ymm1\\c, ymm1\\c, ymm9",
            ".endr",
            ".endr",
        );
        // Q8_0: 8 chunks; ymm8 = the layout's flip, ymm9 = ones, ymm0..ymm7 the sums (ymm10..12
        // and ymm15 the broadcasts, ymm13 / ymm14 a weight vector and its magnitudes)
        let q8_0 = rate!(
            buf,
            64,
            ".macro q8col src, acc",
            "vpsignb ymm15, \\src, ymm13",
            "vpmaddubsw ymm15, ymm14, ymm15",
            "vpmaddwd ymm15, ymm15, ymm9",
            "vpaddd \\acc, \\acc, ymm15",
            ".endm",
            ".macro q8half at, g4, a0, a1, a2, a3",
            "vpxor ymm13, ymm8, ymmword ptr [{p} + \\at]",
            "vpsignb ymm14, ymm13, ymm13",
            "q8col ymm10, \\a0",
            "q8col ymm11, \\a1",
            "q8col ymm12, \\a2",
            "vpbroadcastd ymm15, dword ptr [{p} + 1120 + \\g4]",
            "q8col ymm15, \\a3",
            ".endm",
            ".irp g,0,1,2,3,4,5,6,7",
            "vpbroadcastd ymm10, dword ptr [{p} + 1024 + 4*\\g]",
            "vpbroadcastd ymm11, dword ptr [{p} + 1056 + 4*\\g]",
            "vpbroadcastd ymm12, dword ptr [{p} + 1088 + 4*\\g]",
            "q8half 64*\\g, 4*\\g, ymm0, ymm1, ymm2, ymm3",
            "q8half 64*\\g+32, 4*\\g, ymm4, ymm5, ymm6, ymm7",
            ".endr",
            ".purgem q8col",
            ".purgem q8half",
        );
        println!("\n| bare block loop | maddubs per ns | GOPS (one core) |");
        println!("|---|---:|---:|");
        // Q4_0: 32 multiply-adds per maddubs; Q8_0: 32 too (each value once)
        println!(
            "| Q4_0 both halves × 4 rows | {q4_0:.2} | {:.0} |",
            q4_0 * 64.0
        );
        println!(
            "| Q8_0 both halves × 4 rows | {q8_0:.2} | {:.0} |",
            q8_0 * 64.0
        );
    }

    pub fn main() {
        if !is_x86_feature_detected!("avx2") {
            eprintln!("pipe_mix_avx2: this CPU has no AVX2");
            std::process::exit(1);
        }
        // SAFETY: AVX2 checked above.
        unsafe { run_all() }
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    x86::main()
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("pipe_mix_avx2: x86-64 only");
    std::process::exit(1);
}
