//! `treaty synth`: synthetic data for N agencies (`treaty_devkit::synth`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use treaty_devkit::outln;
use treaty_devkit::synth::{customs, numeric};

use super::{Outcome, unusable};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The directory to write.
    #[arg(long)]
    out: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value_t = SynthKind::Customs)]
    kind: SynthKind,
    /// How many agencies.
    #[arg(long, default_value_t = 4)]
    agencies: usize,
    /// Declarations per agency (80 % train, 20 % test).
    #[arg(long, default_value_t = 10_000)]
    rows: usize,
    /// The seed: the same seed writes the same files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// What `treaty synth` writes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SynthKind {
    /// Customs declarations with a schema and ground truth (the demo's data).
    Customs,
    /// 64 numeric features and a binary label: workloads W1 and W3.
    Numeric,
}

pub fn run(args: SynthArgs) -> Outcome {
    if args.agencies == 0 || args.rows < 5 {
        return Err(unusable(anyhow::anyhow!(
            "give at least one agency (--agencies) and five rows (--rows)"
        )));
    }
    match args.kind {
        SynthKind::Customs => {
            let written = customs::generate(
                &args.out,
                &customs::agencies(args.agencies),
                args.rows,
                args.seed,
            )?;
            outln!("{}", args.out.join("schema.toml").display());
            outln!(
                "the ground truth's AUC on the test splits: {:.4}",
                written.truth_test_auc
            );
            for a in &written.agencies {
                outln!(
                    "{} ({}): {} and {}, {:.1} % seized",
                    a.agency,
                    a.country,
                    a.train.display(),
                    a.test.display(),
                    100.0 * a.prevalence
                );
            }
        }
        SynthKind::Numeric => {
            let written = numeric::generate(&args.out, args.agencies, args.rows, args.seed)?;
            for (k, w) in written.iter().enumerate() {
                tracing::info!(agency = k, train = %w.train.display(), test = %w.test.display(), positive_rate = w.positive_rate, "written");
            }
        }
    }
    Ok(())
}
