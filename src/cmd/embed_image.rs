//! `tinygptv embed-image --mmproj VISION.gguf --image IMG --out TOKENS.npy [--dump-pixels PIXELS.npy] [-t N]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use runtime::backend::{Compute, DeviceChoice};

use super::common::init_threads;

#[derive(clap::Args)]
pub struct EmbedImageArgs {
    /// Vision (mmproj) GGUF.
    #[arg(long)]
    pub mmproj: PathBuf,
    /// Image file (PNG, JPEG, WebP, BMP, GIF).
    #[arg(long)]
    pub image: PathBuf,
    /// Output `.npy`: float32 [n_queries, n_embd_llm].
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the normalized pixels, float32 [3, S, S].
    #[arg(long)]
    pub dump_pixels: Option<PathBuf>,
    /// Threads (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Refuse images with more decoded pixels than this.
    #[arg(long, default_value_t = runtime::image::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Where the tower runs: cpu, cuda (GPU 0) or cuda:N (builds with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

pub fn run(args: EmbedImageArgs) -> Result<ExitCode> {
    init_threads(args.threads);
    let compute = Compute::open(args.device)?;
    let t0 = Instant::now();
    let tower = runtime::vision::load_vision_tower(&args.mmproj)?;
    let mut encoder = compute.image_encoder(&tower)?;
    let t1 = Instant::now();
    let (_, pixels, tokens) = encoder.embed_image_file(&args.image, args.max_pixels)?;
    let c = &tower.cfg;
    if let Some(p) = &args.dump_pixels {
        runtime::npy::write_f32(p, &pixels, &[3, c.image_size, c.image_size])?;
    }
    runtime::npy::write_f32(&args.out, &tokens, &[c.q_count, c.n_embd_llm])?;
    let device = if compute.is_cpu() {
        String::new()
    } else {
        format!(" on {}", compute.describe())
    };
    eprintln!(
        "load {:.0} ms | image encode {:.0} ms{device} | wrote [{}, {}] to {}",
        (t1 - t0).as_secs_f64() * 1e3,
        t1.elapsed().as_secs_f64() * 1e3,
        c.q_count,
        c.n_embd_llm,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
